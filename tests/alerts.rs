//! The alert rules (`deploy/prometheus/alerts.yml`): valid for promtool,
//! their unit tests pass, and every kmirror metric they use is one a
//! running kmirror exports. `kmirror_lag_seconds` end to end: 0 when caught
//! up, grows while the target is down, 0 again after.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus")
}

/// Runs promtool (never skipped: a missing promtool fails the test and
/// says how to install it).
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(deploy_dir())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "promtool could not run ({e}): install Debian's prometheus package \
                 (`apt-get install --no-install-recommends prometheus`), or run \
                 `bash scripts/test.sh`, which installs it"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// The `kmirror_*` metric names the rules' expressions use.
fn metrics_in_rules() -> BTreeSet<String> {
    let text = std::fs::read_to_string(deploy_dir().join("alerts.yml")).unwrap();
    let re = regex::Regex::new(r"kmirror_[a-z_]+").unwrap();
    text.lines()
        .filter(|l| l.trim_start().starts_with("expr:"))
        .flat_map(|l| {
            re.find_iter(l)
                .map(|m| m.as_str().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Sum of the values of the series whose line starts with `prefix`.
fn series(metrics: &str, prefix: &str) -> Vec<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect()
}

#[test]
fn alert_rules_pass_promtool_and_use_only_exported_metrics() {
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");

    let names = metrics_in_rules();
    for want in [
        "kmirror_lag_seconds",
        "kmirror_partitions_paused",
        "kmirror_heartbeats_total",
        "kmirror_checkpoint_last_success_timestamp_seconds",
        "kmirror_ready",
    ] {
        assert!(names.contains(want), "alerts.yml lacks {want}: {names:?}");
    }

    // A running kmirror with one mirrored topic and one group to
    // checkpoint exports every one of them.
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("alerts");
    src.create_topic(&topic, 2, &[]);
    src.produce(&topic, &numbered(0, 200, 2));
    commit_group(&src, "alerts-reader", &topic, &[50, 50]);
    let dir = tempfile::tempdir().unwrap();
    let listen = http_listen();
    let flow = flow_toml(&listen, &topic, "checkpoint_interval = \"1s\"");
    let cfg = write_config(dir.path(), &src, &dst, &flow);
    let k = KmirrorProc::start(&cfg, &dir.path().join("kmirror.log"));
    wait_count(
        &dst,
        &format!("src.{topic}"),
        200,
        Duration::from_secs(60),
        &k,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, m) = http_get(&listen, "/metrics").unwrap();
        assert_eq!(status, 200);
        let missing: Vec<&String> = names
            .iter()
            .filter(|n| !m.lines().any(|l| l.starts_with(n.as_str())))
            .collect();
        if missing.is_empty() {
            assert!(m.contains("# TYPE kmirror_lag_seconds gauge"));
            assert_eq!(series(&m, "kmirror_ready "), vec![1.0], "{m}");
            // The default level: one data-path series per flow, however
            // many topics and partitions.
            assert_eq!(
                series(&m, "kmirror_records_total{"),
                vec![200.0],
                "one records series for the flow\n{m}"
            );
            assert!(
                m.contains("kmirror_records_total{flow=\"f\",partition=\"\",topic=\"\"} 200"),
                "{m}"
            );
            assert_eq!(series(&m, "kmirror_lag_records{").len(), 1, "{m}");
            let stamp = series(&m, "kmirror_checkpoint_last_success_timestamp_seconds{");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            assert!(
                stamp.len() == 1 && (now - stamp[0]).abs() < 30.0,
                "checkpoint stamp {stamp:?}, now {now}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a running kmirror does not export {missing:?}\n{m}\n{}",
            k.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn lag_seconds_is_zero_when_caught_up_and_grows_while_the_target_is_down() {
    let src = Broker::start(&unique("src"));
    let mut dst = Broker::start_sqlite(&unique("dst"));
    let topic = unique("lagsec");
    src.create_topic(&topic, 2, &[]);
    src.produce(&topic, &numbered(0, 100, 2));
    let dir = tempfile::tempdir().unwrap();
    let listen = http_listen();
    let flow = detailed(&flow_toml(&listen, &topic, ""));
    let cfg = write_config(dir.path(), &src, &dst, &flow);
    let k = KmirrorProc::start(&cfg, &dir.path().join("kmirror.log"));
    let target = format!("src.{topic}");
    wait_count(&dst, &target, 100, Duration::from_secs(60), &k);
    let lag_prefix = "kmirror_lag_seconds{flow=\"f\"";
    let wait_lag = |what: &str, ok: &dyn Fn(&[f64]) -> bool| -> Vec<f64> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, m) = http_get(&listen, "/metrics").unwrap();
            let v = series(&m, lag_prefix);
            if v.len() == 2 && ok(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: kmirror_lag_seconds {v:?}\n{m}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    wait_lag("caught up", &|v| v.iter().all(|s| *s == 0.0));

    // Target down, records keep coming: the age grows, bounded by the time
    // since the outage began (plus one statistics interval).
    dst.kill();
    let down = Instant::now();
    src.produce(&topic, &numbered(100, 100, 2));
    let v = wait_lag("target down", &|v| v.iter().all(|s| *s >= 8.0));
    let bound = down.elapsed().as_secs_f64() + 6.0;
    assert!(
        v.iter().all(|s| *s <= bound),
        "lag seconds {v:?} above the time since the outage began ({bound} s)"
    );
    let later = wait_lag("still down", &|w| {
        w.iter().zip(&v).all(|(a, b)| *a >= b + 4.0)
    });
    assert!(later
        .iter()
        .all(|s| *s <= down.elapsed().as_secs_f64() + 6.0));

    dst.restart();
    wait_count(&dst, &target, 200, Duration::from_secs(90), &k);
    wait_lag("target back", &|v| v.iter().all(|s| *s == 0.0));
}
