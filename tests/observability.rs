//! End to end: metrics, health endpoints, JSON logs, secrets never shown.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn series_sum(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn records_total_sums_to_n_and_lag_falls_to_zero() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("obs");
    src.create_topic(&topic, 3, &[]);
    src.produce(&topic, &numbered(0, 1500, 3));
    let dir = tempfile::tempdir().unwrap();
    let listen = http_listen();
    let flow = detailed(&flow_toml(&listen, &topic, ""));
    let cfg = write_config(dir.path(), &src, &dst, &flow);
    let k = KmirrorProc::start(&cfg, &dir.path().join("kmirror.log"));
    wait_count(
        &dst,
        &format!("src.{topic}"),
        1500,
        Duration::from_secs(60),
        &k,
    );
    let records = "kmirror_records_total{flow=\"f\",partition=";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, m) = http_get(&listen, "/metrics").unwrap();
        assert_eq!(status, 200);
        let n = series_sum(&m, records);
        let lag_series: Vec<&str> = m
            .lines()
            .filter(|l| l.starts_with("kmirror_lag_records{flow=\"f\""))
            .collect();
        let lag = series_sum(&m, "kmirror_lag_records{flow=\"f\"");
        if n == 1500.0 && lag_series.len() == 3 && lag == 0.0 {
            assert!(m.contains("# HELP kmirror_records_total"), "HELP text");
            assert!(m.contains(&format!(
                "kmirror_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )));
            assert!(m.contains("kmirror_replication_latency_seconds_bucket{flow=\"f\""));
            assert!(
                m.contains("kmirror_broker_up{"),
                "librdkafka statistics exported"
            );
            assert!(series_sum(&m, "kmirror_heartbeats_total") >= 1.0);
            assert!(
                m.contains("kmirror_partitions_assigned{flow=\"f\"} 3"),
                "{m}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "records {n}, lag {lag} ({} series)\n{m}",
            lag_series.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (status, body) = http_get(&listen, "/healthz").unwrap();
    assert_eq!((status, body.trim()), (200, "ok"));
}

#[test]
fn readyz_is_503_while_the_target_is_down_and_200_after() {
    let src = Broker::start(&unique("src"));
    let mut dst = Broker::start_sqlite(&unique("dst"));
    let topic = unique("ready");
    src.create_topic(&topic, 2, &[]);
    src.produce(&topic, &numbered(0, 100, 2));
    let dir = tempfile::tempdir().unwrap();
    let listen = http_listen();
    let flow = flow_toml(&listen, &topic, "");
    let cfg = write_config(dir.path(), &src, &dst, &flow);
    let k = KmirrorProc::start(&cfg, &dir.path().join("kmirror.log"));
    wait_count(
        &dst,
        &format!("src.{topic}"),
        100,
        Duration::from_secs(60),
        &k,
    );
    let status = || http_get(&listen, "/readyz").unwrap_or((0, String::new()));
    wait_until(Duration::from_secs(30), || status().0 == 200);
    dst.kill();
    wait_until(Duration::from_secs(60), || status().0 == 503);
    let (_, body) = status();
    assert!(body.contains("unreachable: target cluster dst"), "{body}");
    dst.restart();
    wait_until(Duration::from_secs(60), || status().0 == 200);
}

#[test]
fn json_logs_carry_fields_and_secrets_never_appear() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("json");
    src.create_topic(&topic, 1, &[]);
    src.produce(&topic, &numbered(0, 50, 1));
    let dir = tempfile::tempdir().unwrap();
    let listen = http_listen();
    let secret = "hunter2-very-secret-value";
    let text = format!(
        "[source]\nalias = \"src\"\nbootstrap_servers = \"{}\"\n[source.properties]\n\"sasl.username\" = \"mirror\"\n\"sasl.password\" = \"${{KMIRROR_TEST_SECRET}}\"\n\n[target]\nalias = \"dst\"\nbootstrap_servers = \"{}\"\n\n[http]\nlisten = \"{listen}\"\n\n[[flow]]\nname = \"f\"\ntopics = [\"{topic}\"]\nrefresh_topics_interval = \"1s\"\n",
        src.bootstrap(),
        dst.bootstrap()
    );
    let cfg = dir.path().join("secret.toml");
    std::fs::write(&cfg, text).unwrap();
    let log = dir.path().join("kmirror.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = std::process::Command::new(kmirror_bin())
        .args(["--log-format", "json", "run", "--config"])
        .arg(&cfg)
        .env("KMIRROR_TEST_SECRET", secret)
        .env("RUST_LOG", "debug")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let target = format!("src.{topic}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&dst, &target) < 50 {
        assert!(
            Instant::now() < deadline,
            "not mirrored: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, metrics) = http_get(&listen, "/metrics").unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let logtext = std::fs::read_to_string(&log).unwrap();
    let mut with_flow = 0;
    for line in logtext.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v.get("level").is_some() && v.get("timestamp").is_some(),
            "{line}"
        );
        if v.get("flow").and_then(|f| f.as_str()) == Some("f") {
            with_flow += 1;
        }
    }
    assert!(with_flow > 0, "no line with a flow field");
    assert!(
        logtext
            .lines()
            .any(|l| l.contains("\"partition\"") && l.contains("\"topic\"")),
        "topic/partition fields"
    );
    assert!(!logtext.contains(secret), "the secret reached the log");
    assert!(!metrics.contains(secret), "the secret reached the metrics");
    let out = std::process::Command::new(kmirror_bin())
        .args(["validate", "--config"])
        .arg(&cfg)
        .env("KMIRROR_TEST_SECRET", secret)
        .output()
        .unwrap();
    let shown =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert!(shown.contains("sasl.password=******"), "{shown}");
    assert!(!shown.contains(secret), "{shown}");
}
