//! End to end: exact consumer failover through checkpoints, with offset
//! gaps, across a kmirror restart, and group offset sync.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use kmirror::offsets::codec::{Checkpoint, OffsetSync};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

fn group_consumer(b: &Broker, group: &str) -> BaseConsumer {
    rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("log_level", "3")
        .create()
        .unwrap()
}

/// Joins `group` on `b`, reads `topic` from the group's committed offsets
/// to the current end of every partition; returns the values read.
fn consume_rest(b: &Broker, group: &str, topic: &str, parts: i32) -> Vec<Vec<u8>> {
    let probe = b.consumer(None);
    let ends: Vec<i64> = (0..parts)
        .map(|p| {
            probe
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .unwrap()
                .1
        })
        .collect();
    let start = committed(b, group, topic, parts);
    let c = group_consumer(b, group);
    c.subscribe(&[topic]).unwrap();
    let mut done: Vec<bool> = (0..parts as usize).map(|p| start[p] >= ends[p]).collect();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.iter().any(|d| !d) {
        assert!(
            Instant::now() < deadline,
            "timed out consuming {topic} on the target"
        );
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            out.push(m.payload().unwrap_or_default().to_vec());
            if m.offset() + 1 >= ends[m.partition() as usize] {
                done[m.partition() as usize] = true;
            }
        }
    }
    out
}

fn kmirror(args: &[&str]) -> (i32, String) {
    let (code, out, err) = run_kmirror(args);
    (code, out + &err)
}

/// `kmirror offsets apply` for `group` (with `--dry-run` when asked).
fn apply(cfg: &std::path::Path, group: &str, dry_run: bool) -> (i32, String) {
    let mut args = vec![
        "offsets",
        "apply",
        "--config",
        cfg.to_str().unwrap(),
        "--group",
        group,
    ];
    if dry_run {
        args.push("--dry-run");
    }
    kmirror(&args)
}

/// DeleteRecords: each (partition, offset) loses the records before offset.
fn delete_records(b: &Broker, topic: &str, before: &[(i32, i64)]) {
    let mut del = TopicPartitionList::new();
    for (p, o) in before {
        del.add_partition_offset(topic, *p, Offset::Offset(*o))
            .unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let res = rt
        .block_on(
            b.admin()
                .delete_records(&del, &rdkafka::admin::AdminOptions::new()),
        )
        .expect("DeleteRecords");
    for e in res.elements() {
        e.error()
            .unwrap_or_else(|err| panic!("DeleteRecords {}: {err}", e.partition()));
    }
}

fn flow(topic: &str, extra: &str) -> String {
    flow_toml(
        "",
        topic,
        &format!("groups = [\"app.*\"]\ncheckpoint_interval = \"1s\"\n{extra}"),
    )
}

/// Source records read before failover (offset < committed) plus target
/// records read after it must be every source record exactly once.
fn assert_exact(src: &Broker, topic: &str, commits: &[i64], after: &[Vec<u8>]) {
    let all = src.read_all(topic);
    let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
    for r in &all {
        if r.offset < commits[r.partition as usize] {
            *seen.entry(r.value.clone().unwrap()).or_default() += 1;
        }
    }
    for v in after.iter().filter(|v| !v.starts_with(b"foreign")) {
        *seen.entry(v.clone()).or_default() += 1;
    }
    let missing: Vec<_> = all
        .iter()
        .filter(|r| !seen.contains_key(r.value.as_ref().unwrap()))
        .map(|r| (r.partition, r.offset))
        .collect();
    let twice: Vec<_> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(v, n)| (String::from_utf8_lossy(v).into_owned(), *n))
        .collect();
    assert!(
        missing.is_empty(),
        "{} record(s) missing after failover, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        twice.is_empty(),
        "{} record(s) delivered twice, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    assert_eq!(seen.len(), all.len());
}

#[test]
fn failover_resumes_at_exactly_the_next_record() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("fo");
    let target = format!("src.{topic}");
    src.create_topic(&topic, 3, &[]);
    let mut recs = numbered(0, 10_000, 3);
    for (i, r) in recs.iter_mut().enumerate() {
        r.key = Some(format!("key-{}", i % 101).into_bytes());
    }
    src.produce(&topic, &recs);
    // The application's group read an uneven prefix of each partition.
    let commits = [1000, 2345, 10];
    commit_group(&src, "app-orders", &topic, &commits);

    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &src, &dst, &flow(&topic, ""));
    let k = KmirrorProc::start(&cfg, &dir.path().join("kmirror.log"));
    wait_count(&dst, &target, 10_000, Duration::from_secs(90), &k);
    wait_checkpoints(&cfg, "app-orders", &commits, &k);

    let (code, out) = apply(&cfg, "app-orders", true);
    assert_eq!(code, 0, "{out}");
    assert!(
        committed(&dst, "app-orders", &target, 3)
            .iter()
            .all(|o| *o < 0),
        "dry run wrote offsets"
    );
    let (code, out) = apply(&cfg, "app-orders", false);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        committed(&dst, "app-orders", &target, 3),
        commits.to_vec(),
        "same offsets: the target had no other records"
    );
    let after = consume_rest(&dst, "app-orders", &target, 3);
    assert_exact(&src, &topic, &commits, &after);

    // The checkpoint records decode with MM2's layout, written by hand here.
    let cps = dst.read_all("src.checkpoints.internal");
    let cp = cps
        .iter()
        .filter_map(|r| Checkpoint::decode(r.key.as_ref()?, r.value.as_ref()?).ok())
        .find(|c| c.group == "app-orders" && c.partition == 1)
        .expect("checkpoint for partition 1");
    let mut key = vec![0, 10];
    key.extend_from_slice(b"app-orders");
    key.extend_from_slice(&(target.len() as i16).to_be_bytes());
    key.extend_from_slice(target.as_bytes());
    key.extend_from_slice(&[0, 0, 0, 1]);
    let mut value = vec![0, 0];
    value.extend_from_slice(&2345i64.to_be_bytes());
    value.extend_from_slice(&2345i64.to_be_bytes());
    value.extend_from_slice(&[0, 0]);
    assert_eq!(cp.key(), key);
    assert!(cps
        .iter()
        .any(|r| r.key.as_deref() == Some(&key[..]) && r.value.as_deref() == Some(&value[..])));
    // And so do the offset-sync records: key = topic, partition; value = two int64.
    let syncs = dst.read_all("kmirror-offset-syncs.src.internal");
    assert!(!syncs.is_empty());
    for r in &syncs {
        let (k, v) = (r.key.as_ref().unwrap(), r.value.as_ref().unwrap());
        let n = i16::from_be_bytes([k[0], k[1]]) as usize;
        assert_eq!(&k[2..2 + n], topic.as_bytes());
        assert_eq!(k.len(), 2 + n + 4);
        assert_eq!(v.len(), 16);
        let os = OffsetSync::decode(k, v).unwrap();
        assert_eq!(
            os.downstream_offset, os.upstream_offset,
            "no gaps here: delta 0"
        );
    }
}

#[test]
fn failover_with_offset_gaps_and_a_restart_is_exact() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("gaps");
    let target = format!("src.{topic}");
    src.create_topic(&topic, 3, &[]);
    src.produce(&topic, &numbered(0, 3000, 3));
    // Records deleted on the source before mirroring starts.
    delete_records(&src, &topic, &[(0, 200), (1, 500)]);
    // The target topic already holds other records, a different number per partition.
    dst.create_topic(&target, 3, &[]);
    let foreign = |n: usize, p: i32| -> Vec<Rec> {
        (0..n)
            .map(|i| Rec::new(p, None, Some(format!("foreign-{p}-{i}").as_bytes())))
            .collect()
    };
    dst.produce(&target, &[foreign(50, 0), foreign(7, 2)].concat());

    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &src, &dst, &flow(&topic, ""));
    let log = dir.path().join("kmirror.log");
    let mut k = KmirrorProc::start(&cfg, &log);
    wait_count(
        &dst,
        &target,
        57 + 800 + 500 + 1000,
        Duration::from_secs(90),
        &k,
    );
    k.signal("TERM");
    assert_eq!(k.wait_exit(Duration::from_secs(30)), Some(0));
    // While kmirror is down: someone writes to the target again (the delta
    // changes mid-stream) and the source grows.
    dst.produce(&target, &foreign(13, 1));
    src.produce(&topic, &numbered(3000, 600, 3));
    let k = KmirrorProc::start(&cfg, &log);
    wait_count(
        &dst,
        &target,
        57 + 13 + 2300 + 600,
        Duration::from_secs(90),
        &k,
    );

    // kmirror is restarted between the commit and the failover: the process
    // that writes the checkpoints never saw the points in memory and must
    // reload them from the offset-sync topic.
    let mut k = k;
    k.signal("TERM");
    assert_eq!(k.wait_exit(Duration::from_secs(30)), Some(0));
    // p0: inside the first run; p1: after the delta changed; p2: everything.
    let commits = [700, 1100, 1200];
    commit_group(&src, "app-gaps", &topic, &commits);
    let k = KmirrorProc::start(&cfg, &log);
    wait_checkpoints(&cfg, "app-gaps", &commits, &k);
    let (code, out) = apply(&cfg, "app-gaps", false);
    assert_eq!(code, 0, "{out}");
    let applied = committed(&dst, "app-gaps", &target, 3);
    assert_eq!(
        applied,
        vec![700 - 200 + 50, 1100 - 500 + 13, 1200 + 7],
        "translated offsets"
    );
    let after = consume_rest(&dst, "app-gaps", &target, 3);
    assert_exact(&src, &topic, &commits, &after);
    drop(k);
}

#[test]
fn group_offsets_sync_to_idle_groups_only_and_never_backwards() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("gsync");
    let target = format!("src.{topic}");
    src.create_topic(&topic, 2, &[]);
    src.produce(&topic, &numbered(0, 400, 2));
    commit_group(&src, "app-idle", &topic, &[100, 150]);
    commit_group(&src, "app-busy", &topic, &[10, 20]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &src,
        &dst,
        &flow(&topic, "sync_group_offsets = true"),
    );
    // "app-busy" is consuming on the target already.
    dst.create_topic(&target, 2, &[]);
    let busy = group_consumer(&dst, "app-busy");
    busy.subscribe(&[target.as_str()]).unwrap();
    let _ = busy.poll(Duration::from_secs(3));
    let k = KmirrorProc::start(&cfg, &dir.path().join("kmirror.log"));
    wait_count(&dst, &target, 400, Duration::from_secs(60), &k);
    wait_until(Duration::from_secs(60), || {
        committed(&dst, "app-idle", &target, 2) == vec![100, 150]
    });
    for _ in 0..5 {
        let _ = busy.poll(Duration::from_millis(500));
    }
    let busy_offsets = committed(&dst, "app-busy", &target, 2);
    assert_ne!(
        busy_offsets,
        vec![10, 20],
        "an active group was overwritten"
    );
    // Never backwards: the source group moves back, the target keeps its offsets.
    commit_group(&src, "app-idle", &topic, &[50, 60]);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(committed(&dst, "app-idle", &target, 2), vec![100, 150]);
    // Forward moves are synced.
    commit_group(&src, "app-idle", &topic, &[180, 190]);
    wait_until(Duration::from_secs(30), || {
        committed(&dst, "app-idle", &target, 2) == vec![180, 190]
    });
    // `offsets apply` refuses while the group is active on the target.
    let (code, out) = apply(&cfg, "app-busy", false);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("active members"), "{out}");
}

#[test]
fn failover_is_exact_after_kmirror_was_killed_mid_stream() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("crashfo");
    let target = format!("src.{topic}");
    src.create_topic(&topic, 3, &[]);
    let dir = tempfile::tempdir().unwrap();
    let extra = "delivery = \"exactly-once\"\n\n[runtime]\ngroup_instance_id = \"crash-fo\"\n";
    let cfg = write_config(dir.path(), &src, &dst, &flow(&topic, extra));
    let log = dir.path().join("kmirror.log");
    let mut k = KmirrorProc::start(&cfg, &log);
    src.produce(&topic, &numbered(0, 3000, 3));
    // Killed while the batch is being mirrored, then restarted.
    wait_count(&dst, &target, 1200, Duration::from_secs(60), &k);
    k.kill9();
    src.produce(&topic, &numbered(3000, 1500, 3));
    let k = KmirrorProc::start(&cfg, &log);
    wait_count(&dst, &target, 4500, Duration::from_secs(90), &k);
    // Committed offsets before, around and after the kill.
    let commits = [300, 900, 1499];
    commit_group(&src, "app-crash", &topic, &commits);
    wait_checkpoints(&cfg, "app-crash", &commits, &k);
    let (code, out) = apply(&cfg, "app-crash", false);
    assert_eq!(code, 0, "{out}");
    let after = consume_rest(&dst, "app-crash", &target, 3);
    assert_exact(&src, &topic, &commits, &after);
}

/// A process killed before it wrote any offset-sync point (here: the
/// points deleted from the internal topic) leaves the records it mirrored
/// without points; the exactly-once resume of the next process finds them
/// in the target and writes their points, so translation stays exact.
#[test]
fn exactly_once_resume_writes_the_points_of_records_found_in_the_target() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("lostpts");
    let target = format!("src.{topic}");
    src.create_topic(&topic, 3, &[]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &src,
        &dst,
        &flow(
            &topic,
            "delivery = \"exactly-once\"\n\n[runtime]\ngroup_instance_id = \"lost-points\"\n",
        ),
    );
    let log = dir.path().join("kmirror.log");
    let mut k = KmirrorProc::start(&cfg, &log);
    src.produce(&topic, &numbered(0, 900, 3));
    wait_count(&dst, &target, 900, Duration::from_secs(60), &k);
    k.kill9();
    // Whatever points the killed process managed to write are deleted
    // (it may have written none: the case this test is about).
    let syncs = "kmirror-offset-syncs.src.internal";
    let n = count(&dst, syncs);
    if n > 0 {
        delete_records(&dst, syncs, &[(0, n)]);
    }
    assert_eq!(count(&dst, syncs), 0);

    let commits = [100, 150, 299];
    commit_group(&src, "app-lost", &topic, &commits);
    let k = KmirrorProc::start(&cfg, &log);
    wait_checkpoints(&cfg, "app-lost", &commits, &k);
    assert!(
        k.log_text().contains("points=2"),
        "the resume wrote the two ends of each partition's run: {}",
        k.log_text()
    );
    let (code, out) = apply(&cfg, "app-lost", false);
    assert_eq!(code, 0, "{out}");
    let after = consume_rest(&dst, "app-lost", &target, 3);
    assert_exact(&src, &topic, &commits, &after);
}

/// MM2's rule for a group committed where nothing was mirrored before its
/// offset: an empty partition (committed 0) and a commit at the source's
/// start get a checkpoint to the target partition's start, never ahead.
#[test]
fn empty_partitions_and_commits_at_the_start_get_a_checkpoint() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("empty");
    let target = format!("src.{topic}");
    src.create_topic(&topic, 3, &[]);
    // Records in partition 0 only; 1 and 2 stay empty.
    let recs: Vec<Rec> = numbered(0, 300, 3)
        .into_iter()
        .filter(|r| r.partition == 0)
        .collect();
    src.produce(&topic, &recs);
    commit_group(&src, "app-empty", &topic, &[40, 0, 0]);
    // A group committed at the start of partition 0 as well.
    commit_group(&src, "app-start", &topic, &[0, 0, 0]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &src,
        &dst,
        &flow(&topic, "sync_group_offsets = true"),
    );
    let k = KmirrorProc::start(&cfg, &dir.path().join("kmirror.log"));
    wait_count(
        &dst,
        &target,
        recs.len() as i64,
        Duration::from_secs(60),
        &k,
    );
    wait_checkpoints(&cfg, "app-empty", &[40, 0, 0], &k);
    wait_checkpoints(&cfg, "app-start", &[0, 0, 0], &k);
    let (code, out) = apply(&cfg, "app-start", false);
    assert_eq!(code, 0, "{out}");
    assert_eq!(committed(&dst, "app-start", &target, 3), vec![0, 0, 0]);
    let (code, out) = apply(&cfg, "app-empty", false);
    assert_eq!(code, 0, "{out}");
    assert_eq!(committed(&dst, "app-empty", &target, 3), vec![40, 0, 0]);
}

/// Checkpoints recover after a target outage: the target broker (durable
/// storage) is killed mid-run and restarted; a group that commits after
/// it is back gets its checkpoint (the loop reads with fresh clients after
/// a failed run, and leadership is won again).
#[test]
fn checkpoints_recover_after_a_target_outage() {
    let src = Broker::start(&unique("src"));
    let mut dst = Broker::start_sqlite(&unique("dst"));
    let topic = unique("outage");
    let target = format!("src.{topic}");
    src.create_topic(&topic, 2, &[("retention.ms", "-1")]);
    src.produce(&topic, &numbered(0, 1000, 2));
    commit_group(&src, "app-outage", &topic, &[100, 100]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &src,
        &dst,
        &format!(
            "[target.properties]\n\"session.timeout.ms\" = \"6000\"\n\n{}",
            flow(&topic, "")
        ),
    );
    let k = KmirrorProc::start(&cfg, &dir.path().join("kmirror.log"));
    wait_count(&dst, &target, 1000, Duration::from_secs(60), &k);
    wait_checkpoints(&cfg, "app-outage", &[100, 100], &k);
    dst.kill();
    std::thread::sleep(Duration::from_secs(15));
    dst.restart();
    commit_group(&src, "app-outage", &topic, &[300, 400]);
    wait_checkpoints(&cfg, "app-outage", &[300, 400], &k);
    let log = k.log_text();
    assert!(
        log.matches("checkpoint run failed").count() <= 1,
        "one warning per failure, not one per interval:\n{log}"
    );
}
