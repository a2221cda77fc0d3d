//! End to end: `kmirror cutover` moves a consumer group mid-stream; its
//! consumers on the target read every record the group had not consumed
//! on the source, exactly once. Refusals and the timeout exit codes.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;

/// Reads with `c` (subscribed) until `want` records or `timeout`; returns
/// the values read.
fn read_values(c: &BaseConsumer, want: usize, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.push(String::from_utf8(m.payload().unwrap().to_vec()).unwrap());
        }
    }
    out
}

#[test]
fn cutover_mid_stream_gives_the_target_consumers_every_record_exactly_once() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("orders");
    src.create_topic(&topic, 3, &[]);
    let dir = tempfile::tempdir().unwrap();
    let flow = flow_toml(
        "",
        &topic,
        "delivery = \"exactly-once\"\ncheckpoint_interval = \"1s\"",
    );
    let cfg = write_config(dir.path(), &src, &dst, &flow);
    let k = KmirrorProc::start(&cfg, &dir.path().join("kmirror.log"));

    // Records flow the whole time: 40 every 20 ms until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (stop, b, topic) = (stop.clone(), src.bootstrap(), topic.clone());
        std::thread::spawn(move || {
            use rdkafka::config::ClientConfig;
            use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
            let p: ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
                ClientConfig::new()
                    .set("bootstrap.servers", &b)
                    .set("enable.idempotence", "true")
                    .set("linger.ms", "5")
                    .create()
                    .unwrap();
            let mut i = 0usize;
            while !stop.load(Ordering::Acquire) {
                for _ in 0..40 {
                    let v = format!("v-{i:06}");
                    let rec: BaseRecord<'_, (), String> =
                        BaseRecord::to(&topic).partition((i % 3) as i32).payload(&v);
                    p.send(rec).map_err(|(e, _)| e).unwrap();
                    i += 1;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            p.flush(Duration::from_secs(30)).unwrap();
            i
        })
    };

    // The group consumes part of the stream on the source, commits what it
    // processed, and its consumers stop.
    let group = unique("billing");
    let consumed: Vec<String> = {
        let c = src.consumer(Some(&group));
        c.subscribe(&[&topic]).unwrap();
        let v = read_values(&c, 1500, Duration::from_secs(60));
        assert_eq!(v.len(), 1500, "the group read too little on the source");
        c.commit_consumer_state(CommitMode::Sync).unwrap();
        c.unsubscribe();
        v
    };

    // The cut-over starts while records still flow; the producers stop a
    // few seconds later (they moved first, in a real migration).
    let cutover = {
        let (cfg, group) = (cfg.clone(), group.clone());
        std::thread::spawn(move || {
            run_kmirror(&[
                "cutover",
                "--config",
                cfg.to_str().unwrap(),
                "--group",
                &group,
                "--timeout",
                "120s",
            ])
        })
    };
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Release);
    let produced = producer.join().unwrap();
    let (code, out, err) = cutover.join().unwrap();
    assert_eq!(code, 0, "cutover failed\n{out}\n{err}\n{}", k.log_text());
    for line in [
        "[1/4] consumers stopped on the source",
        "[2/4] mirrored up to the source's end (max lag 0)",
        "[3/4] final checkpoint",
        "[4/4] apply on the target: 3 partition offset(s) committed",
    ] {
        assert!(out.contains(line), "missing {line:?}\n{out}");
    }
    assert!(out.contains(&format!("src.{topic}")), "report\n{out}");

    // The group's consumers on the target read the rest: every record,
    // none twice, none of those already consumed on the source.
    let rest = produced - consumed.len();
    let c = dst.consumer(Some(&group));
    c.subscribe(&[&format!("src.{topic}")]).unwrap();
    let on_target = read_values(&c, rest, Duration::from_secs(60));
    // Nothing more arrives.
    let extra = read_values(&c, 1, Duration::from_secs(3));
    assert!(extra.is_empty(), "more than the rest: {extra:?}");
    let a: BTreeSet<&String> = consumed.iter().collect();
    let b: BTreeSet<&String> = on_target.iter().collect();
    assert_eq!(
        b.len(),
        on_target.len(),
        "a record read twice on the target"
    );
    assert_eq!(a.len(), consumed.len(), "a record read twice on the source");
    assert!(a.is_disjoint(&b), "records read on both sides");
    let all: BTreeSet<String> = (0..produced).map(|i| format!("v-{i:06}")).collect();
    let union: BTreeSet<String> = a.union(&b).map(|s| s.to_string()).collect();
    assert_eq!(
        union.len(),
        all.len(),
        "{} records produced, {} on the source + {} on the target",
        produced,
        consumed.len(),
        on_target.len()
    );
    assert_eq!(union, all);
    drop(c);

    // Run again: resumable, the offsets are found applied.
    let (code, out, err) = run_kmirror(&[
        "cutover",
        "--config",
        cfg.to_str().unwrap(),
        "--group",
        &group,
        "--timeout",
        "60s",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("already applied"), "{out}");
}

#[test]
fn cutover_refuses_and_times_out_with_its_exit_codes() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("pay");
    src.create_topic(&topic, 1, &[]);
    src.produce(&topic, &numbered(0, 100, 1));
    let dir = tempfile::tempdir().unwrap();
    let flow = flow_toml(
        "",
        &topic,
        "checkpoint_interval = \"1s\"\ngroups_exclude = [\"private-.*\"]",
    );
    let cfg = write_config(dir.path(), &src, &dst, &flow);
    let cfg_s = cfg.to_str().unwrap();

    // A group no flow checkpoints.
    commit_group(&src, "private-1", &topic, &[10]);
    let (code, out, err) = run_kmirror(&["cutover", "--config", cfg_s, "--group", "private-1"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("no flow of the configuration checkpoints group private-1"),
        "{err}"
    );

    // A group still consuming on the source: waits, then times out (3);
    // a dry run says so at once.
    let group = unique("busy");
    let c = src.consumer(Some(&group));
    c.subscribe(&[&topic]).unwrap();
    let _ = read_values(&c, 10, Duration::from_secs(30));
    c.commit_consumer_state(CommitMode::Sync).unwrap();
    let t = Instant::now();
    let (code, out, err) = run_kmirror(&[
        "cutover",
        "--config",
        cfg_s,
        "--group",
        &group,
        "--timeout",
        "5s",
    ]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("has active members on source"), "{out}");
    assert!(err.contains("timed out at step 1"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(30));
    let (code, out, err) =
        run_kmirror(&["cutover", "--config", cfg_s, "--group", &group, "--dry-run"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("not yet"), "{out}");
    drop(c);

    // Stopped on the source, mirrored and checkpointed, but consumers
    // already run on the target: refused (1), nothing written.
    let k = KmirrorProc::start(&cfg, &dir.path().join("kmirror.log"));
    wait_count(
        &dst,
        &format!("src.{topic}"),
        100,
        Duration::from_secs(60),
        &k,
    );
    let g2 = unique("moved");
    commit_group(&src, &g2, &topic, &[60]);
    let on_target = dst.consumer(Some(&g2));
    on_target.subscribe(&[&format!("src.{topic}")]).unwrap();
    let _ = read_values(&on_target, 5, Duration::from_secs(20));
    let (code, out, err) = run_kmirror(&[
        "cutover",
        "--config",
        cfg_s,
        "--group",
        &g2,
        "--timeout",
        "60s",
    ]);
    assert_eq!(code, 1, "{out}{err}\n{}", k.log_text());
    assert!(out.contains("[3/4] final checkpoint:"), "{out}");
    assert!(err.contains("has active members on target"), "{err}");
    drop(on_target);
    // With the target consumers stopped, it goes through; --max-lag lets a
    // partition still be behind.
    let (code, out, err) = run_kmirror(&[
        "cutover",
        "--config",
        cfg_s,
        "--group",
        &g2,
        "--timeout",
        "60s",
        "--max-lag",
        "5",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(committed(&dst, &g2, &format!("src.{topic}"), 1), vec![60]);
}
