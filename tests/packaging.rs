//! Packaging: `docker-compose.yml`, the `Dockerfile`, the Prometheus and
//! Grafana provisioning files and the Grafana dashboard agree with each
//! other, and every metric the dashboard queries is one that a running
//! kmirror really exports. (No Docker engine is needed: the files are
//! checked statically, the metrics against a local kmirror.)

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Parses a one-document YAML file.
fn load_yaml(path: &Path) -> Yaml {
    let mut docs = YamlLoader::load_from_str(&read(path))
        .unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", path.display()));
    assert_eq!(
        docs.len(),
        1,
        "{}: expected one YAML document",
        path.display()
    );
    docs.remove(0)
}

/// A scalar as text (YAML integers and booleans too).
fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The items of a YAML sequence (empty when it is absent).
fn items(y: &Yaml) -> &[Yaml] {
    y.as_vec().map(Vec::as_slice).unwrap_or(&[])
}

/// A bind mount of a compose service: host path (as written) -> container path.
#[derive(Debug)]
struct Mount {
    host: String,
    container: String,
}

/// The `volumes:` of a service, short (`HOST:CONTAINER[:MODE]`) or long syntax.
fn mounts(service: &Yaml) -> Vec<Mount> {
    items(&service["volumes"])
        .iter()
        .map(|v| match v {
            Yaml::String(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                assert!(parts.len() >= 2, "volume {s:?}: expected HOST:CONTAINER");
                Mount {
                    host: parts[0].to_string(),
                    container: parts[1].to_string(),
                }
            }
            Yaml::Hash(_) => Mount {
                host: scalar(&v["source"])
                    .unwrap_or_else(|| panic!("volume without source: {v:?}")),
                container: scalar(&v["target"])
                    .unwrap_or_else(|| panic!("volume without target: {v:?}")),
            },
            other => panic!("unexpected volume entry {other:?}"),
        })
        .collect()
}

/// The container ports a service publishes (`HOST:CONTAINER`, `IP:HOST:CONTAINER`,
/// `PORT`, optional `/proto`, or the long syntax).
fn published_container_ports(service: &Yaml) -> BTreeSet<u16> {
    items(&service["ports"])
        .iter()
        .map(|p| {
            let text = match p {
                Yaml::Hash(_) => scalar(&p["target"]).expect("port without target"),
                _ => scalar(p).unwrap_or_else(|| panic!("unexpected port entry {p:?}")),
            };
            let container = text.rsplit(':').next().unwrap();
            let container = container.split('/').next().unwrap();
            container
                .parse()
                .unwrap_or_else(|e| panic!("port {text:?}: {e}"))
        })
        .collect()
}

/// The environment of a service as a map (mapping or `K=V` list; a `<<`
/// merge key is expanded).
fn environment(service: &Yaml) -> BTreeMap<String, String> {
    fn add(out: &mut BTreeMap<String, String>, env: &Yaml) {
        match env {
            Yaml::Hash(h) => {
                if let Some(base) = h.get(&Yaml::String("<<".into())) {
                    add(out, base);
                }
                for (k, v) in h {
                    let k = scalar(k).unwrap();
                    if k != "<<" {
                        out.insert(k, scalar(v).unwrap_or_default());
                    }
                }
            }
            Yaml::Array(a) => {
                for e in a {
                    let s = scalar(e).unwrap();
                    let (k, v) = s.split_once('=').unwrap_or((&s, ""));
                    out.insert(k.to_string(), v.to_string());
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    add(&mut out, &service["environment"]);
    out
}

/// The instructions of a Dockerfile's final stage: (INSTRUCTION, arguments),
/// continuation lines joined, comments dropped.
fn final_stage(dockerfile: &str) -> Vec<(String, String)> {
    stages(dockerfile).pop().unwrap_or_default()
}

/// The instructions of each stage of a Dockerfile, as [`final_stage`].
fn stages(dockerfile: &str) -> Vec<Vec<(String, String)>> {
    let mut joined = Vec::new();
    let mut cur = String::new();
    for line in dockerfile.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else {
            cur.push_str(t);
            joined.push(std::mem::take(&mut cur));
        }
    }
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    for l in joined {
        let (ins, args) = l.split_once(char::is_whitespace).unwrap_or((&l, ""));
        let ins = ins.to_ascii_uppercase();
        if ins == "FROM" || stages.is_empty() {
            stages.push(Vec::new());
        }
        if let Some(stage) = stages.last_mut() {
            stage.push((ins, args.trim().to_string()));
        }
    }
    stages
}

/// The image build must see every local source the crate builds from: the
/// builder stage copies `src` and the directory of each `[patch]` path
/// (the vendored, patched librdkafka), or `docker build` would fetch the
/// unpatched crate or fail.
#[test]
fn docker_build_copies_every_local_source() {
    let manifest: toml::Table = read(&repo().join("Cargo.toml"))
        .parse()
        .expect("Cargo.toml parses");
    let mut needed = BTreeSet::from(["src".to_string()]);
    for registry in manifest
        .get("patch")
        .and_then(|p| p.as_table())
        .into_iter()
        .flat_map(|t| t.values())
    {
        for dep in registry.as_table().into_iter().flat_map(|t| t.values()) {
            if let Some(path) = dep.get("path").and_then(|p| p.as_str()) {
                let top = path.split('/').next().unwrap_or(path);
                assert!(
                    repo().join(path).join("Cargo.toml").exists(),
                    "Cargo.toml: [patch] path {path} has no Cargo.toml"
                );
                needed.insert(top.to_string());
            }
        }
    }
    assert!(
        needed.len() > 1,
        "Cargo.toml: expected the vendored rdkafka-sys in [patch]"
    );
    let dockerfile = read(&repo().join("Dockerfile"));
    let builder = stages(&dockerfile)
        .into_iter()
        .find(|st| {
            st.iter()
                .any(|(i, a)| i == "RUN" && a.contains("cargo build"))
        })
        .expect("Dockerfile: no stage runs cargo build");
    let copied: BTreeSet<String> = builder
        .iter()
        .filter(|(i, _)| i == "COPY")
        .flat_map(|(_, a)| {
            let words: Vec<&str> = a
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let n = words.len().saturating_sub(1);
            words[..n]
                .iter()
                .map(|w| w.trim_start_matches("./").trim_end_matches('/').to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    for dir in &needed {
        assert!(
            copied.contains(dir),
            "Dockerfile: the builder stage does not COPY {dir} (copies {copied:?})"
        );
    }
}

/// `host:port` -> (host, port).
fn host_port(addr: &str) -> (String, u16) {
    let (h, p) = addr
        .trim()
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{addr:?} is not host:port"));
    (
        h.trim_matches(['[', ']']).to_string(),
        p.parse().unwrap_or_else(|e| panic!("{addr:?}: {e}")),
    )
}

#[test]
fn compose_file_is_consistent() {
    let root = repo();
    let compose = load_yaml(&root.join("docker-compose.yml"));
    let services = &compose["services"];
    for name in [
        "kafka-east",
        "kafka-west",
        "kmirror",
        "prometheus",
        "grafana",
    ] {
        assert!(
            services[name].as_hash().is_some(),
            "docker-compose.yml: no service {name}"
        );
    }

    // Every relative host path mounted by any service exists in the repo.
    let mut all_mounts: BTreeMap<String, Vec<Mount>> = BTreeMap::new();
    for (name, svc) in services.as_hash().unwrap() {
        let name = scalar(name).unwrap();
        let ms = mounts(svc);
        for m in &ms {
            if m.host.starts_with("./") || m.host.starts_with("../") {
                assert!(
                    root.join(&m.host).exists(),
                    "service {name} mounts {} (-> {}), which does not exist in the repo",
                    m.host,
                    m.container
                );
            }
        }
        all_mounts.insert(name, ms);
    }
    let host_for = |service: &str, container: &str| -> PathBuf {
        let m = all_mounts[service]
            .iter()
            .find(|m| m.container.trim_end_matches('/') == container.trim_end_matches('/'))
            .unwrap_or_else(|| {
                panic!(
                    "service {service} mounts nothing at {container}: {:?}",
                    all_mounts[service]
                )
            });
        root.join(&m.host)
    };

    // kmirror is built from this repo's Dockerfile.
    let kmirror = &services["kmirror"];
    let (context, dockerfile_name) = match &kmirror["build"] {
        Yaml::String(ctx) => (ctx.clone(), "Dockerfile".to_string()),
        b @ Yaml::Hash(_) => (
            scalar(&b["context"]).unwrap_or_else(|| ".".into()),
            scalar(&b["dockerfile"]).unwrap_or_else(|| "Dockerfile".into()),
        ),
        other => panic!("kmirror: expected `build:`, found {other:?}"),
    };
    let dockerfile_path = root.join(&context).join(&dockerfile_name);
    assert!(
        dockerfile_path.is_file(),
        "kmirror build context {context:?} has no {dockerfile_name}"
    );
    let stage = final_stage(&read(&dockerfile_path));
    let last = |ins: &str| {
        stage
            .iter()
            .rev()
            .find(|(i, _)| i == ins)
            .map(|(_, a)| a.clone())
            .unwrap_or_else(|| panic!("Dockerfile: no {ins} in the final stage"))
    };

    // kmirror starts after both clusters (list or mapping form).
    let depends: Vec<String> = match &kmirror["depends_on"] {
        Yaml::Array(a) => a.iter().filter_map(scalar).collect(),
        Yaml::Hash(h) => h.keys().filter_map(scalar).collect(),
        _ => Vec::new(),
    };
    for kafka in ["kafka-east", "kafka-west"] {
        assert!(
            depends.iter().any(|d| d == kafka),
            "kmirror does not depend_on {kafka}: {depends:?}"
        );
    }

    // The config kmirror reads: `command:` in compose, else the image's CMD.
    let cmd: Vec<String> = match &kmirror["command"] {
        Yaml::Array(a) => a.iter().map(|x| scalar(x).unwrap()).collect(),
        Yaml::String(s) => s.split_whitespace().map(String::from).collect(),
        _ => serde_json::from_str(&last("CMD")).expect("Dockerfile CMD must be a JSON array"),
    };
    let config_in_container = cmd
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| cmd.get(i + 1))
        .unwrap_or_else(|| panic!("kmirror command {cmd:?} has no --config"))
        .clone();
    let config_path = host_for("kmirror", &config_in_container);
    let config = kmirror::config::load(&config_path).unwrap_or_else(|e| panic!("{e}"));

    // Its bootstrap servers are the Kafka services, at an advertised listener.
    for (role, cluster, service) in [
        ("source", &config.source, "kafka-east"),
        ("target", &config.target, "kafka-west"),
    ] {
        for addr in cluster.bootstrap_servers.split(',') {
            let (host, port) = host_port(addr);
            assert_eq!(
                host,
                service,
                "{}: {role} bootstrap {addr:?} should name the compose service {service}",
                config_path.display()
            );
            let env = environment(&services[service]);
            let advertised = env
                .get("KAFKA_ADVERTISED_LISTENERS")
                .unwrap_or_else(|| panic!("{service}: no KAFKA_ADVERTISED_LISTENERS"));
            assert!(
                advertised
                    .split(',')
                    .any(|l| l.ends_with(&format!("://{host}:{port}"))),
                "{service} does not advertise {host}:{port} (KAFKA_ADVERTISED_LISTENERS={advertised})"
            );
        }
    }

    // Its metrics port is the one compose publishes, Prometheus scrapes and
    // the image exposes; and it listens on all interfaces.
    let (listen_host, port) = host_port(&config.http.listen);
    assert!(
        listen_host == "0.0.0.0" || listen_host == "::",
        "{}: http.listen {:?} is not reachable from other containers",
        config_path.display(),
        config.http.listen
    );
    let published = published_container_ports(kmirror);
    assert!(
        published.contains(&port),
        "kmirror listens on {port} but compose publishes container ports {published:?}"
    );

    let prometheus_yml = load_yaml(&host_for("prometheus", "/etc/prometheus/prometheus.yml"));
    let targets: Vec<String> = items(&prometheus_yml["scrape_configs"])
        .iter()
        .flat_map(|sc| items(&sc["static_configs"]).iter())
        .flat_map(|st| items(&st["targets"]).iter())
        .filter_map(scalar)
        .collect();
    assert!(
        targets.contains(&format!("kmirror:{port}")),
        "prometheus.yml scrapes {targets:?}, not kmirror:{port}"
    );

    let exposed: Vec<String> = stage
        .iter()
        .filter(|(i, _)| i == "EXPOSE")
        .flat_map(|(_, a)| {
            a.split_whitespace()
                .map(|p| p.split('/').next().unwrap().to_string())
        })
        .collect();
    assert!(
        exposed.contains(&port.to_string()),
        "Dockerfile EXPOSEs {exposed:?}, not {port}"
    );
    let user = last("USER");
    let user_name = user.split(':').next().unwrap();
    assert!(
        user_name != "root" && user_name != "0",
        "Dockerfile runs as root (USER {user})"
    );

    // Grafana: the datasource is the Prometheus service, and the dashboard
    // provider reads where ./dashboards is mounted.
    let provisioning = host_for("grafana", "/etc/grafana/provisioning");
    let dashboards_mount = all_mounts["grafana"]
        .iter()
        .find(|m| m.host.trim_end_matches('/') == "./dashboards")
        .expect("grafana does not mount ./dashboards");
    let mut provider_paths = Vec::new();
    for entry in std::fs::read_dir(provisioning.join("dashboards")).unwrap() {
        let p = entry.unwrap().path();
        if matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml")) {
            for prov in items(&load_yaml(&p)["providers"]) {
                provider_paths.extend(scalar(&prov["options"]["path"]));
            }
        }
    }
    assert!(
        provider_paths
            .iter()
            .any(|p| p.trim_end_matches('/') == dashboards_mount.container.trim_end_matches('/')),
        "grafana dashboard providers read {provider_paths:?}, but ./dashboards is mounted at {}",
        dashboards_mount.container
    );
    let ds = load_yaml(&provisioning.join("datasources/prometheus.yml"));
    let prom_port = published_container_ports(&services["prometheus"])
        .into_iter()
        .next()
        .expect("prometheus publishes no port");
    assert!(
        items(&ds["datasources"]).iter().any(|d| {
            scalar(&d["type"]).as_deref() == Some("prometheus")
                && scalar(&d["url"]) == Some(format!("http://prometheus:{prom_port}"))
        }),
        "no Grafana datasource of type prometheus at http://prometheus:{prom_port}"
    );
}

/// Every `expr` of every panel target, nested panels included.
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(serde_json::Value::Array(ts)) = m.get("targets") {
                out.extend(
                    ts.iter()
                        .filter_map(|t| t.get("expr").and_then(|e| e.as_str()).map(String::from)),
                );
            }
            m.values().for_each(|x| exprs(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

/// Metric names (histograms by their base name) queried by an expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"kmirror_[a-z_]+").unwrap();
    re.find_iter(expr).map(|m| base_name(m.as_str())).collect()
}

/// A metric's name without a histogram's `_bucket`/`_sum`/`_count`.
fn base_name(n: &str) -> String {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| n.strip_suffix(s))
        .unwrap_or(n)
        .to_string()
}

/// The metric names that have at least one sample in a Prometheus text
/// exposition (a histogram counts by its base name).
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(base_name)
        .collect()
}

/// (area, metric) pairs: the dashboard needs a panel on each.
const AREAS: &[(&str, &str)] = &[
    ("throughput records/s", "kmirror_records_total"),
    ("bytes/s", "kmirror_bytes_total"),
    ("replication latency", "kmirror_replication_latency_seconds"),
    ("record age", "kmirror_record_age_seconds"),
    ("lag per topic", "kmirror_lag_records"),
    ("checkpoints/s", "kmirror_checkpoints_total"),
    ("checkpoint latency", "kmirror_checkpoint_latency_seconds"),
    ("offset syncs", "kmirror_offset_syncs_total"),
    (
        "config-sync operations",
        "kmirror_config_sync_operations_total",
    ),
    ("errors by stage", "kmirror_errors_total"),
    ("paused partitions", "kmirror_partitions_paused"),
    ("partitions assigned", "kmirror_partitions_assigned"),
    ("producer queue", "kmirror_producer_queue_records"),
    ("heartbeats", "kmirror_heartbeats_total"),
    ("build info", "kmirror_build_info"),
];

/// Metrics with a `topic` label; and those without a `flow` label.
const WITH_TOPIC: &[&str] = &[
    "kmirror_records_total",
    "kmirror_bytes_total",
    "kmirror_replication_latency_seconds",
    "kmirror_record_age_seconds",
    "kmirror_lag_records",
];
const WITHOUT_FLOW: &[&str] = &["kmirror_heartbeats_total", "kmirror_build_info"];

#[test]
fn dashboard_metrics_are_all_exported() {
    // Static checks of the dashboard.
    let path = repo().join("dashboards/kmirror.json");
    let dash: serde_json::Value = serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{}: invalid JSON: {e}", path.display()));
    assert_eq!(dash["uid"], "kmirror");
    assert_eq!(dash["title"], "kmirror");
    let vars: BTreeMap<&str, &serde_json::Value> = dash["templating"]["list"]
        .as_array()
        .expect("no templating variables")
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    assert_eq!(vars["datasource"]["type"], "datasource");
    assert_eq!(vars["datasource"]["query"], "prometheus");
    for v in ["flow", "topic"] {
        assert_eq!(vars[v]["multi"], true, "variable {v}");
        assert_eq!(vars[v]["includeAll"], true, "variable {v}");
    }

    let mut all_exprs = Vec::new();
    exprs(&dash["panels"], &mut all_exprs);
    assert!(!all_exprs.is_empty(), "the dashboard has no queries");
    let mut names = BTreeSet::new();
    for e in &all_exprs {
        for n in metric_names(e) {
            if !WITHOUT_FLOW.contains(&n.as_str()) {
                assert!(e.contains(r#"flow=~"$flow""#), "not filtered by $flow: {e}");
            }
            if WITH_TOPIC.contains(&n.as_str()) {
                assert!(
                    e.contains(r#"topic=~"$topic""#),
                    "not filtered by $topic: {e}"
                );
            }
            names.insert(n);
        }
    }
    for (area, metric) in AREAS {
        assert!(names.contains(*metric), "no panel for {area} ({metric})");
    }
    assert!(
        all_exprs
            .iter()
            .any(|e| e.contains("kmirror_config_sync_operations_total")
                && e.contains(r#"result="error""#)),
        "no panel for config-sync failures (result=\"error\")"
    );

    // Every queried metric is exported by a running kmirror.
    let source = Broker::start(&unique("pkg-src"));
    let target = Broker::start(&unique("pkg-dst"));
    let topic = unique("pkg");
    source.create_topic(&topic, 2, &[]);
    source.produce(&topic, &numbered(0, 200, 2));
    // A consumer group with committed offsets, so there is something to checkpoint.
    let group = unique("pkg-group");
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition_offset(&topic, p, Offset::Offset(50))
            .unwrap();
    }
    source
        .consumer(Some(&group))
        .commit(&tpl, CommitMode::Sync)
        .expect("commit group offsets");

    let dir = tempfile::tempdir().unwrap();
    let addr = http_listen();
    let cfg = write_config(
        dir.path(),
        &source,
        &target,
        &detailed(&flow_toml(&addr, &topic, "")),
    );
    let k = KmirrorProc::start(&cfg, &dir.path().join("kmirror.log"));
    let metrics = || {
        http_get(&addr, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    };
    let topic_label = format!("topic=\"{topic}\"");
    wait_until(Duration::from_secs(60), || {
        metrics()
            .lines()
            .any(|l| l.starts_with("kmirror_records_total{") && l.contains(&topic_label))
    });

    // Some series appear only after their first event (a checkpoint run, a
    // heartbeat): give them a few intervals.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (text, missing) = loop {
        let text = metrics();
        let have = exported(&text);
        let missing: Vec<&String> = names.iter().filter(|n| !have.contains(*n)).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break (text, missing);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let log = k.log_text();
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics that kmirror does not export: {missing:?}\n\
         /metrics exports: {:?}\n/metrics:\n{text}\nkmirror log tail:\n{}",
        exported(&text),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
}
