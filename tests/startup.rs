//! End to end: processes started together on one config (issue 12, item
//! 7). The target topic is created by config sync alone, with the source's
//! partition count; no producer's metadata request creates it with the
//! broker's defaults first, and every partition mirrors.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn three_processes_started_at_once_mirror_every_partition() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("together");
    src.create_topic(&topic, 6, &[]);
    src.produce(&topic, &numbered(0, 1200, 6));
    let dir = tempfile::tempdir().unwrap();
    let flow = flow_toml("", &topic, "");
    let cfg = write_config(dir.path(), &src, &dst, &flow);
    let procs: Vec<KmirrorProc> = (0..3)
        .map(|i| KmirrorProc::start(&cfg, &dir.path().join(format!("kmirror-{i}.log"))))
        .collect();
    let target = format!("src.{topic}");
    wait_count(&dst, &target, 1200, Duration::from_secs(90), &procs[0]);
    assert_eq!(dst.partitions(&target), Some(6), "target partitions");
    std::thread::sleep(Duration::from_secs(2));
    let counts = value_counts(&dst, &target);
    assert_eq!(counts.len(), 1200, "every record");
    assert!(counts.values().all(|c| *c == 1), "a record twice");
    assert_exact_copy(&src, &topic, &dst, &target);
}
