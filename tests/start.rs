//! End to end: `start_from` for partitions the flow's group has no commit
//! for (latest, an RFC 3339 timestamp), and `plan` showing where each
//! partition would start.

mod common;

use std::time::{Duration, UNIX_EPOCH};

use common::*;

#[test]
fn start_from_latest_mirrors_only_records_written_after_the_assignment() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("latest");
    src.create_topic(&topic, 2, &[]);
    src.produce(&topic, &numbered(0, 100, 2));
    let dir = tempfile::tempdir().unwrap();
    let flow = flow_toml("", &topic, "start_from = \"latest\"");
    let cfg = write_config(dir.path(), &src, &dst, &flow);

    // plan: no commit yet, both partitions start at the end.
    let (code, out, err) = run_kmirror(&["plan", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("start_from: latest"), "{out}");
    assert!(
        out.contains(&format!(
            "{topic}: 0 resume at their commit; no commit, start at partition@offset: 0@end 1@end"
        )),
        "{out}"
    );

    let k = KmirrorProc::start(&cfg, &dir.path().join("kmirror.log"));
    // Both partitions assigned and positioned at the end.
    wait_until(Duration::from_secs(60), || {
        k.log_text()
            .matches("no committed offset for this partition: starting from start_from")
            .count()
            >= 2
    });
    // The position at the end is taken when the fetch starts: give it a
    // moment, then write the records that must arrive.
    std::thread::sleep(Duration::from_secs(2));
    src.produce(&topic, &numbered(100, 50, 2));
    let target = format!("src.{topic}");
    wait_count(&dst, &target, 50, Duration::from_secs(60), &k);
    std::thread::sleep(Duration::from_secs(2));
    let got = dst.read_all(&target);
    let want: Vec<String> = {
        let mut v: Vec<String> = (100..150).map(|i| format!("v-{i}")).collect();
        v.sort();
        v
    };
    assert_eq!(
        sorted_values(&got),
        want,
        "exactly the records written after"
    );

    // Restarted: the group's commit wins over start_from (nothing is
    // skipped or repeated).
    let mut k = k;
    k.signal("TERM");
    assert_eq!(k.wait_exit(Duration::from_secs(30)), Some(0), "clean stop");
    src.produce(&topic, &numbered(150, 30, 2));
    let k = KmirrorProc::start(&cfg, &dir.path().join("kmirror2.log"));
    wait_count(&dst, &target, 80, Duration::from_secs(60), &k);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count(&dst, &target), 80);
    let (code, out, err) = run_kmirror(&["plan", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("{topic}: every partition resumes at its commit")),
        "{out}"
    );
}

#[test]
fn start_from_a_timestamp_starts_at_the_first_record_at_or_after_it() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("since");
    src.create_topic(&topic, 2, &[]);
    // Partition 0: 60 records one second apart, ten minutes ago.
    // Partition 1: 10 records, all before the cut: it starts at the end.
    let base = now_ms() - 600_000;
    let mut recs = Vec::new();
    for i in 0..60 {
        let mut r = Rec::new(0, None, Some(format!("p0-{i:02}").as_bytes()));
        r.timestamp = Some(base + i * 1000);
        recs.push(r);
    }
    for i in 0..10 {
        let mut r = Rec::new(1, None, Some(format!("p1-{i:02}").as_bytes()));
        r.timestamp = Some(base + i * 1000);
        recs.push(r);
    }
    src.produce(&topic, &recs);
    // The cut at record 40 of partition 0, given with a +02:00 offset.
    let cut_ms = base + 40_000;
    let cut = {
        let t = UNIX_EPOCH + Duration::from_millis((cut_ms + 2 * 3600 * 1000) as u64);
        let s = humantime::format_rfc3339_millis(t).to_string();
        format!("{}+02:00", s.trim_end_matches('Z'))
    };
    let dir = tempfile::tempdir().unwrap();
    let flow = flow_toml("", &topic, &format!("start_from = \"{cut}\""));
    let cfg = write_config(dir.path(), &src, &dst, &flow);

    let (code, out, err) = run_kmirror(&["plan", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("start at partition@offset: 0@40 1@end"),
        "{out}"
    );

    let k = KmirrorProc::start(&cfg, &dir.path().join("kmirror.log"));
    let target = format!("src.{topic}");
    wait_count(&dst, &target, 20, Duration::from_secs(60), &k);
    // A later record of partition 1 arrives (it started at the end).
    let mut late = Rec::new(1, None, Some(b"p1-late"));
    late.timestamp = Some(now_ms());
    src.produce(&topic, &[late]);
    wait_count(&dst, &target, 21, Duration::from_secs(60), &k);
    std::thread::sleep(Duration::from_secs(2));
    let got = dst.read_all(&target);
    let mut want: Vec<String> = (40..60).map(|i| format!("p0-{i:02}")).collect();
    want.push("p1-late".into());
    want.sort();
    assert_eq!(sorted_values(&got), want);
    // Timestamps are kept, so the first mirrored record is the cut itself.
    let first = got
        .iter()
        .filter(|r| r.partition == 0)
        .map(|r| r.timestamp.unwrap())
        .min()
        .unwrap();
    assert_eq!(first, cut_ms);
}

#[test]
fn a_bad_start_from_is_refused_by_validate_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[source]\nalias = \"src\"\nbootstrap_servers = \"127.0.0.1:1\"\n\n\
         [target]\nalias = \"dst\"\nbootstrap_servers = \"127.0.0.1:2\"\n\n\
         [[flow]]\nname = \"f\"\ntopics = [\"t\"]\nstart_from = \"yesterday\"\n",
    )
    .unwrap();
    let (code, out, err) = run_kmirror(&["validate", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "bad config: exit 2\n{out}{err}");
    let text = format!("{out}{err}");
    assert!(text.contains("start_from"), "{text}");
    assert!(text.contains("RFC 3339"), "{text}");
    assert!(text.contains("bad.toml"), "{text}");
}
