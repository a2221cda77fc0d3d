//! Prometheus metrics (one struct owning its registry) and the HTTP
//! endpoints `/metrics`, `/healthz`, `/readyz`.
//!
//! Cardinality: `partition` appears only on the per-partition series
//! (`kmirror_records_total`, `kmirror_bytes_total`, `kmirror_lag_records`),
//! so a process mirroring P partitions exports about 3·P such series;
//! everything else is per flow, topic, group or stage.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio_util::sync::CancellationToken;

/// Buckets from 1 ms to 60 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Every metric kmirror exports.
pub struct Metrics {
    registry: Registry,
    /// Records mirrored (acknowledged by the target).
    pub records: IntCounterVec,
    /// Bytes mirrored (key + value + headers).
    pub bytes: IntCounterVec,
    /// Target acknowledgement time minus source record timestamp.
    pub replication_latency: HistogramVec,
    /// Consume time minus source record timestamp.
    pub record_age: HistogramVec,
    /// Source high watermark minus mirrored position.
    pub lag: IntGaugeVec,
    /// Age of the oldest record not yet mirrored (0 when caught up).
    pub lag_seconds: GaugeVec,
    /// Wall clock of the last successful checkpoint run, per flow.
    pub checkpoint_last_success: GaugeVec,
    /// 1 when `/readyz` would answer 200 (set at each scrape).
    pub ready: IntGauge,
    /// [`crate::config::MetricsLevel`] as a number (0 flow, 1 topic, 2
    /// partition).
    level: std::sync::atomic::AtomicU8,
    /// Time the flow waited for its bandwidth limit.
    pub throttled: prometheus::CounterVec,
    /// Checkpoint records written, per group.
    pub checkpoints: IntCounterVec,
    /// Duration of one checkpoint run.
    pub checkpoint_latency: HistogramVec,
    /// Offset-sync points written.
    pub offset_syncs: IntCounterVec,
    /// Committed offsets that could not be translated (yet).
    pub translation_misses: IntCounterVec,
    /// Group offset syncs on the target, by result.
    pub group_offset_syncs: IntCounterVec,
    /// Config-sync operations by op and result.
    pub config_sync_ops: IntCounterVec,
    /// Errors by stage.
    pub errors: IntCounterVec,
    /// Heartbeat records written.
    pub heartbeats: IntCounter,
    /// Build information.
    pub build_info: IntGaugeVec,
    /// Source partitions assigned to this process.
    pub partitions_assigned: IntGaugeVec,
    /// Partitions whose consumption is paused, by reason.
    pub partitions_paused: IntGaugeVec,
    /// Records handed to the target producer and not yet acknowledged.
    pub producer_queue: IntGaugeVec,
    /// Topics mirrored by each flow.
    pub topics_mirrored: IntGaugeVec,
    /// librdkafka: messages in the client's queues.
    pub client_queue: IntGaugeVec,
    /// librdkafka: 1 when the connection to a broker is up.
    pub broker_up: IntGaugeVec,
    /// Replication flows restarted with fresh clients, by reason (fatal: a
    /// fatal producer error; purged: a drain timed out and queued records
    /// were purged; error: the flow failed and is retried).
    pub flow_restarts: IntCounterVec,
    /// librdkafka: average broker round-trip time.
    pub broker_rtt: prometheus::GaugeVec,
    /// Configuration reloads by result (applied, unchanged, invalid,
    /// failed).
    pub config_reloads: IntCounterVec,
    /// 1 while this process leads the flow's control loops.
    pub leader: IntGaugeVec,
    /// 1 when the cluster answered kmirror's last metadata request.
    pub cluster_up: IntGaugeVec,
    /// Failed metadata requests to a cluster, by cause (authentication,
    /// sasl_mechanism, tls_certificate, tls_handshake, closed_at_once,
    /// unreachable).
    pub cluster_errors: IntCounterVec,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn float_gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let r = Registry::new();
        let ftp = &["flow", "topic", "partition"];
        let m = Self {
            records: counter(&r, "kmirror_records_total", "Records mirrored (acknowledged by the target).", ftp),
            bytes: counter(&r, "kmirror_bytes_total", "Bytes mirrored: key + value + headers of acknowledged records.", ftp),
            replication_latency: histogram(&r, "kmirror_replication_latency_seconds", "Target acknowledgement time minus the source record timestamp.", &["flow", "topic"]),
            record_age: histogram(&r, "kmirror_record_age_seconds", "Consume time minus the source record timestamp.", &["flow", "topic"]),
            lag: gauge(&r, "kmirror_lag_records", "Source high watermark minus the mirrored (acknowledged) position.", ftp),
            lag_seconds: float_gauge(&r, "kmirror_lag_seconds", "Age of the oldest source record not yet mirrored, in seconds (0 when caught up): the smaller of now minus the last mirrored record's timestamp and the time since the partition was last seen caught up (refreshed every 5 s).", ftp),
            checkpoint_last_success: float_gauge(&r, "kmirror_checkpoint_last_success_timestamp_seconds", "Unix time of the last checkpoint run that succeeded (leader only; stale on the other processes).", &["flow"]),
            ready: {
                let g = IntGauge::new("kmirror_ready", "1 when /readyz answers 200 (both clusters reachable, partitions assigned, none stopped or unresolved); set at each scrape.").expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            throttled: {
                let c = prometheus::CounterVec::new(Opts::new("kmirror_throttled_seconds_total", "Time the flow's consume loop waited for its bandwidth limit (max_bytes_per_second of the flow or of [runtime])."), &["flow"]).expect("valid metric");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            checkpoints: counter(&r, "kmirror_checkpoints_total", "Checkpoint records written to <source>.checkpoints.internal.", &["flow", "group"]),
            checkpoint_latency: histogram(&r, "kmirror_checkpoint_latency_seconds", "Duration of one checkpoint run.", &["flow"]),
            offset_syncs: counter(&r, "kmirror_offset_syncs_total", "Offset-sync points written to kmirror-offset-syncs.<source>.internal.", &["flow"]),
            translation_misses: counter(&r, "kmirror_translation_misses_total", "Committed source offsets with no exact translation yet (beyond what is mirrored, or before the offset-sync history); no checkpoint is written for them.", &["flow"]),
            group_offset_syncs: counter(&r, "kmirror_group_offset_syncs_total", "sync_group_offsets: commits of translated offsets to target groups, by result (ok, skipped_active, error).", &["flow", "result"]),
            config_sync_ops: counter(&r, "kmirror_config_sync_operations_total", "Config-sync operations on the target, by operation and result.", &["flow", "op", "result"]),
            errors: counter(&r, "kmirror_errors_total", "Errors by stage: produce (refused record), consume, source_client, target_client, partition_mismatch, discovery, config_sync, offset_sync, checkpoint, eos_resume, foreign_writer, flow_overlap, heartbeat (flow=\"\").", &["flow", "stage"]),
            heartbeats: {
                let c = IntCounter::new("kmirror_heartbeats_total", "Heartbeat records written to `heartbeats` on the target.").expect("valid metric");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            build_info: gauge(&r, "kmirror_build_info", "Always 1; the version label names the build.", &["version"]),
            partitions_assigned: gauge(&r, "kmirror_partitions_assigned", "Source partitions assigned to this process.", &["flow"]),
            partitions_paused: gauge(&r, "kmirror_partitions_paused", "Partitions not being consumed, by reason (stopped: refused record; held: target lacks the partition; unresolved: exactly-once resume position not derived yet; backpressure).", &["flow", "reason"]),
            producer_queue: gauge(&r, "kmirror_producer_queue_records", "Records handed to the target producer and not yet acknowledged.", &["flow"]),
            topics_mirrored: gauge(&r, "kmirror_topics_mirrored", "Source topics currently mirrored by the flow.", &["flow"]),
            client_queue: gauge(&r, "kmirror_client_queue_messages", "librdkafka statistics: messages waiting in the client's queues (producer: not yet acknowledged; consumer: fetched, not yet handed over).", &["flow", "client"]),
            leader: gauge(&r, "kmirror_leader", "1 while this process leads the flow's control loops (config sync, checkpoints, group offset sync; heartbeats for the first flow), elected through the group kmirror-leader.<source>.<target>.<flow> on the target.", &["flow"]),
            config_reloads: counter(&r, "kmirror_config_reloads_total", "Configuration reloads (SIGHUP, run --watch) by result: applied, unchanged, invalid (refused, the running configuration goes on), failed (a flow could not start).", &["result"]),
            cluster_up: gauge(&r, "kmirror_cluster_up", "1 when the cluster (source or target) answered kmirror's last metadata request.", &["cluster", "alias"]),
            cluster_errors: counter(&r, "kmirror_cluster_errors_total", "Failed metadata requests to a cluster by cause: authentication, sasl_mechanism, tls_certificate, tls_handshake, closed_at_once, unreachable.", &["cluster", "cause"]),
            broker_up: gauge(&r, "kmirror_broker_up", "librdkafka statistics: 1 when the client's connection to the broker is UP.", &["flow", "client", "broker"]),
            flow_restarts: counter(&r, "kmirror_flow_restarts_total", "Replication flows restarted with fresh clients, by reason (fatal: fatal producer error; purged: a drain timed out or partitions were lost, and queued records were purged; timed_out: exactly-once records not acknowledged within the session timeout; frozen: the consume loop stalled past half the session timeout; error: the flow failed and is retried).", &["flow", "reason"]),
            broker_rtt: {
                let g = prometheus::GaugeVec::new(Opts::new("kmirror_broker_rtt_seconds", "librdkafka statistics: average request round-trip time to the broker over the last statistics interval."), &["flow", "client", "broker"]).expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            registry: r,
            level: std::sync::atomic::AtomicU8::new(0),
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m.heartbeats.inc_by(0);
        m
    }

    /// Sets how fine the data-path series are (`[http] metrics_level`).
    pub fn set_level(&self, level: crate::config::MetricsLevel) {
        use crate::config::MetricsLevel as L;
        let n = match level {
            L::Flow => 0,
            L::Topic => 1,
            L::Partition => 2,
        };
        self.level.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// The `topic` label value at this level ("" at flow level).
    pub fn topic_label<'a>(&self, topic: &'a str) -> &'a str {
        if self.level.load(std::sync::atomic::Ordering::Relaxed) >= 1 {
            topic
        } else {
            ""
        }
    }

    /// The `partition` label value at this level ("" below partition).
    pub fn partition_label(&self, partition: i32) -> String {
        if self.per_partition() {
            partition.to_string()
        } else {
            String::new()
        }
    }

    /// True at partition level.
    pub fn per_partition(&self) -> bool {
        self.level.load(std::sync::atomic::Ordering::Relaxed) >= 2
    }

    /// Creates the label sets a flow always exports, so that dashboards see
    /// every series from the start (at zero).
    pub fn init_flow(&self, flow: &str) {
        for stage in [
            "produce",
            "consume",
            "partition_mismatch",
            "discovery",
            "offset_sync",
        ] {
            self.errors.with_label_values(&[flow, stage]);
        }
        for reason in ["stopped", "held", "unresolved", "backpressure"] {
            self.partitions_paused.with_label_values(&[flow, reason]);
        }
        for reason in ["fatal", "purged", "timed_out", "frozen", "error"] {
            self.flow_restarts.with_label_values(&[flow, reason]);
        }
        self.partitions_assigned.with_label_values(&[flow]);
        self.throttled.with_label_values(&[flow]);
        self.producer_queue.with_label_values(&[flow]);
        self.offset_syncs.with_label_values(&[flow]);
        self.topics_mirrored.with_label_values(&[flow]);
        self.checkpoint_latency.with_label_values(&[flow]);
        self.translation_misses.with_label_values(&[flow]);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

/// Records the figures operators use from one librdkafka statistics JSON
/// (`statistics.interval.ms`): queue depth, broker state and round trip.
pub fn record_client_stats(m: &Metrics, flow: &str, client: &str, json: &[u8]) {
    #[derive(serde::Deserialize)]
    struct Stats {
        #[serde(default)]
        msg_cnt: i64,
        #[serde(default)]
        brokers: std::collections::HashMap<String, Broker>,
    }
    #[derive(serde::Deserialize)]
    struct Broker {
        #[serde(default)]
        state: String,
        #[serde(default)]
        rtt: Option<Window>,
    }
    #[derive(serde::Deserialize)]
    struct Window {
        #[serde(default)]
        avg: i64,
    }
    let Ok(s) = serde_json::from_slice::<Stats>(json) else {
        return;
    };
    m.client_queue
        .with_label_values(&[flow, client])
        .set(s.msg_cnt);
    for (name, b) in s.brokers {
        if name.ends_with("/bootstrap") {
            continue; // the bootstrap placeholder, not a broker
        }
        let broker = name.split('/').next().unwrap_or(&name);
        m.broker_up
            .with_label_values(&[flow, client, broker])
            .set(i64::from(b.state == "UP"));
        if let Some(w) = b.rtt {
            m.broker_rtt
                .with_label_values(&[flow, client, broker])
                .set(w.avg as f64 / 1_000_000.0);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Readiness of the process: what `/readyz` reports.
#[derive(Default)]
pub struct Health {
    state: Mutex<HealthState>,
}

#[derive(Default)]
struct HealthState {
    /// cluster role -> reachable, or why not
    clusters: BTreeMap<String, Result<(), String>>,
    /// flow -> (has partitions assigned, stopped partitions)
    flows: BTreeMap<String, (bool, usize)>,
    /// flow -> partitions held until their exactly-once position is derived
    unresolved: BTreeMap<String, usize>,
    /// flow -> this process leads its control loops
    leader: BTreeMap<String, bool>,
}

impl Health {
    /// Records whether a cluster ("source"/"target") answered lately, or
    /// why not (the text names the cluster; never a secret).
    pub fn set_cluster(&self, role: &str, state: Result<(), String>) {
        if let Ok(mut s) = self.state.lock() {
            s.clusters.insert(role.to_string(), state);
        }
    }

    /// Records a flow's assignment and stopped-partition count.
    pub fn set_flow(&self, flow: &str, assigned: bool, stopped: usize) {
        if let Ok(mut s) = self.state.lock() {
            s.flows.insert(flow.to_string(), (assigned, stopped));
        }
    }

    /// Records how many partitions of a flow wait for their exactly-once
    /// resume position (held, not consumed).
    pub fn set_unresolved(&self, flow: &str, n: usize) {
        if let Ok(mut s) = self.state.lock() {
            s.unresolved.insert(flow.to_string(), n);
        }
    }

    /// Registers a flow as not yet assigned.
    pub fn add_flow(&self, flow: &str) {
        self.set_flow(flow, false, 0);
    }

    /// Records whether this process leads a flow's control loops (shown
    /// by `/readyz`; not a readiness condition).
    pub fn set_leader(&self, flow: &str, leads: bool) {
        if let Ok(mut s) = self.state.lock() {
            s.leader.insert(flow.to_string(), leads);
        }
    }

    /// Per flow: whether this process leads its control loops.
    pub fn leader(&self) -> BTreeMap<String, bool> {
        self.state
            .lock()
            .map(|s| s.leader.clone())
            .unwrap_or_default()
    }

    /// Forgets a flow (removed by a reload).
    pub fn remove_flow(&self, flow: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.flows.remove(flow);
            s.unresolved.remove(flow);
            s.leader.remove(flow);
        }
    }

    /// `Ok` when ready, else the reasons.
    pub fn ready(&self) -> Result<(), Vec<String>> {
        let s = match self.state.lock() {
            Ok(s) => s,
            Err(_) => return Err(vec!["health state poisoned".into()]),
        };
        let mut why = Vec::new();
        for role in ["source", "target"] {
            match s.clusters.get(role) {
                Some(Ok(())) => {}
                Some(Err(e)) => why.push(format!("unreachable: {e}")),
                None => why.push(format!("{role} cluster not checked yet")),
            }
        }
        for (flow, (assigned, stopped)) in &s.flows {
            if !assigned {
                why.push(format!("flow {flow}: no partitions assigned"));
            }
            if *stopped > 0 {
                why.push(format!(
                    "flow {flow}: {stopped} partition(s) stopped by an error"
                ));
            }
        }
        for (flow, n) in &s.unresolved {
            if *n > 0 {
                why.push(format!(
                    "flow {flow}: {n} partition(s) held: exactly-once resume position not derived yet (target unreadable?)"
                ));
            }
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why)
        }
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    s.metrics.ready.set(s.health.ready().is_ok() as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let leader = s.health.leader();
    match s.health.ready() {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({"ready": true, "leader": leader}).to_string(),
        ),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({"ready": false, "leader": leader, "reasons": why}).to_string(),
        ),
    }
}

/// Binds the HTTP server (errors if the address is taken) and serves it
/// until `shutdown` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "HTTP server failed");
        }
    }))
}
