//! `kmirror backfill`: mirrors a time window of a flow's topics once into
//! the target and exits with a report. For a window the target lacks: a
//! flow started with `start_from = "latest"` or a timestamp, records lost
//! on the target, a topic excluded for a while.
//!
//! Per partition of the flow's topics (found as `kmirror run` finds them):
//! from the first record whose timestamp is at or after `--from` to the
//! last one before `--until` (default: the end of the partition when the
//! command starts), read with a group-less consumer and written to the
//! same target partition with the same key, value, headers and timestamp
//! (plus the provenance header when the flow adds it), idempotently,
//! under the flow's `max_bytes_per_second`. The running flow is not
//! touched: no group, no commit, no offset-sync point. A record the target
//! refuses stops its partition and the command exits 1 naming it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;

use crate::config::{format_rfc3339_ms, Config};
use crate::discovery::{decide, list_topics, FlowRules};
use crate::flow::throttle::TokenBucket;
use crate::flow::PROVENANCE_HEADER;
use crate::kafka::{self, KContext, Role};

/// Exit code: every partition of the window copied.
pub const EXIT_DONE: u8 = 0;
/// Exit code: refused before copying, or a record was refused (named).
pub const EXIT_FAILED: u8 = 1;

/// What `kmirror backfill` was asked.
#[derive(Debug, Clone)]
pub struct Request {
    /// The flow whose topics and settings are used.
    pub flow: String,
    /// Window start (Unix ms, inclusive).
    pub from_ms: i64,
    /// Window end (Unix ms, exclusive); `None`: the end of each partition
    /// when the command starts.
    pub until_ms: Option<i64>,
    /// Print the window per partition, copy nothing.
    pub dry_run: bool,
}

/// One partition's window and progress.
#[derive(Debug, Default, Clone)]
struct Window {
    topic: String,
    target: String,
    partition: i32,
    /// First source offset of the window.
    start: i64,
    /// Source offset after the window.
    end: i64,
    acked: u64,
    first_target: Option<i64>,
    last_target: Option<i64>,
    /// (source offset, error) of the first record not written.
    failed: Option<(i64, String)>,
}

#[derive(Default)]
struct Ctx {
    windows: Mutex<Vec<Window>>,
}

impl ClientContext for Ctx {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
        kafka::log_librdkafka(level, fac, msg)
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = Box<(usize, i64)>;

    fn delivery(&self, r: &DeliveryResult<'_>, opaque: Box<(usize, i64)>) {
        let (idx, src) = *opaque;
        let Ok(mut ws) = self.windows.lock() else {
            return;
        };
        let Some(w) = ws.get_mut(idx) else { return };
        match r {
            Ok(m) => {
                w.acked += 1;
                w.first_target.get_or_insert(m.offset());
                w.last_target = Some(m.offset());
            }
            Err((e, _)) => {
                if w.failed.as_ref().is_none_or(|(o, _)| src < *o) {
                    w.failed = Some((src, e.to_string()));
                }
            }
        }
    }
}

/// Runs the backfill; prints the plan, progress and the report on stdout,
/// failures on stderr; returns the exit code.
pub fn run(config: &Config, req: &Request) -> u8 {
    match copy(config, req) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kmirror backfill: {e}");
            EXIT_FAILED
        }
    }
}

fn copy(config: &Config, req: &Request) -> Result<u8, String> {
    let timeout = Duration::from_secs(10);
    let Some(flow) = config.flows.iter().find(|f| f.name == req.flow) else {
        let names: Vec<&str> = config.flows.iter().map(|f| f.name.as_str()).collect();
        return Err(format!(
            "no flow named {:?} in the configuration (flows: {})",
            req.flow,
            names.join(", ")
        ));
    };
    if let Some(u) = req.until_ms {
        if u <= req.from_ms {
            return Err("--until must be after --from".into());
        }
    }
    let mut ccfg = kafka::client_config(&config.source, Role::Consumer, "kmirror-backfill");
    ccfg.set("group.id", "kmirror-backfill-unused");
    ccfg.set("enable.auto.commit", "false");
    ccfg.set("enable.partition.eof", "false");
    let consumer: BaseConsumer<KContext> =
        kafka::create(&ccfg, KContext::default()).map_err(|e| e.to_string())?;
    let tcheck: BaseConsumer<KContext> = kafka::create(
        &kafka::client_config(&config.target, Role::Admin, "kmirror-backfill"),
        KContext::default(),
    )
    .map_err(|e| e.to_string())?;
    let source_topics = list_topics(&consumer, timeout)
        .map_err(|e| format!("source {}: {e}", config.source.alias))?;
    let target_topics = list_topics(&tcheck, timeout)
        .map_err(|e| format!("target {}: {e}", config.target.alias))?;
    // The flows before this one claim topics first, as in `kmirror run`.
    let mut claimed = std::collections::HashMap::new();
    let mut taken = Vec::new();
    for f in &config.flows {
        let rules = FlowRules::new(f).map_err(|e| format!("flow {}: {e}", f.name))?;
        let (take, _) = decide(
            &rules,
            &config.source.alias,
            &config.target.alias,
            &source_topics,
            &mut claimed,
        );
        if f.name == flow.name {
            taken = take;
            break;
        }
    }
    if taken.is_empty() {
        return Err(format!("flow {} mirrors no source topic now", flow.name));
    }
    // The window of every partition.
    let mut q_from = TopicPartitionList::new();
    let mut q_until = TopicPartitionList::new();
    for (topic, target, n) in &taken {
        let have = target_topics.get(target).copied().unwrap_or(0);
        if have < *n {
            return Err(format!(
                "target topic {target} has {have} of the {n} partitions of {topic}: let `kmirror run` create it (config sync) first"
            ));
        }
        for p in 0..*n {
            q_from
                .add_partition_offset(topic, p, Offset::Offset(req.from_ms))
                .map_err(|e| e.to_string())?;
            if let Some(u) = req.until_ms {
                q_until
                    .add_partition_offset(topic, p, Offset::Offset(u))
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    let by_time = |q| kafka::offsets_by_time(&consumer, q, timeout);
    let starts = by_time(q_from)?;
    let untils = if req.until_ms.is_some() {
        by_time(q_until)?
    } else {
        BTreeMap::new()
    };
    let mut windows = Vec::new();
    for (topic, target, n) in &taken {
        for p in 0..*n {
            let (_, hw) = consumer
                .fetch_watermarks(topic, p, timeout)
                .map_err(|e| format!("{topic}[{p}]: {e}"))?;
            let end = untils
                .get(&(topic.clone(), p))
                .copied()
                .flatten()
                .unwrap_or(hw);
            let start = starts
                .get(&(topic.clone(), p))
                .copied()
                .flatten()
                .unwrap_or(hw);
            windows.push(Window {
                topic: topic.clone(),
                target: target.clone(),
                partition: p,
                start,
                end: end.max(start),
                ..Default::default()
            });
        }
    }
    let total: i64 = windows.iter().map(|w| w.end - w.start).sum();
    println!(
        "backfill of flow {}: {} -> {}, records with timestamps from {} until {}: {total} record(s) in {} partition(s){}",
        flow.name,
        config.source.alias,
        config.target.alias,
        format_rfc3339_ms(req.from_ms),
        req.until_ms
            .map(format_rfc3339_ms)
            .unwrap_or_else(|| "now (each partition's end)".into()),
        windows.iter().filter(|w| w.end > w.start).count(),
        if req.dry_run { " (dry run: nothing is written)" } else { "" }
    );
    for w in windows.iter().filter(|w| w.end > w.start) {
        println!(
            "  {}[{}] offsets {}..{} ({} records) -> {}",
            w.topic,
            w.partition,
            w.start,
            w.end,
            w.end - w.start,
            w.target
        );
    }
    if req.dry_run || total == 0 {
        return Ok(EXIT_DONE);
    }

    // Copy.
    let mut pcfg = kafka::client_config(&config.target, Role::Producer, "kmirror-backfill");
    kafka::apply_producer_owned(&mut pcfg, flow.compression.as_librdkafka(), &config.runtime);
    let ctx = Ctx {
        windows: Mutex::new(windows.clone()),
    };
    let producer = kafka::Polled::create(&pcfg, ctx).map_err(|e| e.to_string())?;
    let mut assign = TopicPartitionList::new();
    let mut index = BTreeMap::new();
    for (i, w) in windows.iter().enumerate() {
        if w.end > w.start {
            assign
                .add_partition_offset(&w.topic, w.partition, Offset::Offset(w.start))
                .map_err(|e| e.to_string())?;
            index.insert((w.topic.clone(), w.partition), i);
        }
    }
    consumer.assign(&assign).map_err(|e| e.to_string())?;
    let skip = flow.provenance_header.then(|| config.target.alias.clone());
    let add = flow.provenance_header.then(|| config.source.alias.clone());
    let mut bucket =
        (flow.max_bytes_per_second > 0).then(|| TokenBucket::new(flow.max_bytes_per_second));
    let close = |index: &mut BTreeMap<(String, i32), usize>, key: &(String, i32)| {
        let mut done = TopicPartitionList::new();
        done.add_partition(&key.0, key.1);
        let _ = consumer.pause(&done);
        index.remove(key);
    };
    let mut last_report = Instant::now();
    let mut copied = 0u64;
    while !index.is_empty() {
        if let Some(b) = bucket.as_mut() {
            if let Some(w) = b.wait(Instant::now()) {
                std::thread::sleep(w.min(Duration::from_millis(50)));
                continue;
            }
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            println!("  ... {copied} of {total} record(s) handed to the target producer");
        }
        let msg = match consumer.poll(Duration::from_millis(200)) {
            None => {
                // Offsets without a record (compaction, transaction
                // markers) at a window's end: done when the position is.
                if let Ok(pos) = consumer.position() {
                    for e in pos.elements() {
                        let key = (e.topic().to_string(), e.partition());
                        let past = match (index.get(&key), e.offset()) {
                            (Some(&i), Offset::Offset(o)) => o >= windows[i].end,
                            _ => false,
                        };
                        if past {
                            close(&mut index, &key);
                        }
                    }
                }
                continue;
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "backfill: consume error");
                continue;
            }
            Some(Ok(m)) => m,
        };
        let key = (msg.topic().to_string(), msg.partition());
        let Some(&i) = index.get(&key) else { continue };
        let w = &mut windows[i];
        let failed = producer
            .context()
            .windows
            .lock()
            .map(|ws| ws[i].failed.is_some())
            .unwrap_or(false);
        if msg.offset() >= w.end || failed {
            close(&mut index, &key);
            continue;
        }
        let last = msg.offset() + 1 >= w.end;
        if let Some(s) = &skip {
            let from_target = msg.headers().is_some_and(|hs| {
                hs.iter()
                    .any(|h| h.key == PROVENANCE_HEADER && h.value == Some(s.as_bytes()))
            });
            if from_target {
                if last {
                    close(&mut index, &key);
                }
                continue;
            }
        }
        let mut headers: Option<OwnedHeaders> = msg.headers().map(|h| h.detach());
        if let Some(a) = &add {
            headers = Some(headers.unwrap_or_default().insert(Header {
                key: PROVENANCE_HEADER,
                value: Some(a.as_bytes()),
            }));
        }
        let size = msg.key().map_or(0, <[u8]>::len) + msg.payload().map_or(0, <[u8]>::len);
        let mut rec: BaseRecord<'_, [u8], [u8], Box<(usize, i64)>> =
            BaseRecord::with_opaque_to(&w.target, Box::new((i, msg.offset())))
                .partition(msg.partition());
        if let Some(k) = msg.key() {
            rec = rec.key(k);
        }
        if let Some(v) = msg.payload() {
            rec = rec.payload(v);
        }
        if let Some(ts) = msg.timestamp().to_millis() {
            rec = rec.timestamp(ts);
        }
        if let Some(h) = headers {
            rec = rec.headers(h);
        }
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => {
                    return Err(format!(
                        "{}[{}] offset {}: cannot queue the record: {e}",
                        key.0,
                        key.1,
                        msg.offset()
                    ))
                }
            }
        }
        copied += 1;
        if let Some(b) = bucket.as_mut() {
            b.debit(size, Instant::now());
        }
        if last {
            close(&mut index, &key);
        }
    }
    producer
        .flush(Duration::from_secs(300))
        .map_err(|e| format!("the target did not acknowledge every record: {e}"))?;
    let done = producer
        .context()
        .windows
        .lock()
        .map(|ws| ws.clone())
        .map_err(|_| "poisoned".to_string())?;
    println!(
        "\n  {:<30} {:>9} {:>21} {:>9}  {:<30} {:>21}",
        "source topic", "partition", "source offsets", "copied", "target topic", "target offsets"
    );
    let mut code = EXIT_DONE;
    let mut written = 0u64;
    for w in done.iter().filter(|w| w.end > w.start) {
        written += w.acked;
        let t = match (w.first_target, w.last_target) {
            (Some(a), Some(b)) => format!("{a}..{}", b + 1),
            _ => "-".into(),
        };
        println!(
            "  {:<30} {:>9} {:>21} {:>9}  {:<30} {:>21}",
            w.topic,
            w.partition,
            format!("{}..{}", w.start, w.end),
            w.acked,
            w.target,
            t
        );
        if let Some((o, e)) = &w.failed {
            eprintln!(
                "kmirror backfill: {}[{}] stopped: the target refused the record at source offset {o}: {e}; the records before it were written (records after it may have been too, in later batches); fix the cause and run the backfill again from that record's timestamp",
                w.topic, w.partition
            );
            code = EXIT_FAILED;
        }
    }
    println!(
        "\n{written} record(s) written to target {}",
        config.target.alias
    );
    Ok(code)
}
