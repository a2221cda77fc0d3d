//! End to end: graceful stop, crashes (at-least-once and exactly-once),
//! a target restart, scale-out, refused records.

mod common;

use std::time::Duration;

use common::*;
use rdkafka::consumer::Consumer;
use rdkafka::topic_partition_list::Offset;

fn flow(topic: &str, extra: &str) -> String {
    flow_toml("", topic, extra)
}

/// Committed offsets of kmirror's group for a topic.
fn committed(src: &Broker, topic: &str, partitions: i32) -> Vec<i64> {
    let c = src.consumer(Some("kmirror.src.dst.f"));
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

#[test]
fn graceful_stop_commits_and_restart_has_no_duplicates() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("graceful");
    src.create_topic(&topic, 3, &[]);
    src.produce(&topic, &numbered(0, 3000, 3));
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &src, &dst, &flow(&topic, ""));
    let log = dir.path().join("kmirror.log");
    let target = format!("src.{topic}");

    let mut k = KmirrorProc::start(&cfg, &log);
    wait_count(&dst, &target, 3000, Duration::from_secs(60), &k);
    k.signal("TERM");
    assert_eq!(
        k.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        k.log_text()
    );
    let c = src.consumer(None);
    let ends: Vec<i64> = (0..3)
        .map(|p| {
            c.fetch_watermarks(&topic, p, Duration::from_secs(5))
                .unwrap()
                .1
        })
        .collect();
    assert_eq!(
        committed(&src, &topic, 3),
        ends,
        "all acknowledged records committed"
    );

    src.produce(&topic, &numbered(3000, 600, 3));
    let mut k = KmirrorProc::start(&cfg, &log);
    wait_count(&dst, &target, 3600, Duration::from_secs(60), &k);
    std::thread::sleep(Duration::from_secs(2));
    let counts = value_counts(&dst, &target);
    assert_eq!(counts.len(), 3600);
    assert!(
        counts.values().all(|&n| n == 1),
        "a clean stop and restart repeats nothing"
    );
    k.signal("INT");
    assert_eq!(k.wait_exit(Duration::from_secs(30)), Some(0));
}

/// Streams `total` numbered records in batches while kmirror is killed
/// with -9 and restarted `kills` times; returns the value counts.
fn crash_run(delivery: &str, kills: usize) -> (usize, std::collections::HashMap<Vec<u8>, usize>) {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("crash");
    src.create_topic(&topic, 3, &[]);
    let dir = tempfile::tempdir().unwrap();
    let extra =
        format!("delivery = \"{delivery}\"\n\n[runtime]\ngroup_instance_id = \"crash-test\"\n");
    let cfg = write_config(dir.path(), &src, &dst, &flow(&topic, &extra));
    let log = dir.path().join("kmirror.log");
    let target = format!("src.{topic}");
    let batch = 1500;
    let total = batch * (kills + 1);
    let mut k = KmirrorProc::start(&cfg, &log);
    for round in 0..kills {
        src.produce(&topic, &numbered(round * batch, batch, 3));
        // Kill at a random point while this batch is being mirrored: after
        // a random part of it has reached the target.
        let part = 1 + rand::random::<u64>() as usize % (batch / 2);
        wait_count(
            &dst,
            &target,
            (round * batch + part) as i64,
            Duration::from_secs(60),
            &k,
        );
        k.kill9();
        k = KmirrorProc::start(&cfg, &log);
    }
    src.produce(&topic, &numbered(kills * batch, batch, 3));
    wait_count(&dst, &target, total as i64, Duration::from_secs(120), &k);
    // Give duplicates (if any) a moment to land before counting.
    std::thread::sleep(Duration::from_secs(3));
    let counts = value_counts(&dst, &target);
    k.signal("TERM");
    let _ = k.wait_exit(Duration::from_secs(30));
    (total, counts)
}

#[test]
fn crash_at_least_once_loses_nothing() {
    let (total, counts) = crash_run("at-least-once", 5);
    let repeated: usize = counts.values().map(|n| n - 1).sum();
    eprintln!("at-least-once after 5 kills: {repeated} repeated record(s)");
    for i in 0..total {
        let v = format!("v-{i}").into_bytes();
        assert!(
            counts.get(&v).copied().unwrap_or(0) >= 1,
            "record v-{i} missing"
        );
    }
}

#[test]
fn crash_exactly_once_has_every_record_once() {
    let (total, counts) = crash_run("exactly-once", 5);
    assert_eq!(counts.len(), total, "distinct records");
    let dups: Vec<_> = counts
        .iter()
        .filter(|(_, n)| **n != 1)
        .map(|(v, n)| (String::from_utf8_lossy(v).into_owned(), *n))
        .collect();
    assert!(dups.is_empty(), "records not exactly once: {dups:?}");
}

#[test]
fn target_restart_loses_nothing() {
    let src = Broker::start(&unique("src"));
    let mut dst = Broker::start_sqlite(&unique("dst"));
    let topic = unique("tgtrestart");
    src.create_topic(&topic, 2, &[]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &src, &dst, &flow(&topic, ""));
    let k = KmirrorProc::start(&cfg, &dir.path().join("kmirror.log"));
    let target = format!("src.{topic}");
    src.produce(&topic, &numbered(0, 1000, 2));
    wait_count(&dst, &target, 1000, Duration::from_secs(60), &k);
    dst.kill();
    src.produce(&topic, &numbered(1000, 1000, 2));
    std::thread::sleep(Duration::from_secs(10));
    dst.restart();
    src.produce(&topic, &numbered(2000, 1000, 2));
    wait_count(&dst, &target, 3000, Duration::from_secs(120), &k);
    let counts = value_counts(&dst, &target);
    for i in 0..3000 {
        assert!(
            counts.contains_key(format!("v-{i}").as_bytes()),
            "v-{i} lost across the target restart"
        );
    }
}

#[test]
fn scale_out_two_processes_one_killed_all_records_arrive() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("scale");
    src.create_topic(&topic, 4, &[]);
    let dir = tempfile::tempdir().unwrap();
    // A short session timeout so that the killed process's partitions move soon.
    let extra = "[source.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n";
    let text =
        std::fs::read_to_string(write_config(dir.path(), &src, &dst, &flow(&topic, ""))).unwrap();
    let text = text.replacen("\n[target]", &format!("{extra}\n[target]"), 1);
    let cfg = dir.path().join("scale.toml");
    std::fs::write(&cfg, text).unwrap();
    let a = KmirrorProc::start(&cfg, &dir.path().join("a.log"));
    let mut b = KmirrorProc::start(&cfg, &dir.path().join("b.log"));
    let target = format!("src.{topic}");
    src.produce(&topic, &numbered(0, 2000, 4));
    wait_count(&dst, &target, 2000, Duration::from_secs(60), &a);
    b.kill9();
    src.produce(&topic, &numbered(2000, 2000, 4));
    wait_count(&dst, &target, 4000, Duration::from_secs(90), &a);
    let counts = value_counts(&dst, &target);
    for i in 0..4000 {
        assert!(
            counts.contains_key(format!("v-{i}").as_bytes()),
            "v-{i} lost after one process was killed"
        );
    }
}

#[test]
fn refused_record_stops_its_partition_only_and_resumes_after_fix() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("refuse");
    let target = format!("src.{topic}");
    src.create_topic(&topic, 3, &[]);
    dst.create_topic(&target, 3, &[("max.message.bytes", "100000")]);
    let mut records = numbered(0, 600, 3);
    // Partition 0 gets the oversized record at its offset 100 (i = 300).
    records[300].value = Some(vec![b'x'; 200_000]);
    assert_eq!(records[300].partition, 0);
    src.produce(&topic, &records);

    let dir = tempfile::tempdir().unwrap();
    let listen = http_listen();
    let text = flow_toml(&listen, &topic, "");
    let cfg = write_config(dir.path(), &src, &dst, &text);
    let log = dir.path().join("kmirror.log");
    let mut k = KmirrorProc::start(&cfg, &log);

    // Partitions 1 and 2 are mirrored completely; partition 0 stops. The
    // broker refuses the whole batch that holds the oversized record, so the
    // records batched with it wait too; the log names the oversized one.
    wait_until(Duration::from_secs(60), || {
        k.log_text().contains("the target refused a record")
    });
    let logtext = k.log_text();
    let line = logtext
        .lines()
        .find(|l| l.contains("the target refused a record"))
        .unwrap();
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains(&format!("topic={topic}")), "{line}");
    assert!(line.contains("partition=0"), "{line}");
    assert!(
        line.contains("offset=100 "),
        "names the refused record: {line}"
    );
    assert!(line.contains("record_bytes=200005"), "{line}");
    let resume: i64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("resume_offset="))
        .and_then(|v| v.parse().ok())
        .expect("resume_offset in the log line");
    assert!(resume <= 100, "{line}");
    wait_until(Duration::from_secs(30), || {
        count(&dst, &target) >= 400 + resume
    });
    let got = dst.read_all(&target);
    let p0: Vec<_> = got.iter().filter(|r| r.partition == 0).collect();
    for i in 0..resume {
        let v = format!("v-{}", i * 3).into_bytes();
        assert!(
            p0.iter().any(|r| r.value.as_ref() == Some(&v)),
            "record before the refused batch missing"
        );
    }
    assert!(!p0
        .iter()
        .any(|r| r.value.as_ref().is_some_and(|v| v.len() == 200_000)));
    for p in [1, 2] {
        assert_eq!(
            got.iter().filter(|r| r.partition == p).count(),
            200,
            "partition {p} keeps mirroring"
        );
    }
    let (_, metrics) = http_get(&listen, "/metrics").unwrap();
    assert!(
        metrics.contains("kmirror_partitions_paused{flow=\"f\",reason=\"stopped\"} 1"),
        "{metrics}"
    );
    assert!(metrics.lines().any(|l| l
        .starts_with("kmirror_errors_total{flow=\"f\",stage=\"produce\"}")
        && !l.ends_with(" 0")));
    let (status, body) = http_get(&listen, "/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("stopped"), "{body}");

    // Fix the cause, restart: the partition resumes with nothing lost.
    k.signal("TERM");
    assert_eq!(k.wait_exit(Duration::from_secs(30)), Some(0));
    set_topic_config(&dst, &target, "max.message.bytes", "1048576");
    let k = KmirrorProc::start(&cfg, &log);
    let counts = {
        wait_until(Duration::from_secs(60), || {
            let c = value_counts(&dst, &target);
            (0..600).all(|i| c.contains_key(format!("v-{i}").as_bytes()) || i == 300)
                && c.keys().any(|v| v.len() == 200_000)
        });
        value_counts(&dst, &target)
    };
    assert!(
        counts.keys().any(|v| v.len() == 200_000),
        "the refused record arrives after the fix"
    );
    drop(k);
}

#[test]
fn second_signal_exits_at_once_while_draining() {
    let src = Broker::start(&unique("src"));
    let mut dst = Broker::start(&unique("dst"));
    let topic = unique("twice");
    src.create_topic(&topic, 1, &[]);
    src.produce(&topic, &numbered(0, 10, 1));
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &src, &dst, &flow(&topic, ""));
    let mut k = KmirrorProc::start(&cfg, &dir.path().join("kmirror.log"));
    wait_count(
        &dst,
        &format!("src.{topic}"),
        10,
        Duration::from_secs(60),
        &k,
    );
    // With the target down, records wait in the producer and the first
    // signal's drain cannot finish (deadline 30 s).
    dst.kill();
    src.produce(&topic, &numbered(10, 50, 1));
    std::thread::sleep(Duration::from_secs(1));
    k.signal("TERM");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        k.wait_exit(Duration::from_millis(10)),
        None,
        "still draining after the first signal"
    );
    let t = std::time::Instant::now();
    k.signal("TERM");
    assert_eq!(
        k.wait_exit(Duration::from_secs(5)),
        Some(1),
        "{}",
        k.log_text()
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(k.log_text().contains("second signal"));
}
