//! The replication flow: one source consumer (the flow's consumer group)
//! and one idempotent target producer per flow, driven from one thread.
//!
//! - **Order and fidelity**: each record goes to the same partition number
//!   of the target topic with its key, value (null stays null), headers in
//!   order and timestamp.
//! - **At-least-once**: a source offset is stored for commit only after the
//!   target acknowledged that record and every record before it in the
//!   partition (delivery reports arrive in order per partition).
//! - **Refusals**: a record the target refuses permanently stops its
//!   partition (paused, nothing after it committed), with an ERROR and
//!   `kmirror_partitions_paused{reason="stopped"}`; the others go on.
//! - **Backpressure**: the producer queue is bounded
//!   (`producer_queue_kbytes`); when it is full, consumption waits.
//! - **Offset syncs**: acknowledged (source, target) offset pairs where the
//!   delta changes (and every [`SYNC_EVERY`] records) are written to
//!   `kmirror-offset-syncs.<source>.internal`.
//! - **Exactly-once**: see [`eos`].

pub mod eos;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::local::{LocalHistogram, LocalIntCounter};
use prometheus::{Histogram, IntCounter, IntGauge};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{ClusterConfig, Delivery, FlowConfig, RuntimeConfig};
use crate::discovery::MirrorSet;
use crate::kafka::{self, log_librdkafka, Role};
use crate::metrics::{Health, Metrics};
use crate::offsets::codec::OffsetSync;

/// The header that names the cluster a record was mirrored from.
pub const PROVENANCE_HEADER: &str = "kmirror-source";

/// An offset-sync point is written at least every this many records per
/// partition, so that an exactly-once resume reads a short tail.
pub const SYNC_EVERY: u64 = 1000;

/// Opaque of internal records (offset syncs).
/// Opaque flag of offset-sync records; the rest holds slot and offset.
const SYNC_FLAG: usize = 1 << 63;
/// Slot index of a point that no slot waits for.
const NO_SLOT: usize = (1 << 15) - 1;
const OFFSET_BITS: u32 = 48;
const OFFSET_MASK: usize = (1 << OFFSET_BITS) - 1;

/// Name of the offset-sync topic on the target.
pub fn offset_syncs_topic(source_alias: &str) -> String {
    format!("kmirror-offset-syncs.{source_alias}.internal")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Why a partition stopped.
#[derive(Debug, Clone)]
struct Failure {
    /// First source offset not acknowledged.
    first: i64,
    /// Error of the first refusal.
    error: String,
    /// Every refused (source offset, record bytes, error code).
    refused: Vec<(i64, usize, Option<RDKafkaErrorCode>)>,
    reported: bool,
}

/// State of one assigned source partition, shared by the consume loop and
/// the producer's delivery callback.
///
/// The fields each thread writes for every record live on cache lines of
/// their own ([`Padded`]): `sent` (consume loop) and `ack` (delivery
/// callback), so that the two threads do not bounce one line per record.
struct Slot {
    topic: String,
    partition: i32,
    target: String,
    /// Records handed to the producer (consume loop).
    sent: Padded<AtomicI64>,
    /// What the delivery callback updates for every record.
    ack: Padded<Progress>,
    /// Offset after the last record skipped without producing (provenance).
    skip_to: AtomicI64,
    foreign_warned: AtomicBool,
    failure: Mutex<Option<Failure>>,
    /// True once a record was refused (mirrors `failure.is_some()`).
    stopped: AtomicBool,
    /// Last offset stored for commit (consume loop only).
    stored: AtomicI64,
    records: IntCounter,
    bytes: IntCounter,
    latency: Histogram,
    age: Histogram,
}

/// Aligned to (and padded to) 128 bytes: two cache lines, as adjacent-line
/// prefetch pairs them.
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Per-partition progress written by the delivery callback.
struct Progress {
    /// Records reported (acknowledged or refused); in flight = sent − done.
    done: AtomicI64,
    /// Next source offset that is safe to commit (-1: none yet).
    acked: AtomicI64,
    /// Target offset − source offset of the last acknowledged record.
    last_delta: AtomicI64,
    /// Source and target offsets of the last acknowledged record.
    last_src: AtomicI64,
    last_tgt: AtomicI64,
    since_sync: AtomicU64,
    /// Source offset of the last offset-sync point queued.
    emitted_src: AtomicI64,
    /// Next source offset whose preceding record has a persisted point:
    /// commits never pass it, so a restart never starts after a stretch of
    /// records that no point describes (translation stays exact).
    sync_acked: AtomicI64,
    /// When the last point was queued (ms since the epoch).
    point_ms: AtomicI64,
}

impl Slot {
    /// Records handed to the producer and not yet reported.
    fn inflight(&self) -> i64 {
        self.sent.load(Ordering::Acquire) - self.ack.done.load(Ordering::Acquire)
    }

    /// After the last report of a partition: records skipped since
    /// (provenance) are done too. Called after each report, after each
    /// skip and on every housekeeping pass (which catches the case where
    /// the first two raced and neither saw the partition idle).
    fn ack_skipped(&self) {
        let skip = self.skip_to.load(Ordering::Acquire);
        if skip >= 0 && !self.failed() && self.inflight() == 0 {
            self.ack.acked.fetch_max(skip, Ordering::AcqRel);
        }
    }

    fn sync_point(&self, upstream: i64, downstream: i64) -> OffsetSync {
        OffsetSync {
            topic: self.topic.clone(),
            partition: self.partition,
            upstream_offset: upstream,
            downstream_offset: downstream,
        }
    }

    fn failed(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// The offset that may be committed: every record before it is
    /// acknowledged and the record just before it has a persisted point.
    fn commit_position(&self) -> i64 {
        self.ack
            .acked
            .load(Ordering::Acquire)
            .min(self.ack.sync_acked.load(Ordering::Acquire))
    }

    /// Records a refusal of the record at `offset`; the partition stops.
    fn refuse(&self, offset: i64, error: &KafkaError, size: usize) {
        if let Ok(mut f) = self.failure.lock() {
            let f = f.get_or_insert_with(|| Failure {
                first: offset,
                error: error.to_string(),
                refused: Vec::new(),
                reported: false,
            });
            f.first = f.first.min(offset);
            f.refused.push((offset, size, error.rdkafka_error_code()));
        }
        self.stopped.store(true, Ordering::Release);
    }
}

/// The consume loop's memo of the last slot looked up.
type SlotCache = Option<CachedSlot>;

/// A thread's memo of the slot it used last (records and reports come in
/// runs of one partition), with the metric updates for it that the thread
/// has not published yet: they are published when the slot changes and on
/// every housekeeping pass (at least every 100 ms), instead of touching
/// the shared metrics for every record.
struct CachedSlot {
    generation: u64,
    idx: usize,
    slot: Arc<Slot>,
    /// `slot.age` (consume loop) or `slot.latency` (delivery callback).
    hist: LocalHistogram,
    records: LocalIntCounter,
    bytes: LocalIntCounter,
}

impl CachedSlot {
    fn new(generation: u64, idx: usize, slot: Arc<Slot>, pick: fn(&Slot) -> &Histogram) -> Self {
        Self {
            generation,
            idx,
            hist: pick(&slot).local(),
            records: slot.records.local(),
            bytes: slot.bytes.local(),
            slot,
        }
    }

    fn flush(&self) {
        self.hist.flush();
        self.records.flush();
        self.bytes.flush();
    }
}

impl Drop for CachedSlot {
    fn drop(&mut self) {
        self.flush();
    }
}

/// State shared between the consume loop, the rebalance callback and the
/// delivery callback.
struct Shared {
    flow: String,
    source_alias: String,
    delivery: Delivery,
    metrics: Arc<Metrics>,
    slots: RwLock<Vec<Arc<Slot>>>,
    /// topic -> partition -> slot index.
    index: Mutex<HashMap<String, HashMap<i32, usize>>>,
    /// Points to write, with the slot waiting for each (or [`NO_SLOT`]).
    pending_syncs: Mutex<Vec<(usize, OffsetSync)>>,
    /// Latest known sync point per (source topic, partition).
    last_syncs: Mutex<HashMap<(String, i32), (i64, i64)>>,
    mirror: Mutex<Arc<MirrorSet>>,
    queue: IntGauge,
    /// Bumped on every assignment change (invalidates [`SlotCache`]s).
    generation: AtomicU64,
    throttle: LogThrottle,
}

/// Repeated warnings (a cluster down for minutes) are logged at most once
/// per [`LogThrottle::EVERY`] per kind, with the number suppressed meanwhile;
/// the error metrics still count every one.
#[derive(Default)]
struct LogThrottle {
    last: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl LogThrottle {
    const EVERY: Duration = Duration::from_secs(30);

    /// `Some(suppressed since the last log)` when this one may be logged.
    fn allow(&self, kind: &'static str) -> Option<u64> {
        let mut m = self.last.lock().ok()?;
        let now = Instant::now();
        match m.get_mut(kind) {
            Some((at, n)) if now.duration_since(*at) < Self::EVERY => {
                *n += 1;
                None
            }
            Some((at, n)) => {
                let s = *n;
                *at = now;
                *n = 0;
                Some(s)
            }
            None => {
                m.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

impl Shared {
    fn slot(&self, idx: usize) -> Option<Arc<Slot>> {
        self.slots.read().ok().and_then(|s| s.get(idx).cloned())
    }

    /// Like [`Shared::slot_for`], remembering the last answer: records
    /// arrive in runs of one partition.
    fn slot_cached<'c>(
        &self,
        cache: &'c mut SlotCache,
        topic: &str,
        partition: i32,
    ) -> Option<&'c CachedSlot> {
        let generation = self.generation.load(Ordering::Acquire);
        let hit = matches!(cache, Some(c)
            if c.generation == generation && c.slot.partition == partition && c.slot.topic == topic);
        if !hit {
            *cache = self
                .slot_for(topic, partition)
                .map(|(i, s)| CachedSlot::new(generation, i, s, |s| &s.age));
        }
        cache.as_ref()
    }

    /// Like [`Shared::slot`], remembering the last answer (the delivery
    /// callback's reports come in runs of one partition).
    fn slot_at_cached<'c>(&self, cache: &'c mut SlotCache, idx: usize) -> Option<&'c CachedSlot> {
        let generation = self.generation.load(Ordering::Acquire);
        let hit = matches!(cache, Some(c) if c.generation == generation && c.idx == idx);
        if !hit {
            *cache = self
                .slot(idx)
                .map(|s| CachedSlot::new(generation, idx, s, |s| &s.latency));
        }
        cache.as_ref()
    }

    fn slot_for(&self, topic: &str, partition: i32) -> Option<(usize, Arc<Slot>)> {
        let idx = *self.index.lock().ok()?.get(topic)?.get(&partition)?;
        self.slot(idx).map(|s| (idx, s))
    }

    /// Creates (or resets) the slot of a newly assigned partition.
    fn assign(&self, topic: &str, partition: i32, target: &str) -> usize {
        let m = &self.metrics;
        let p = partition.to_string();
        let labels = [self.flow.as_str(), topic, p.as_str()];
        let slot = Arc::new(Slot {
            topic: topic.to_string(),
            partition,
            target: target.to_string(),
            sent: Padded(AtomicI64::new(0)),
            ack: Padded(Progress {
                done: AtomicI64::new(0),
                acked: AtomicI64::new(-1),
                last_delta: AtomicI64::new(i64::MIN),
                last_src: AtomicI64::new(-1),
                last_tgt: AtomicI64::new(-1),
                since_sync: AtomicU64::new(0),
                emitted_src: AtomicI64::new(-1),
                sync_acked: AtomicI64::new(-1),
                point_ms: AtomicI64::new(0),
            }),
            skip_to: AtomicI64::new(-1),
            foreign_warned: AtomicBool::new(false),
            failure: Mutex::new(None),
            stopped: AtomicBool::new(false),
            stored: AtomicI64::new(-1),
            records: m.records.with_label_values(&labels),
            bytes: m.bytes.with_label_values(&labels),
            latency: m
                .replication_latency
                .with_label_values(&[&self.flow, topic]),
            age: m.record_age.with_label_values(&[&self.flow, topic]),
        });
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut index = self.index.lock().expect("index lock");
        let parts = index.entry(topic.to_string()).or_default();
        let mut slots = self.slots.write().expect("slots lock");
        match parts.get(&partition) {
            Some(&i) => {
                slots[i] = slot;
                i
            }
            None => {
                slots.push(slot);
                let i = slots.len() - 1;
                parts.insert(partition, i);
                i
            }
        }
    }

    fn unassign(&self, topic: &str, partition: i32) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut index) = self.index.lock() {
            if let Some(parts) = index.get_mut(topic) {
                parts.remove(&partition);
            }
        }
        let p = partition.to_string();
        let _ = self
            .metrics
            .lag
            .remove_label_values(&[&self.flow, topic, &p]);
    }

    /// The assigned partitions' slots, with their indexes.
    fn assigned(&self) -> Vec<(usize, Arc<Slot>)> {
        let index = match self.index.lock() {
            Ok(i) => i,
            Err(_) => return Vec::new(),
        };
        let slots = match self.slots.read() {
            Ok(s) => s,
            Err(_) => return Vec::new(),
        };
        index
            .values()
            .flat_map(|ps| ps.values())
            .filter_map(|&i| slots.get(i).map(|s| (i, s.clone())))
            .collect()
    }
}

/// Producer context: turns delivery reports into committed positions,
/// metrics and offset-sync points.
struct DeliveryCtx {
    shared: Arc<Shared>,
    /// The delivery callback's memo of the last slot (only that thread
    /// locks it).
    cache: Mutex<SlotCache>,
}

impl ClientContext for DeliveryCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        log_librdkafka(level, fac, msg)
    }
    fn stats_raw(&self, json: &[u8]) {
        crate::metrics::record_client_stats(
            &self.shared.metrics,
            &self.shared.flow,
            "target_producer",
            json,
        );
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.shared
            .metrics
            .errors
            .with_label_values(&[&self.shared.flow, "target_client"])
            .inc();
        if let Some(suppressed) = self.shared.throttle.allow("target_client") {
            warn!(flow = %self.shared.flow, %error, suppressed, "target producer: {reason}");
        }
    }
}

fn record_size<M: Message>(m: &M) -> usize {
    let h = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| h.key.len() + h.value.map_or(0, |v| v.len()))
                .sum()
        })
        .unwrap_or(0);
    m.key().map_or(0, |k| k.len()) + m.payload().map_or(0, |p| p.len()) + h
}

impl ProducerContext for DeliveryCtx {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let sh = &self.shared;
        if opaque & SYNC_FLAG != 0 {
            match result {
                Ok(_) => {
                    sh.metrics.offset_syncs.with_label_values(&[&sh.flow]).inc();
                    let idx = (opaque & !SYNC_FLAG) >> OFFSET_BITS;
                    let src = (opaque & OFFSET_MASK) as i64;
                    if let Some(slot) = (idx != NO_SLOT).then(|| sh.slot(idx)).flatten() {
                        slot.ack.sync_acked.fetch_max(src + 1, Ordering::AcqRel);
                    }
                }
                Err((e, _)) => {
                    sh.metrics
                        .errors
                        .with_label_values(&[&sh.flow, "offset_sync"])
                        .inc();
                    warn!(flow = %sh.flow, error = %e, "cannot write an offset-sync point");
                }
            }
            return;
        }
        let idx = opaque >> OFFSET_BITS;
        let src = (opaque & OFFSET_MASK) as i64;
        // Held to the end: reports may also be served by a thread in
        // `flush`, and this lock keeps the callback single-threaded (the
        // progress fields below rely on one writer at a time).
        let mut cache = match self.cache.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        let Some(cached) = sh.slot_at_cached(&mut cache, idx) else {
            return;
        };
        let slot = &cached.slot;
        match result {
            Ok(m) => {
                let tgt = m.offset();
                // One clock read per report (latency and the point timer).
                let now = now_ms();
                let failed = slot.failed();
                if !failed {
                    slot.ack.acked.fetch_max(src + 1, Ordering::AcqRel);
                }
                cached.records.inc();
                cached.bytes.inc_by(record_size(m) as u64);
                if let Some(ts) = m.timestamp().to_millis() {
                    cached.hist.observe(((now - ts).max(0) as f64) / 1000.0);
                }
                // Fields only this callback writes: plain loads and
                // stores, no locked instructions.
                let prev_src = slot.ack.last_src.load(Ordering::Relaxed);
                let prev_tgt = slot.ack.last_tgt.load(Ordering::Relaxed);
                slot.ack.last_src.store(src, Ordering::Release);
                slot.ack.last_tgt.store(tgt, Ordering::Release);
                if prev_src >= 0
                    && src == prev_src + 1
                    && tgt > prev_tgt + 1
                    && !slot.foreign_warned.swap(true, Ordering::AcqRel)
                {
                    sh.metrics
                        .errors
                        .with_label_values(&[&sh.flow, "foreign_writer"])
                        .inc();
                    warn!(
                        flow = %sh.flow, topic = %slot.topic, partition = slot.partition,
                        target = %slot.target, source_offset = src, target_offset = tgt,
                        "another writer produced to the target partition between two mirrored records{}",
                        if sh.delivery == Delivery::ExactlyOnce {
                            " (exactly-once cannot hold if a second kmirror process still writes this partition)"
                        } else {
                            ""
                        }
                    );
                }
                // Offset-sync points: where the delta changes, the last
                // record of the old run and the first of the new one (so
                // that translation knows no record lies between them);
                // and every SYNC_EVERY records.
                let delta = tgt - src;
                // (An idle point may reset `since_sync` meanwhile; losing
                // that reset only brings the next point forward.)
                let n = slot.ack.since_sync.load(Ordering::Relaxed) + 1;
                slot.ack.since_sync.store(n, Ordering::Relaxed);
                let changed = slot.ack.last_delta.load(Ordering::Relaxed) != delta;
                slot.ack.last_delta.store(delta, Ordering::Relaxed);
                // ... and at least once a second, so that commits (which
                // wait for a point) keep moving.
                let due = now - slot.ack.point_ms.load(Ordering::Acquire) >= 1000;
                if changed || n >= SYNC_EVERY || due {
                    slot.ack.since_sync.store(0, Ordering::Release);
                    slot.ack.point_ms.store(now, Ordering::Release);
                    let emitted = slot.ack.emitted_src.swap(src, Ordering::AcqRel);
                    if let Ok(mut p) = sh.pending_syncs.lock() {
                        if changed && prev_src >= 0 && emitted != prev_src {
                            p.push((idx, slot.sync_point(prev_src, prev_tgt)));
                        }
                        p.push((idx, slot.sync_point(src, tgt)));
                    }
                }
            }
            Err((e, m)) => slot.refuse(src, e, record_size(m)),
        }
        let done = slot.ack.done.load(Ordering::Relaxed) + 1;
        slot.ack.done.store(done, Ordering::Release);
        slot.ack_skipped();
    }
}

/// Consumer context: rebalance handling (drain and commit on revoke,
/// exactly-once resume on assign) and lag from librdkafka statistics.
struct FlowConsumerCtx {
    shared: Arc<Shared>,
    producer: Mutex<Option<kafka::Polled<DeliveryCtx>>>,
    eos: Option<Mutex<eos::Resolver>>,
    drain_timeout: Duration,
    /// Partitions assigned since the loop last looked (to hold or resume).
    newly_assigned: Mutex<Vec<(String, i32)>>,
    /// Set with `newly_assigned` (the loop checks this flag per record,
    /// not the lock).
    has_new: AtomicBool,
}

impl ClientContext for FlowConsumerCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        log_librdkafka(level, fac, msg)
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.shared
            .metrics
            .errors
            .with_label_values(&[&self.shared.flow, "source_client"])
            .inc();
        if let Some(suppressed) = self.shared.throttle.allow("source_client") {
            warn!(flow = %self.shared.flow, %error, suppressed, "source consumer: {reason}");
        }
    }
    fn stats_raw(&self, json: &[u8]) {
        crate::metrics::record_client_stats(
            &self.shared.metrics,
            &self.shared.flow,
            "source_consumer",
            json,
        );
        #[derive(serde::Deserialize)]
        struct Stats {
            #[serde(default)]
            topics: HashMap<String, TopicStats>,
        }
        #[derive(serde::Deserialize)]
        struct TopicStats {
            #[serde(default)]
            partitions: HashMap<String, PartStats>,
        }
        #[derive(serde::Deserialize)]
        struct PartStats {
            #[serde(default = "minus_one")]
            hi_offset: i64,
            #[serde(default = "minus_one")]
            committed_offset: i64,
        }
        fn minus_one() -> i64 {
            -1
        }
        let Ok(stats) = serde_json::from_slice::<Stats>(json) else {
            return;
        };
        for (topic, ts) in stats.topics {
            for (p, ps) in ts.partitions {
                let Ok(p) = p.parse::<i32>() else { continue };
                if p < 0 || ps.hi_offset < 0 {
                    continue;
                }
                if let Some((_, slot)) = self.shared.slot_for(&topic, p) {
                    let acked = slot.ack.acked.load(Ordering::Acquire);
                    let pos = if acked >= 0 {
                        acked
                    } else {
                        ps.committed_offset
                    };
                    if pos >= 0 {
                        // Created on the first statistics, so that a lag of
                        // 0 always means "measured and caught up".
                        let part = p.to_string();
                        self.shared
                            .metrics
                            .lag
                            .with_label_values(&[
                                self.shared.flow.as_str(),
                                topic.as_str(),
                                part.as_str(),
                            ])
                            .set((ps.hi_offset - pos).max(0));
                    }
                }
            }
        }
    }
}

impl FlowConsumerCtx {
    fn producer(&self) -> Option<kafka::Polled<DeliveryCtx>> {
        self.producer.lock().ok().and_then(|p| p.clone())
    }

    fn on_assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let mirror = self
            .shared
            .mirror
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        let mut parts = Vec::new();
        for e in tpl.elements() {
            parts.push((e.topic().to_string(), e.partition()));
        }
        for (topic, p) in &parts {
            debug!(flow = %self.shared.flow, topic = %topic, partition = p, "partition assigned");
            let target = mirror
                .get(topic)
                .map(|m| m.target.clone())
                .unwrap_or_default();
            self.shared.assign(topic, *p, &target);
            if let Some(eos) = &self.eos {
                let last = self
                    .shared
                    .last_syncs
                    .lock()
                    .ok()
                    .and_then(|m| m.get(&(topic.clone(), *p)).copied());
                let resolved = eos
                    .lock()
                    .map_err(|e| e.to_string())
                    .and_then(|mut r| r.resume(topic, &target, *p, last));
                match resolved {
                    Ok(Some((pos, points))) => {
                        info!(flow = %self.shared.flow, topic = %topic, partition = p, offset = pos, points = points.len(), "exactly-once: resuming after the last record found in the target");
                        let _ = tpl.set_partition_offset(topic, *p, Offset::Offset(pos));
                        // Points for the records found: a process killed
                        // before it wrote them leaves them untranslatable.
                        if let Ok(mut pending) = self.shared.pending_syncs.lock() {
                            pending.extend(points.into_iter().map(|(up, down)| {
                                (
                                    NO_SLOT,
                                    OffsetSync {
                                        topic: topic.clone(),
                                        partition: *p,
                                        upstream_offset: up,
                                        downstream_offset: down,
                                    },
                                )
                            }));
                        }
                    }
                    Ok(None) => {
                        debug!(flow = %self.shared.flow, topic = %topic, partition = p, "exactly-once: target holds nothing of this partition yet; starting from the committed offset");
                    }
                    Err(e) => {
                        self.shared
                            .metrics
                            .errors
                            .with_label_values(&[&self.shared.flow, "eos_resume"])
                            .inc();
                        error!(flow = %self.shared.flow, topic = %topic, partition = p, error = %e, "exactly-once: cannot derive the resume position from the target; resuming from the committed offset (records after it may repeat)");
                    }
                }
            }
        }
        let r = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
            _ => consumer.assign(tpl),
        };
        if let Err(e) = r {
            error!(flow = %self.shared.flow, error = %e, "cannot take the assigned partitions");
        }
        if let Ok(mut n) = self.newly_assigned.lock() {
            n.extend(parts);
        }
        self.has_new.store(true, Ordering::Release);
    }

    fn on_revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        // Drain: every record handed to the producer is acknowledged (or
        // refused) before the partitions move, then their positions are
        // committed, so the next owner starts where this one stopped.
        if let Some(p) = self.producer() {
            produce_syncs(&self.shared, &p);
            if let Err(e) = p.flush(self.drain_timeout) {
                warn!(flow = %self.shared.flow, error = %e, "revoke: producer did not drain in time; unacknowledged records will be mirrored again by the next owner");
            }
            // A point for the last record of each partition, so that the
            // commit can reach it.
            emit_idle_points(&self.shared, &self.shared.assigned(), true);
            produce_syncs(&self.shared, &p);
            let _ = p.flush(self.drain_timeout);
        }
        let mut commit = TopicPartitionList::new();
        for e in tpl.elements() {
            if let Some((_, slot)) = self.shared.slot_for(e.topic(), e.partition()) {
                let acked = slot.commit_position();
                if acked >= 0 {
                    let _ = commit.add_partition_offset(
                        e.topic(),
                        e.partition(),
                        Offset::Offset(acked),
                    );
                }
            }
        }
        if commit.count() > 0 {
            if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
                warn!(flow = %self.shared.flow, error = %e, "revoke: commit failed");
            }
        }
        for e in tpl.elements() {
            debug!(flow = %self.shared.flow, topic = e.topic(), partition = e.partition(), "partition revoked");
            self.shared.unassign(e.topic(), e.partition());
        }
        let r = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
            _ => consumer.unassign(),
        };
        if let Err(e) = r {
            warn!(flow = %self.shared.flow, error = %e, "cannot release the revoked partitions");
        }
        info!(flow = %self.shared.flow, partitions = tpl.count(), "partitions revoked after draining");
    }
}

impl ConsumerContext for FlowConsumerCtx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.on_assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.on_revoke(consumer, tpl),
            other => {
                let code: RDKafkaErrorCode = other.into();
                error!(flow = %self.shared.flow, error = %code, "rebalance error");
                let _ = consumer.unassign();
            }
        }
    }
}

fn produce_syncs(sh: &Shared, producer: &kafka::Polled<DeliveryCtx>) {
    let syncs: Vec<(usize, OffsetSync)> = match sh.pending_syncs.lock() {
        Ok(mut p) => std::mem::take(&mut *p),
        Err(_) => return,
    };
    if syncs.is_empty() {
        return;
    }
    let topic = offset_syncs_topic(&sh.source_alias);
    for (idx, s) in syncs {
        let (k, v) = (s.key(), s.value());
        let idx = if idx < NO_SLOT { idx } else { NO_SLOT };
        let opaque = SYNC_FLAG | (idx << OFFSET_BITS) | (s.upstream_offset as usize & OFFSET_MASK);
        if let Ok(mut m) = sh.last_syncs.lock() {
            m.insert(
                (s.topic.clone(), s.partition),
                (s.upstream_offset, s.downstream_offset),
            );
        }
        let mut rec: BaseRecord<'_, [u8], [u8], usize> = BaseRecord::with_opaque_to(&topic, opaque)
            .partition(0)
            .key(&k[..])
            .payload(&v[..]);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((e, back)) => {
                    if matches!(
                        e,
                        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                    ) {
                        rec = back;
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                    sh.metrics
                        .errors
                        .with_label_values(&[&sh.flow, "offset_sync"])
                        .inc();
                    warn!(flow = %sh.flow, error = %e, "cannot queue an offset-sync point");
                    break;
                }
            }
        }
    }
}

/// Everything one flow's replicator needs.
pub struct Replicator {
    /// The flow.
    pub flow: FlowConfig,
    /// Source cluster.
    pub source: ClusterConfig,
    /// Target cluster.
    pub target: ClusterConfig,
    /// Process settings.
    pub runtime: RuntimeConfig,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Health.
    pub health: Arc<Health>,
    /// The flow's mirror set, published by discovery.
    pub mirror: watch::Receiver<Arc<MirrorSet>>,
}

impl Replicator {
    /// Runs the flow on the calling thread until `shutdown` is cancelled,
    /// then drains, commits and returns.
    pub fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let flow = self.flow.name.clone();
        let m = self.metrics.clone();
        m.init_flow(&flow);
        let shared = Arc::new(Shared {
            flow: flow.clone(),
            source_alias: self.source.alias.clone(),
            delivery: self.flow.delivery,
            metrics: m.clone(),
            slots: RwLock::new(Vec::new()),
            index: Mutex::new(HashMap::new()),
            pending_syncs: Mutex::new(Vec::new()),
            last_syncs: Mutex::new(HashMap::new()),
            mirror: Mutex::new(Arc::new(MirrorSet::new())),
            queue: m.producer_queue.with_label_values(&[&flow]),
            throttle: LogThrottle::default(),
            generation: AtomicU64::new(0),
        });
        let group = self.flow.group_id(&self.source.alias, &self.target.alias);
        let client_id = format!("kmirror-{}-{}", flow, std::process::id());

        let mut pcfg = kafka::client_config(&self.target, Role::Producer, &client_id);
        pcfg.set("statistics.interval.ms", "5000");
        kafka::apply_producer_owned(
            &mut pcfg,
            self.flow.compression.as_librdkafka(),
            &self.runtime,
        );
        let producer = kafka::Polled::create(
            &pcfg,
            DeliveryCtx {
                shared: shared.clone(),
                cache: Mutex::new(None),
            },
        )?;

        let eos = if self.flow.delivery == Delivery::ExactlyOnce {
            let mut r = eos::Resolver::new(
                &self.source,
                &self.target,
                self.flow
                    .provenance_header
                    .then(|| self.target.alias.clone()),
            )?;
            let loaded = r.load_syncs(&offset_syncs_topic(&self.source.alias))?;
            if let Ok(mut m) = shared.last_syncs.lock() {
                *m = loaded;
            }
            Some(Mutex::new(r))
        } else {
            None
        };

        let mut ccfg = kafka::client_config(&self.source, Role::Consumer, &client_id);
        kafka::apply_consumer_owned(&mut ccfg, &group, &self.runtime);
        ccfg.set("statistics.interval.ms", "5000");
        let consumer: BaseConsumer<FlowConsumerCtx> = kafka::create(
            &ccfg,
            FlowConsumerCtx {
                shared: shared.clone(),
                producer: Mutex::new(Some(producer.clone())),
                eos,
                drain_timeout: self.runtime.shutdown_timeout,
                newly_assigned: Mutex::new(Vec::new()),
                has_new: AtomicBool::new(false),
            },
        )?;
        info!(flow = %flow, group = %group, delivery = %self.flow.delivery, "flow started");

        let mut subscribed: BTreeSet<String> = BTreeSet::new();
        let mut held: BTreeSet<(String, i32)> = BTreeSet::new();
        let mut stopped: BTreeSet<(String, i32)> = BTreeSet::new();
        let mut last_house = Instant::now();
        let mut since_clock = 0u32;
        let mut cache: SlotCache = None;
        let provenance_skip = self
            .flow
            .provenance_header
            .then(|| self.target.alias.clone());
        let provenance_add = self
            .flow
            .provenance_header
            .then(|| self.source.alias.clone());
        self.mirror.mark_changed();

        loop {
            // Every 64 records and after an empty poll (`since_clock` is
            // 0): the stop request and the topic set are looked at (the
            // token's check takes a lock; not for every record).
            if since_clock == 0 && shutdown.is_cancelled() {
                break;
            }
            if since_clock == 0 && self.mirror.has_changed().unwrap_or(false) {
                let set = self.mirror.borrow_and_update().clone();
                if let Ok(mut cur) = shared.mirror.lock() {
                    *cur = set.clone();
                }
                let want: BTreeSet<String> = set.keys().cloned().collect();
                if want != subscribed {
                    let topics: Vec<&str> = want.iter().map(String::as_str).collect();
                    if topics.is_empty() {
                        consumer.unsubscribe();
                    } else if let Err(e) = consumer.subscribe(&topics) {
                        error!(flow = %flow, error = %e, "cannot subscribe");
                    }
                    for t in want.difference(&subscribed) {
                        info!(flow = %flow, topic = %t, target = %set[t].target, "mirroring topic");
                    }
                    for t in subscribed.difference(&want) {
                        info!(flow = %flow, topic = %t, "topic no longer selected; stopped mirroring it (records already mirrored stay)");
                    }
                    subscribed = want;
                }
                // Held partitions whose target partition now exists resume.
                let ready: Vec<(String, i32)> = held
                    .iter()
                    .filter(|(t, p)| set.get(t).is_some_and(|m| *p < m.target_partitions))
                    .cloned()
                    .collect();
                for (t, p) in ready {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(&t, p);
                    if consumer.resume(&tpl).is_ok() {
                        info!(flow = %flow, topic = %t, partition = p, "target partition exists now; mirroring resumes");
                        held.remove(&(t, p));
                    }
                }
            }
            // (Assignments happen inside `poll`, on this thread.)
            let newly: Vec<(String, i32)> = if consumer.context().has_new.load(Ordering::Relaxed)
                && consumer.context().has_new.swap(false, Ordering::AcqRel)
            {
                consumer
                    .context()
                    .newly_assigned
                    .lock()
                    .map(|mut n| std::mem::take(&mut *n))
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            if !newly.is_empty() {
                let set = shared.mirror.lock().map(|m| m.clone()).unwrap_or_default();
                for (t, p) in newly {
                    let tp = set.get(&t).map_or(0, |m| m.target_partitions);
                    if p >= tp {
                        let mut tpl = TopicPartitionList::new();
                        tpl.add_partition(&t, p);
                        let _ = consumer.pause(&tpl);
                        if tp > 0 {
                            m.errors
                                .with_label_values(&[&flow, "partition_mismatch"])
                                .inc();
                        }
                        warn!(flow = %flow, topic = %t, partition = p, target_partitions = tp, "partition held: the target topic does not have it yet");
                        held.insert((t, p));
                    }
                }
            }

            // The clock is read after an empty poll and every 64 records.
            let due = since_clock == 0 && last_house.elapsed() >= Duration::from_millis(100);
            since_clock = (since_clock + 1) % 64;
            if due {
                last_house = Instant::now();
                if let Some(c) = &cache {
                    c.flush();
                }
                housekeeping(&shared, &consumer, &producer, &mut stopped);
                m.partitions_paused
                    .with_label_values(&[&flow, "held"])
                    .set(held.len() as i64);
                let assigned = shared.assigned().len();
                m.partitions_assigned
                    .with_label_values(&[&flow])
                    .set(assigned as i64);
                self.health.set_flow(&flow, assigned > 0, stopped.len());
            }

            let msg = match consumer.poll(Duration::from_millis(100)) {
                None => {
                    since_clock = 0;
                    continue;
                }
                Some(Err(e)) => {
                    m.errors.with_label_values(&[&flow, "consume"]).inc();
                    if let Some(suppressed) = shared.throttle.allow("consume") {
                        warn!(flow = %flow, error = %e, suppressed, "consume error");
                    }
                    continue;
                }
                Some(Ok(msg)) => msg,
            };
            forward(
                &shared,
                &mut cache,
                &producer,
                &msg,
                provenance_skip.as_deref(),
                provenance_add.as_deref(),
                &shutdown,
            );
        }

        info!(flow = %flow, "stopping: draining the producer and committing");
        produce_syncs(&shared, &producer);
        if let Err(e) = producer.flush(self.runtime.shutdown_timeout) {
            warn!(flow = %flow, error = %e, "producer did not drain before the deadline; unacknowledged records are not committed and will be mirrored again");
        }
        emit_idle_points(&shared, &shared.assigned(), true);
        produce_syncs(&shared, &producer);
        let _ = producer.flush(Duration::from_secs(5));
        housekeeping(&shared, &consumer, &producer, &mut stopped);
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            if !matches!(e, KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) {
                warn!(flow = %flow, error = %e, "final commit failed");
            }
        }
        // Close: the revoke callback drains and commits again (quickly),
        // then the consumer leaves the group so that its partitions move at
        // once instead of after the session timeout.
        match consumer.close_queue() {
            Ok(()) => {
                let deadline = Instant::now() + self.runtime.shutdown_timeout;
                while !consumer.closed() && Instant::now() < deadline {
                    let _ = consumer.poll(Duration::from_millis(50));
                }
            }
            Err(e) => warn!(flow = %flow, error = %e, "cannot close the consumer cleanly"),
        }
        if let Ok(mut p) = consumer.context().producer.lock() {
            p.take();
        }
        drop(consumer);
        info!(flow = %flow, "flow stopped");
        Ok(())
    }
}

/// Stores acknowledged positions for commit, reports stopped partitions
/// and writes pending offset-sync points.
fn housekeeping(
    sh: &Shared,
    consumer: &BaseConsumer<FlowConsumerCtx>,
    producer: &kafka::Polled<DeliveryCtx>,
    stopped: &mut BTreeSet<(String, i32)>,
) {
    // Positions to commit: `acked` is the next offset to read (all before
    // it acknowledged). `store_offsets` stores exactly these offsets.
    let slots = sh.assigned();
    let mut store = TopicPartitionList::new();
    let mut stored = Vec::new();
    sh.queue.set(producer.in_flight_count() as i64);
    if let Some(c) = producer
        .context()
        .cache
        .lock()
        .ok()
        .as_deref()
        .and_then(Option::as_ref)
    {
        c.flush();
    }
    for (_, slot) in &slots {
        slot.ack_skipped();
        let acked = slot.commit_position();
        if acked > slot.stored.load(Ordering::Relaxed)
            && store
                .add_partition_offset(&slot.topic, slot.partition, Offset::Offset(acked))
                .is_ok()
        {
            stored.push((slot.clone(), acked));
        }
    }
    if store.count() > 0 {
        match consumer.store_offsets(&store) {
            Ok(()) => {
                for (slot, acked) in stored {
                    slot.stored.store(acked, Ordering::Relaxed);
                }
            }
            Err(e) => debug!(flow = %sh.flow, error = %e, "cannot store offsets"),
        }
    }
    for (_, slot) in &slots {
        let report = match slot.failure.lock() {
            Ok(mut f) => match f.as_mut() {
                Some(f) if !f.reported && slot.inflight() == 0 => {
                    f.reported = true;
                    Some(f.clone())
                }
                _ => None,
            },
            Err(_) => None,
        };
        if let Some(f) = report {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&slot.topic, slot.partition);
            let _ = consumer.pause(&tpl);
            stopped.insert((slot.topic.clone(), slot.partition));
            sh.metrics
                .errors
                .with_label_values(&[&sh.flow, "produce"])
                .inc();
            sh.metrics
                .partitions_paused
                .with_label_values(&[&sh.flow, "stopped"])
                .set(stopped.len() as i64);
            // The broker refuses a whole batch for one oversized record:
            // name the largest refused record as the one really refused.
            let too_large = f
                .refused
                .iter()
                .filter(|(_, _, c)| *c == Some(RDKafkaErrorCode::MessageSizeTooLarge))
                .max_by_key(|(_, size, _)| *size);
            let (offset, size) = match too_large {
                Some((o, s, _)) => (*o, *s),
                None => f
                    .refused
                    .iter()
                    .min_by_key(|(o, _, _)| *o)
                    .map(|(o, s, _)| (*o, *s))
                    .unwrap_or((f.first, 0)),
            };
            error!(
                flow = %sh.flow, topic = %slot.topic, partition = slot.partition, target = %slot.target,
                offset, record_bytes = size, refused_in_batch = f.refused.len(), resume_offset = f.first,
                reason = %f.error,
                "the target refused a record: partition stopped, nothing from offset {} on is committed (the broker refuses the whole batch; `offset` names the largest record of it); fix the cause (e.g. raise the target topic's max.message.bytes) and restart kmirror to resume",
                f.first
            );
        }
    }
    emit_idle_points(sh, &slots, false);
    produce_syncs(sh, producer);
}

/// Idle point: once a partition has no record in flight, its last
/// acknowledged record becomes a point (at most once a second unless
/// `force`), so that a group that read everything translates exactly and
/// the commit position can reach the end.
fn emit_idle_points(sh: &Shared, slots: &[(usize, Arc<Slot>)], force: bool) {
    let now = now_ms();
    for (idx, slot) in slots {
        if slot.inflight() != 0 {
            continue;
        }
        let (src, tgt) = (
            slot.ack.last_src.load(Ordering::Acquire),
            slot.ack.last_tgt.load(Ordering::Acquire),
        );
        if src >= 0
            && src > slot.ack.emitted_src.load(Ordering::Acquire)
            && (force || now - slot.ack.point_ms.load(Ordering::Acquire) >= 1000)
        {
            slot.ack.point_ms.store(now, Ordering::Release);
            slot.ack.emitted_src.store(src, Ordering::Release);
            slot.ack.since_sync.store(0, Ordering::Release);
            if let Ok(mut p) = sh.pending_syncs.lock() {
                p.push((*idx, slot.sync_point(src, tgt)));
            }
        }
    }
}

/// Sends one source record to the target; waits while the producer queue
/// is full (backpressure), never drops it.
fn forward(
    sh: &Shared,
    cache: &mut SlotCache,
    producer: &kafka::Polled<DeliveryCtx>,
    msg: &BorrowedMessage<'_>,
    provenance_skip: Option<&str>,
    provenance_add: Option<&str>,
    shutdown: &CancellationToken,
) {
    let Some(cached) = sh.slot_cached(cache, msg.topic(), msg.partition()) else {
        debug!(flow = %sh.flow, topic = msg.topic(), partition = msg.partition(), "record of an unassigned partition ignored (not committed)");
        return;
    };
    let (idx, slot) = (cached.idx, &cached.slot);
    if slot.target.is_empty() || slot.failed() {
        return;
    }
    let offset = msg.offset();
    let ts = msg.timestamp().to_millis();
    if let Some(ts) = ts {
        cached
            .hist
            .observe(((now_ms() - ts).max(0) as f64) / 1000.0);
    }
    // (Headers are parsed only when provenance is on.)
    if let Some((skip, hs)) = provenance_skip.and_then(|s| Some((s, msg.headers()?))) {
        let from_target = hs
            .iter()
            .any(|h| h.key == PROVENANCE_HEADER && h.value == Some(skip.as_bytes()));
        if from_target {
            slot.skip_to.fetch_max(offset + 1, Ordering::AcqRel);
            slot.ack_skipped();
            return;
        }
    }
    let mut headers: Option<OwnedHeaders> = msg.headers().map(|h| h.detach());
    if let Some(src) = provenance_add {
        let hs = headers.take().unwrap_or_default();
        headers = Some(hs.insert(Header {
            key: PROVENANCE_HEADER,
            value: Some(src),
        }));
    }
    let opaque = (idx << OFFSET_BITS) | (offset as usize & OFFSET_MASK);
    let mut rec: BaseRecord<'_, [u8], [u8], usize> =
        BaseRecord::with_opaque_to(&slot.target, opaque).partition(msg.partition());
    if let Some(k) = msg.key() {
        rec = rec.key(k);
    }
    if let Some(v) = msg.payload() {
        rec = rec.payload(v);
    }
    if let Some(ts) = ts {
        rec = rec.timestamp(ts);
    }
    if let Some(h) = headers {
        rec = rec.headers(h);
    }
    // `sent` has one writer, this thread: no locked instruction.
    slot.sent
        .store(slot.sent.load(Ordering::Relaxed) + 1, Ordering::Release);
    let mut waited = false;
    let mut backoff = Duration::from_millis(1);
    let mut waited_for = Duration::ZERO;
    loop {
        match producer.send(rec) {
            Ok(()) => break,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                rec = back;
                if !waited {
                    waited = true;
                    sh.metrics
                        .partitions_paused
                        .with_label_values(&[&sh.flow, "backpressure"])
                        .set(1);
                }
                // Wait until half of the queue has drained, so that
                // the queue refills in bursts of full batches: refilling
                // one record per acknowledgement wakes librdkafka's broker
                // thread for every record (about 25% more producer CPU
                // with a full queue, measured with kmirror-bench).
                // 1 ms steps while the pipe is merely busy; after 100 ms of
                // waiting (a slow or down target) the steps grow to 50 ms.
                let resume_at = producer.in_flight_count() / 2;
                loop {
                    if shutdown.is_cancelled() {
                        // Not sent, so not acknowledged: it is not committed
                        // and will be read again after the restart.
                        slot.sent
                            .store(slot.sent.load(Ordering::Relaxed) - 1, Ordering::Release);
                        return;
                    }
                    std::thread::sleep(backoff);
                    waited_for += backoff;
                    if waited_for > Duration::from_millis(100) {
                        backoff = (backoff * 2).min(Duration::from_millis(50));
                    }
                    if producer.in_flight_count() <= resume_at {
                        break;
                    }
                }
            }
            Err((e, _)) => {
                slot.refuse(offset, &e, record_size(msg));
                slot.sent
                    .store(slot.sent.load(Ordering::Relaxed) - 1, Ordering::Release);
                return;
            }
        }
    }
    if waited {
        sh.metrics
            .partitions_paused
            .with_label_values(&[&sh.flow, "backpressure"])
            .set(0);
    }
}
