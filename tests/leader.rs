//! End to end: one leader per direction for the control loops, elected
//! through a Kafka group on the target. Two processes with the same flows:
//! exactly one leads; when it is killed (-9) the other takes over within
//! the session timeout and checkpoints go on.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn leads(listen: &str) -> Option<bool> {
    let (_, body) = http_get(listen, "/metrics")?;
    body.lines()
        .find(|l| l.starts_with("kmirror_leader{flow=\"f\"} "))
        .map(|l| l.ends_with(" 1"))
}

#[test]
fn one_leader_and_it_moves_when_killed() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("led");
    src.create_topic(&topic, 2, &[]);
    src.produce(&topic, &numbered(0, 600, 2));
    commit_group(&src, "app-led", &topic, &[100, 150]);
    let dir = test_dir();
    let (la, lb) = (http_listen(), http_listen());
    let flow = |listen: &str| {
        format!(
            "[source.properties]\n\"session.timeout.ms\" = \"6000\"\n\n[target.properties]\n\"session.timeout.ms\" = \"6000\"\n\n{}",
            flow_toml(
                listen,
                &topic,
                "groups = [\"app-.*\"]\ncheckpoint_interval = \"1s\""
            )
        )
    };
    let da = dir.path().join("a");
    let db = dir.path().join("b");
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    let ca = write_config(&da, &src, &dst, &flow(&la));
    let cb = write_config(&db, &src, &dst, &flow(&lb));
    let a = KmirrorProc::start(&ca, &da.join("kmirror.log"));
    let b = KmirrorProc::start(&cb, &db.join("kmirror.log"));
    wait_count(
        &dst,
        &format!("src.{topic}"),
        600,
        Duration::from_secs(60),
        &a,
    );

    // Never two leaders; after the group settles, exactly one.
    let one = || matches!((leads(&la), leads(&lb)), (Some(x), Some(y)) if x != y);
    wait_until(Duration::from_secs(30), one);
    for _ in 0..20 {
        let (x, y) = (leads(&la).unwrap(), leads(&lb).unwrap());
        assert!(!(x && y), "two leaders at once");
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_until(Duration::from_secs(30), one);
    wait_checkpoints(&ca, "app-led", &[100, 150], &a);

    // Kill the leader: the other takes over and checkpoints go on.
    let (mut leader, other, other_listen) = if leads(&la) == Some(true) {
        (a, b, lb.clone())
    } else {
        (b, a, la.clone())
    };
    leader.kill9();
    let t = Instant::now();
    wait_until(Duration::from_secs(30), || {
        leads(&other_listen) == Some(true)
    });
    let took = t.elapsed();
    let (_, ready) = http_get(&other_listen, "/readyz").unwrap();
    assert!(ready.contains("\"leader\":{\"f\":true}"), "{ready}");
    commit_group(&src, "app-led", &topic, &[200, 250]);
    wait_checkpoints(&ca, "app-led", &[200, 250], &other);
    assert!(
        took < Duration::from_secs(20),
        "the role took {took:?} to move (session timeout 6 s)\n{}",
        other.log_text()
    );
}

/// Issue 12's fault test: three processes; the leader is killed (-9),
/// then the next leader is frozen (SIGSTOP) past the session timeout and
/// thawed. The role moves within the bound each time, checkpoints and
/// config changes keep arriving, the thawed ex-leader writes nothing
/// stale, and the checkpoint topic never shows two writers in one
/// interval (the same checkpoint written twice less than an interval
/// apart).
#[test]
fn leadership_moves_on_kill_and_freeze_and_never_has_two_writers() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("lf");
    src.create_topic(&topic, 2, &[]);
    src.produce(&topic, &numbered(0, 4000, 2));
    commit_group(&src, "app-lf", &topic, &[10, 10]);
    let dir = test_dir();
    let listens: Vec<String> = (0..3).map(|_| http_listen()).collect();
    let mut procs = Vec::new();
    let mut cfgs = Vec::new();
    for (i, l) in listens.iter().enumerate() {
        let d = dir.path().join(format!("p{i}"));
        std::fs::create_dir_all(&d).unwrap();
        let body = format!(
            "[source.properties]\n\"session.timeout.ms\" = \"6000\"\n\n[target.properties]\n\"session.timeout.ms\" = \"6000\"\n\n{}",
            flow_toml(
                l,
                &topic,
                "groups = [\"app-.*\"]\ncheckpoint_interval = \"1s\"\nsync_configs_interval = \"2s\""
            )
        );
        let c = write_config(&d, &src, &dst, &body);
        procs.push(Some(KmirrorProc::start(&c, &d.join("kmirror.log"))));
        cfgs.push(c);
    }
    let target = format!("src.{topic}");
    wait_count(
        &dst,
        &target,
        4000,
        Duration::from_secs(60),
        procs[0].as_ref().unwrap(),
    );
    let app_lf_checkpoints = || {
        dst.read_all("src.checkpoints.internal")
            .iter()
            .filter_map(|r| {
                let cp = kmirror::offsets::codec::Checkpoint::decode(
                    r.key.as_deref()?,
                    r.value.as_deref()?,
                )
                .ok()?;
                Some((cp, r.timestamp?))
            })
            .filter(|(cp, _)| cp.group == "app-lf")
            .collect::<Vec<_>>()
    };
    // Checkpointing works before the faults start: the points of the
    // mirrored records are persisted (a leader killed before that leaves
    // the next owner of its flow partitions to mirror them again first).
    wait_until(Duration::from_secs(60), || !app_lf_checkpoints().is_empty());
    // The group keeps committing, so that checkpoints keep changing.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let committer = {
        let (stop, b, topic) = (stop.clone(), src.bootstrap(), topic.clone());
        std::thread::spawn(move || {
            use rdkafka::config::ClientConfig;
            use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
            use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &b)
                .set("group.id", "app-lf")
                .set("enable.auto.commit", "false")
                .create()
                .unwrap();
            let mut o = 10i64;
            while !stop.load(std::sync::atomic::Ordering::Acquire) && o < 1990 {
                o += 20;
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(&topic, 0, Offset::Offset(o))
                    .unwrap();
                tpl.add_partition_offset(&topic, 1, Offset::Offset(o))
                    .unwrap();
                let _ = c.commit(&tpl, CommitMode::Sync);
                std::thread::sleep(Duration::from_millis(500));
            }
            o
        })
    };
    let leader_of = |listens: &[String], procs: &[Option<KmirrorProc>]| -> Vec<usize> {
        (0..listens.len())
            .filter(|i| procs[*i].is_some() && leads(&listens[*i]) == Some(true))
            .collect()
    };
    wait_until(Duration::from_secs(30), || {
        leader_of(&listens, &procs).len() == 1
    });
    let first = leader_of(&listens, &procs)[0];

    // kill -9 the leader.
    procs[first].as_mut().unwrap().kill9();
    procs[first] = None;
    let t = Instant::now();
    wait_until(Duration::from_secs(30), || {
        leader_of(&listens, &procs).len() == 1
    });
    let moved = t.elapsed();
    assert!(
        moved < Duration::from_secs(20),
        "after kill -9 the role took {moved:?}"
    );
    let second = leader_of(&listens, &procs)[0];

    // Freeze the new leader past the session timeout.
    procs[second].as_ref().unwrap().signal("STOP");
    let t = Instant::now();
    let third = (0..3).find(|i| *i != first && *i != second).unwrap();
    wait_until(Duration::from_secs(30), || {
        leads(&listens[third]) == Some(true)
    });
    let moved = t.elapsed();
    // A config change made while the ex-leader is frozen arrives.
    set_topic_config(&src, &topic, "retention.ms", "7200000");
    std::thread::sleep(Duration::from_secs(4));
    procs[second].as_ref().unwrap().signal("CONT");
    assert!(
        moved < Duration::from_secs(20),
        "after SIGSTOP the role took {moved:?}"
    );
    wait_until(Duration::from_secs(30), || {
        topic_configs(&dst, &target)
            .get("retention.ms")
            .map(String::as_str)
            == Some("7200000")
    });
    // The thawed ex-leader does not lead at once (it must see the group
    // again), and there is never more than one leader from now on.
    for _ in 0..40 {
        let l = leader_of(&listens, &procs);
        assert!(l.len() <= 1, "two leaders at once: {l:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    // Enough checkpoints to judge (a loaded machine stretches the
    // intervals): the group keeps committing until there are 20.
    wait_until(Duration::from_secs(60), || app_lf_checkpoints().len() >= 20);
    stop.store(true, std::sync::atomic::Ordering::Release);
    let last = committer.join().unwrap();
    wait_checkpoints(
        &cfgs[third],
        "app-lf",
        &[last, last],
        procs[third].as_ref().unwrap(),
    );

    // Never two writers: no checkpoint written twice within one interval.
    let recs = app_lf_checkpoints();
    let mut seen: std::collections::HashMap<(String, String, i32, i64, i64), i64> =
        std::collections::HashMap::new();
    let mut n = 0;
    for (cp, ts) in recs {
        n += 1;
        let key = (
            cp.group,
            cp.topic,
            cp.partition,
            cp.upstream_offset,
            cp.downstream_offset,
        );
        if let Some(prev) = seen.insert(key.clone(), ts) {
            assert!(
                (ts - prev).abs() >= 1000,
                "checkpoint {key:?} written twice {} ms apart: two writers",
                (ts - prev).abs()
            );
        }
    }
    assert!(n >= 20, "only {n} checkpoints of app-lf");
}
