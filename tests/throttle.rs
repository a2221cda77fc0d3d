//! End to end: `max_bytes_per_second` holds a backlog to the limit (an
//! upper bound, checked while it drains: a slow machine only goes
//! slower), nothing is lost, and the throttled time is exported. The
//! achieved rate at 10 and 50 MB/s is measured by `kmirror-bench throttle`.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn bytes_mirrored(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("kmirror_bytes_total{flow=\"f\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_flow_limit_holds_the_rate_and_loses_nothing() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("limit");
    src.create_topic(&topic, 4, &[]);
    // 1,200 records of about 1 kB: 1.2 MB, six seconds at 200 kB/s.
    let payload = vec![b'x'; 1000];
    let recs: Vec<Rec> = (0..1200)
        .map(|i| Rec::new(i % 4, Some(format!("k{i:04}").as_bytes()), Some(&payload)))
        .collect();
    src.produce(&topic, &recs);
    let dir = tempfile::tempdir().unwrap();
    let listen = http_listen();
    let limit = 200_000.0;
    let flow = flow_toml(&listen, &topic, "max_bytes_per_second = 200000");
    let cfg = write_config(dir.path(), &src, &dst, &flow);
    let k = KmirrorProc::start(&cfg, &dir.path().join("kmirror.log"));

    // From the first byte on, never more than the limit allows (plus the
    // bucket's 64 kB burst and one record).
    let mut first: Option<(Instant, f64)> = None;
    let mut checked = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, m) = http_get(&listen, "/metrics").unwrap_or_default();
        let b = bytes_mirrored(&m);
        let now = Instant::now();
        match first {
            None if b > 0.0 => first = Some((now, b)),
            Some((t0, b0)) => {
                let allowed = limit * now.duration_since(t0).as_secs_f64() + 64.0 * 1024.0 + 2048.0;
                assert!(
                    b - b0 <= allowed,
                    "{} bytes mirrored in {:?}: above the 200 kB/s limit ({allowed} allowed)",
                    b - b0,
                    now.duration_since(t0)
                );
                checked += 1;
            }
            None => {}
        }
        if b >= 1_200.0 * 1005.0 {
            break;
        }
        assert!(Instant::now() < deadline, "mirrored {b} bytes by now\n{m}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (t0, _) = first.unwrap();
    assert!(
        t0.elapsed() >= Duration::from_secs(4),
        "1.2 MB went through a 200 kB/s limit in {:?}",
        t0.elapsed()
    );
    assert!(checked >= 10, "the rate was checked {checked} times only");
    wait_count(
        &dst,
        &format!("src.{topic}"),
        1200,
        Duration::from_secs(30),
        &k,
    );
    assert_exact_copy(&src, &topic, &dst, &format!("src.{topic}"));
    let (_, m) = http_get(&listen, "/metrics").unwrap();
    let throttled: f64 = m
        .lines()
        .find(|l| l.starts_with("kmirror_throttled_seconds_total{flow=\"f\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(throttled >= 2.0, "throttled {throttled} s\n{m}");
}
