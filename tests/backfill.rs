//! End to end: `kmirror backfill` copies exactly the records of a time
//! window that a flow started at `latest` skipped, while the flow runs.

mod common;

use std::time::{Duration, UNIX_EPOCH};

use common::*;

fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
}

#[test]
fn backfill_copies_exactly_the_window_the_flow_skipped() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("late");
    src.create_topic(&topic, 2, &[]);
    let now = now_ms();
    let base = now - 600_000;
    // 60 records one second apart, alternating partitions, before the flow.
    let old: Vec<Rec> = (0..60)
        .map(|i| {
            let mut r = Rec::new(
                (i % 2) as i32,
                Some(format!("k{i}").as_bytes()),
                Some(format!("old-{i:02}").as_bytes()),
            );
            r.timestamp = Some(base + i * 1000);
            r.headers = vec![("h".into(), Some(format!("{i}").into_bytes()))];
            r
        })
        .collect();
    src.produce(&topic, &old);
    let dir = tempfile::tempdir().unwrap();
    let flow = flow_toml("", &topic, "start_from = \"latest\"");
    let cfg = write_config(dir.path(), &src, &dst, &flow);
    let cfg_s = cfg.to_str().unwrap().to_string();
    let k = KmirrorProc::start(&cfg, &dir.path().join("kmirror.log"));
    wait_until(Duration::from_secs(60), || {
        k.log_text()
            .matches("no committed offset for this partition: starting from start_from")
            .count()
            >= 2
    });
    std::thread::sleep(Duration::from_secs(2));
    src.produce(&topic, &numbered(0, 10, 2));
    let target = format!("src.{topic}");
    wait_count(&dst, &target, 10, Duration::from_secs(60), &k);

    let (from, until) = (rfc3339(base + 20_000), rfc3339(base + 40_000));
    // Dry run: the window per partition, nothing written.
    let (code, out, err) = run_kmirror(&[
        "backfill",
        "--config",
        &cfg_s,
        "--flow",
        "f",
        "--from",
        &from,
        "--until",
        &until,
        "--dry-run",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("20 record(s) in 2 partition(s) (dry run"),
        "{out}"
    );
    assert!(
        out.contains(&format!("{topic}[0] offsets 10..20 (10 records)")),
        "{out}"
    );
    assert!(
        out.contains(&format!("{topic}[1] offsets 10..20 (10 records)")),
        "{out}"
    );
    assert_eq!(count(&dst, &target), 10);

    // The window, while the flow runs.
    let (code, out, err) = run_kmirror(&[
        "backfill", "--config", &cfg_s, "--flow", "f", "--from", &from, "--until", &until,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("20 record(s) written to target dst"), "{out}");
    wait_count(&dst, &target, 30, Duration::from_secs(30), &k);
    std::thread::sleep(Duration::from_secs(1));
    let got = dst.read_all(&target);
    assert_eq!(got.len(), 30);
    let backfilled: Vec<&Rec> = got
        .iter()
        .filter(|r| r.value.as_deref().is_some_and(|v| v.starts_with(b"old-")))
        .collect();
    let want: Vec<String> = (20..40).map(|i| format!("old-{i:02}")).collect();
    let owned: Vec<Rec> = backfilled.iter().map(|r| (*r).clone()).collect();
    assert_eq!(sorted_values(&owned), want);
    // Same partition, key, timestamp and headers as the source record.
    for r in &backfilled {
        let v = String::from_utf8(r.value.clone().unwrap()).unwrap();
        let i: i64 = v[4..].parse().unwrap();
        assert_eq!(r.partition, (i % 2) as i32);
        assert_eq!(r.key.as_deref(), Some(format!("k{i}").as_bytes()));
        assert_eq!(r.timestamp, Some(base + i * 1000));
        assert_eq!(
            r.headers,
            vec![("h".to_string(), Some(format!("{i}").into_bytes()))]
        );
    }
    // Later records still flow through the running flow.
    src.produce(&topic, &numbered(10, 4, 2));
    wait_count(&dst, &target, 34, Duration::from_secs(60), &k);
}

#[test]
fn backfill_refuses_an_unknown_flow_and_a_bad_time() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let dir = tempfile::tempdir().unwrap();
    let flow = flow_toml("", "nothing-.*", "");
    let cfg = write_config(dir.path(), &src, &dst, &flow);
    let cfg_s = cfg.to_str().unwrap();
    let (code, _, err) = run_kmirror(&[
        "backfill",
        "--config",
        cfg_s,
        "--flow",
        "nope",
        "--from",
        "2026-01-01T00:00:00Z",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no flow named \"nope\"") && err.contains("flows: f"),
        "{err}"
    );
    let (code, _, err) = run_kmirror(&[
        "backfill",
        "--config",
        cfg_s,
        "--flow",
        "f",
        "--from",
        "yesterday",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("RFC 3339"), "{err}");
    let (code, _, err) = run_kmirror(&[
        "backfill",
        "--config",
        cfg_s,
        "--flow",
        "f",
        "--from",
        "2026-01-01T00:00:00Z",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("flow f mirrors no source topic now"), "{err}");
}

/// A record the target refuses stops its partition: exit 1, the partition
/// and the source offset named, nothing reported as copied after it.
#[test]
fn backfill_stops_a_partition_at_a_refused_record_and_names_it() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("big");
    src.create_topic(&topic, 1, &[]);
    let now = now_ms();
    let big = vec![b'x'; 20_000];
    let recs: Vec<Rec> = (0..10)
        .map(|i| {
            let v = if i == 5 {
                big.clone()
            } else {
                format!("small-{i}").into_bytes()
            };
            let mut r = Rec::new(0, None, Some(&v));
            r.timestamp = Some(now - 60_000 + i * 1000);
            r
        })
        .collect();
    src.produce(&topic, &recs);
    // The target topic takes at most 1,000 bytes per batch.
    let target = format!("src.{topic}");
    dst.create_topic(&target, 1, &[("max.message.bytes", "1000")]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &src, &dst, &flow_toml("", &topic, ""));
    let (code, out, err) = run_kmirror(&[
        "backfill",
        "--config",
        cfg.to_str().unwrap(),
        "--flow",
        "f",
        "--from",
        &rfc3339(now - 120_000),
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!(
            "{topic}[0] stopped: the target refused the record at source offset"
        )),
        "{err}"
    );
    // Nothing of the refused batch on is counted as written.
    let written: usize = out
        .lines()
        .find(|l| l.ends_with("record(s) written to target dst"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(usize::MAX);
    assert!(written < 10, "{out}");
    assert_eq!(count(&dst, &target) as usize, written, "{out}");
}
