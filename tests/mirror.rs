//! End to end: fidelity of the copy, discovery, graceful stop.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

fn fidelity_records(partitions: i32, n: usize) -> Vec<Rec> {
    (0..n)
        .map(|i| {
            let p = (i % partitions as usize) as i32;
            let key = match i % 7 {
                0 => None,
                _ => Some(format!("key-{i}").into_bytes()),
            };
            let value = match i % 11 {
                0 => None, // tombstone
                1 => Some(Vec::new()),
                _ => Some(format!("value-{i}-{}", "x".repeat(i % 50)).into_bytes()),
            };
            let mut headers = Vec::new();
            if i % 3 == 0 {
                headers.push(("h".to_string(), Some(b"1".to_vec())));
                headers.push(("h".to_string(), Some(b"2".to_vec()))); // duplicate key, kept in order
                headers.push(("bin".to_string(), Some(vec![0u8, 255, 1, 254])));
                headers.push(("null".to_string(), None));
            }
            Rec {
                partition: p,
                offset: -1,
                key,
                value,
                timestamp: Some(1_600_000_000_000 + i as i64 * 13),
                headers,
            }
        })
        .collect()
}

fn by_partition(rs: &[Rec]) -> BTreeMap<i32, Vec<Rec>> {
    let mut m: BTreeMap<i32, Vec<Rec>> = BTreeMap::new();
    for r in rs {
        let mut r = r.clone();
        r.offset = -1;
        m.entry(r.partition).or_default().push(r);
    }
    m
}

#[test]
fn fidelity_every_field_same_partition_same_order() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("fid");
    src.create_topic(&topic, 4, &[]);
    let records = fidelity_records(4, 5000);
    src.produce(&topic, &records);

    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &src, &dst, &flow_toml("", &topic, ""));
    let mut k = KmirrorProc::start(&cfg, &dir.path().join("kmirror.log"));
    let target = format!("src.{topic}");
    wait_count(&dst, &target, 5000, Duration::from_secs(90), &k);
    assert_eq!(dst.partitions(&target), Some(4), "same partition count");

    let got = by_partition(&dst.read_all(&target));
    let want = by_partition(&src.read_all(&topic));
    assert_eq!(want.values().map(Vec::len).sum::<usize>(), 5000);
    for p in 0..4 {
        let (g, w) = (&got[&p], &want[&p]);
        assert_eq!(g.len(), w.len(), "partition {p}: record count");
        for (i, (a, b)) in g.iter().zip(w).enumerate() {
            assert_eq!(a, b, "partition {p}, record {i} differs");
        }
    }
    k.signal("TERM");
    assert_eq!(
        k.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        k.log_text()
    );
}
