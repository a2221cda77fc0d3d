//! End to end: topic discovery and renaming, cycle prevention with
//! provenance headers, partition mismatch, heartbeats.

mod common;

use std::time::Duration;

use common::*;
use kmirror::offsets::codec::Heartbeat;

#[test]
fn new_topics_are_mirrored_without_restart_and_filters_apply() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let base = unique("disc").replace('-', "_");
    let early = format!("{base}.early");
    let late = format!("{base}.late");
    let excluded = format!("{base}.tmp.x");
    let unmatched = format!("other_{base}");
    let internal = format!("{base}.cache.internal");
    for t in [&early, &excluded, &unmatched, &internal] {
        src.create_topic(t, 2, &[]);
        src.produce(t, &numbered(0, 20, 2));
    }
    let dir = tempfile::tempdir().unwrap();
    let flow = flow_toml(
        "",
        &format!("{base}\\\\..*"),
        &format!("topics_exclude = [\"{base}\\\\.tmp\\\\..*\"]"),
    );
    let cfg = write_config(dir.path(), &src, &dst, &flow);
    let k = KmirrorProc::start(&cfg, &dir.path().join("kmirror.log"));
    wait_count(
        &dst,
        &format!("src.{early}"),
        20,
        Duration::from_secs(60),
        &k,
    );

    // A topic created after start is picked up within the refresh interval.
    src.create_topic(&late, 3, &[]);
    src.produce(&late, &numbered(0, 30, 3));
    wait_count(
        &dst,
        &format!("src.{late}"),
        30,
        Duration::from_secs(30),
        &k,
    );
    assert_eq!(dst.partitions(&format!("src.{late}")), Some(3));

    std::thread::sleep(Duration::from_secs(2));
    let topics = dst.topics();
    for t in [&excluded, &unmatched, &internal] {
        assert!(
            !topics.iter().any(|x| x.ends_with(t.as_str())),
            "{t} must not be mirrored: {topics:?}"
        );
    }
    assert!(topics.contains(&"heartbeats".to_string()), "{topics:?}");
    assert!(
        topics.contains(&"kmirror-offset-syncs.src.internal".to_string()),
        "{topics:?}"
    );
}

#[test]
fn identity_rename_keeps_topic_names() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("ident");
    src.create_topic(&topic, 2, &[]);
    src.produce(&topic, &numbered(0, 100, 2));
    let dir = tempfile::tempdir().unwrap();
    let flow = flow_toml("", &topic, "rename = \"{topic}\"");
    let cfg = write_config(dir.path(), &src, &dst, &flow);
    let k = KmirrorProc::start(&cfg, &dir.path().join("kmirror.log"));
    wait_count(&dst, &topic, 100, Duration::from_secs(60), &k);
}

#[test]
fn prefix_rule_does_not_mirror_topics_that_came_from_the_target() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("loop");
    // "dst.<topic>" on the source is what the opposite direction produced.
    let back = format!("dst.{topic}");
    src.create_topic(&topic, 1, &[]);
    src.create_topic(&back, 1, &[]);
    src.produce(&topic, &numbered(0, 10, 1));
    src.produce(&back, &numbered(0, 10, 1));
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &src, &dst, &flow_toml("", ".*", ""));
    let k = KmirrorProc::start(&cfg, &dir.path().join("kmirror.log"));
    wait_count(
        &dst,
        &format!("src.{topic}"),
        10,
        Duration::from_secs(60),
        &k,
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !dst.topics().contains(&format!("src.{back}")),
        "cycle: {back} mirrored back"
    );
}

#[test]
fn active_active_identity_with_provenance_headers_has_no_loop() {
    let east = Broker::start(&unique("east"));
    let west = Broker::start(&unique("west"));
    let topic = unique("shared");
    east.create_topic(&topic, 2, &[]);
    west.create_topic(&topic, 2, &[]);
    let dir = tempfile::tempdir().unwrap();
    let conf = |from: &Broker, fa: &str, to: &Broker, ta: &str, name: &str| {
        let p = dir.path().join(name);
        std::fs::write(
            &p,
            format!(
                "[source]\nalias = \"{fa}\"\nbootstrap_servers = \"{}\"\n[target]\nalias = \"{ta}\"\nbootstrap_servers = \"{}\"\n[http]\nlisten = \"\"\n[[flow]]\nname = \"shared\"\ntopics = [\"{topic}\"]\nrename = \"{{topic}}\"\nprovenance_header = true\nrefresh_topics_interval = \"1s\"\n",
                from.bootstrap(),
                to.bootstrap()
            ),
        )
        .unwrap();
        p
    };
    let ew = conf(&east, "east", &west, "west", "ew.toml");
    let we = conf(&west, "west", &east, "east", "we.toml");
    let k1 = KmirrorProc::start(&ew, &dir.path().join("ew.log"));
    let k2 = KmirrorProc::start(&we, &dir.path().join("we.log"));
    east.produce(&topic, &numbered(0, 100, 2));
    west.produce(&topic, &numbered(1000, 100, 2));
    wait_count(&east, &topic, 200, Duration::from_secs(60), &k2);
    wait_count(&west, &topic, 200, Duration::from_secs(60), &k1);
    // Give a loop time to show itself.
    std::thread::sleep(Duration::from_secs(4));
    for (b, side) in [(&east, "east"), (&west, "west")] {
        let recs = b.read_all(&topic);
        assert_eq!(
            recs.len(),
            200,
            "{side}: every record once, none bounced back"
        );
        let mirrored: Vec<_> = recs
            .iter()
            .filter(|r| r.headers.iter().any(|(k, _)| k == "kmirror-source"))
            .collect();
        assert_eq!(
            mirrored.len(),
            100,
            "{side}: the other side's records carry the header"
        );
    }
}

/// A target topic with fewer partitions than the source: the extra ones
/// are held (reported once, metric) and never remapped; once the operator
/// adds the partitions on the target they are released and mirrored
/// (issue 11, defect 9: no record of a held partition is forwarded).
#[test]
fn target_with_fewer_partitions_holds_the_extra_ones() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("mismatch");
    let target = format!("src.{topic}");
    src.create_topic(&topic, 4, &[]);
    dst.create_topic(&target, 2, &[]);
    src.produce(&topic, &numbered(0, 400, 4));
    let dir = tempfile::tempdir().unwrap();
    let listen = http_listen();
    let flow = flow_toml(&listen, &topic, "");
    let cfg = write_config(dir.path(), &src, &dst, &flow);
    let k = KmirrorProc::start(&cfg, &dir.path().join("kmirror.log"));
    wait_count(&dst, &target, 200, Duration::from_secs(60), &k);
    std::thread::sleep(Duration::from_secs(2));
    let got = dst.read_all(&target);
    assert_eq!(got.len(), 200, "only partitions 0 and 1 are mirrored");
    assert!(got.iter().all(|r| r.partition < 2));
    // Never remapped: each record sits in its own partition number.
    for r in &got {
        let i: usize = String::from_utf8_lossy(r.value.as_ref().unwrap())[2..]
            .parse()
            .unwrap();
        assert_eq!(i % 4, r.partition as usize);
    }
    let log = k.log_text();
    assert!(log.contains("fewer partitions than the source"), "{log}");
    assert_eq!(
        log.matches("fewer partitions than the source").count(),
        1,
        "reported once"
    );
    let (_, m) = http_get(&listen, "/metrics").unwrap();
    assert!(
        m.lines().any(|l| l
            .starts_with("kmirror_errors_total{flow=\"f\",stage=\"partition_mismatch\"}")
            && !l.ends_with(" 0")),
        "{m}"
    );
    assert!(
        m.contains("kmirror_partitions_paused{flow=\"f\",reason=\"held\"} 2"),
        "{m}"
    );
    // The operator deletes the short target topic (the test broker has no
    // CreatePartitions): config sync creates it again with the source's 4
    // partitions, and the held ones are released and mirrored from their
    // start. Nothing of them was handed to the producer while they were
    // held (a record forwarded before the hold's pause applied would have
    // been refused by the 2-partition target and stopped its partition),
    // so partitions 2 and 3 are exact copies: every record once, in order.
    let admin = dst.admin();
    let r = futures::executor::block_on(
        admin.delete_topics(&[&target], &rdkafka::admin::AdminOptions::new()),
    )
    .unwrap();
    assert!(r.iter().all(|x| x.is_ok()), "{r:?}");
    let (s, deadline) = (
        src.read_all(&topic),
        std::time::Instant::now() + Duration::from_secs(90),
    );
    loop {
        let t = if dst.topics().contains(&target) {
            dst.read_all(&target)
        } else {
            Vec::new()
        };
        if (2..4).all(|p| values_of(&t, p) == values_of(&s, p)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "held partitions 2 and 3 not mirrored exactly after the target topic was made again: {} and {} of 100 records; log:\n{}",
            values_of(&t, 2).len(),
            values_of(&t, 3).len(),
            k.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The operator makes the target topic again, smaller, while all four
    // partitions are mirrored: records of partitions 2 and 3 have no
    // partition to go to. They are refused and their partitions stop
    // (an ERROR and the `stopped` gauge), as for any record the target
    // refuses; they are not retried for ever, which would stall the flow.
    // Partitions 0 and 1 go on.
    let r = futures::executor::block_on(
        admin.delete_topics(&[&target], &rdkafka::admin::AdminOptions::new()),
    )
    .unwrap();
    assert!(r.iter().all(|x| x.is_ok()), "{r:?}");
    dst.create_topic(&target, 2, &[]);
    src.produce(&topic, &numbered(400, 400, 4));
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let t = dst.read_all(&target);
        let (_, m) = http_get(&listen, "/metrics").unwrap();
        let stopped = m.contains("kmirror_partitions_paused{flow=\"f\",reason=\"stopped\"} 2");
        if stopped && (0..2).all(|p| values_of(&t, p).len() >= 100) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after the target topic was made again with 2 partitions: partitions 2 and 3 not stopped ({stopped}) or partitions 0 and 1 not mirrored ({} and {} of 100 new records); log:\n{}",
            values_of(&t, 0).len(),
            values_of(&t, 1).len(),
            k.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        k.log_text().contains("the target refused a record"),
        "{}",
        k.log_text()
    );
}

#[test]
fn heartbeats_arrive_in_mm2_layout() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let dir = tempfile::tempdir().unwrap();
    let flow = "[http]\nlisten = \"\"\n\n[[flow]]\nname = \"f\"\ntopics = [\"nothing-here\"]\nheartbeat_interval = \"200ms\"\n";
    let cfg = write_config(dir.path(), &src, &dst, flow);
    let k = KmirrorProc::start(&cfg, &dir.path().join("kmirror.log"));
    wait_count(&dst, "heartbeats", 3, Duration::from_secs(30), &k);
    let recs = dst.read_all("heartbeats");
    let before = now_ms();
    for r in &recs {
        let hb = Heartbeat::decode(r.key.as_ref().unwrap(), r.value.as_ref().unwrap()).unwrap();
        assert_eq!((hb.source.as_str(), hb.target.as_str()), ("src", "dst"));
        assert!(hb.timestamp_ms > before - 60_000 && hb.timestamp_ms <= before);
    }
    // Byte layout, written by hand: key = int16 len + "src", int16 len + "dst".
    assert_eq!(
        recs[0].key.as_ref().unwrap(),
        &[0, 3, b's', b'r', b'c', 0, 3, b'd', b's', b't']
    );
    assert_eq!(&recs[0].value.as_ref().unwrap()[..2], &[0, 0], "version 0");
}
