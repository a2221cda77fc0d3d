//! End to end (issue 12, item 5): the state of partitions a process no
//! longer owns is released: per-partition metric series (after a grace
//! period, shortened here with `KMIRROR_TEST_SERIES_GRACE_MS`), the series
//! of a deleted topic, and `/readyz` stays about what the process owns.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rdkafka::admin::AdminOptions;

fn metrics(listen: &str) -> String {
    http_get(listen, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default()
}

/// The partitions of `topic` with a `name` series.
fn partitions_with(m: &str, name: &str, topic: &str) -> Vec<String> {
    let prefix = format!("{name}{{flow=\"f\",partition=\"");
    let mut v: Vec<String> = m
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(&format!("topic=\"{topic}\"")))
        .filter_map(|l| Some(l[prefix.len()..].split('"').next()?.to_string()))
        .collect();
    v.sort();
    v
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool, ctx: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}\n{}", ctx());
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn series_of_moved_partitions_and_deleted_topics_are_released() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let stem = unique("rel");
    let (keep, gone) = (format!("{stem}-keep"), format!("{stem}-gone"));
    src.create_topic(&keep, 4, &[]);
    src.create_topic(&gone, 2, &[]);
    src.produce(&keep, &numbered(0, 400, 4));
    src.produce(&gone, &numbered(0, 100, 2));
    let dir = tempfile::tempdir().unwrap();
    let env = [("KMIRROR_TEST_SERIES_GRACE_MS", "3000")];
    let (la, lb) = (http_listen(), http_listen());
    let da = dir.path().join("a");
    let db = dir.path().join("b");
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    let pattern = format!("{stem}-.*");
    let ca = write_config(&da, &src, &dst, &detailed(&flow_toml(&la, &pattern, "")));
    let cb = write_config(&db, &src, &dst, &detailed(&flow_toml(&lb, &pattern, "")));
    let a = KmirrorProc::start_env(&ca, &da.join("kmirror.log"), &env);
    wait_count(
        &dst,
        &format!("src.{keep}"),
        400,
        Duration::from_secs(60),
        &a,
    );
    wait_count(
        &dst,
        &format!("src.{gone}"),
        100,
        Duration::from_secs(60),
        &a,
    );
    wait_for(
        "process a exports records of all 4 partitions",
        Duration::from_secs(30),
        || partitions_with(&metrics(&la), "kmirror_records_total", &keep).len() == 4,
        || metrics(&la),
    );

    // A second process takes some partitions: after the grace, a keeps
    // series only for what it owns, and b for what it owns.
    let b = KmirrorProc::start_env(&cb, &db.join("kmirror.log"), &env);
    src.produce(&keep, &numbered(400, 400, 4));
    wait_count(
        &dst,
        &format!("src.{keep}"),
        800,
        Duration::from_secs(60),
        &b,
    );
    wait_for(
        "the 4 partitions split between a and b, each exporting only its own",
        Duration::from_secs(60),
        || {
            let (ma, mb) = (metrics(&la), metrics(&lb));
            let pa = partitions_with(&ma, "kmirror_records_total", &keep);
            let pb = partitions_with(&mb, "kmirror_records_total", &keep);
            let la_ = partitions_with(&ma, "kmirror_lag_records", &keep);
            !pa.is_empty()
                && !pb.is_empty()
                && pa.len() + pb.len() == 4
                && pa.iter().all(|p| !pb.contains(p))
                && la_ == pa
        },
        || format!("a:\n{}\nb:\n{}", metrics(&la), metrics(&lb)),
    );

    // Delete a source topic: its series go from both processes.
    let admin = src.admin();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let res = rt
        .block_on(admin.delete_topics(&[&gone], &AdminOptions::new()))
        .unwrap();
    assert!(res.iter().all(|r| r.is_ok()), "{res:?}");
    wait_for(
        "no series of the deleted topic",
        Duration::from_secs(60),
        || {
            [&la, &lb].iter().all(|l| {
                let m = metrics(l);
                !m.lines()
                    .any(|line| line.contains(&format!("topic=\"{gone}\"")))
            })
        },
        || format!("a:\n{}\nb:\n{}", metrics(&la), metrics(&lb)),
    );
    // Both still ready, about what they own.
    for l in [&la, &lb] {
        let (status, body) = http_get(l, "/readyz").unwrap();
        assert_eq!(status, 200, "{body}");
    }
    drop(a);
    drop(b);
}
