//! Wiring of `kmirror run`: HTTP server, internal topics, discovery, one
//! replicator per flow, heartbeats, all under one cancellation token.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::admin::AdminClient;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::config_sync::sync::ConfigSync;
use crate::discovery::{self, Discovery, FlowRules, MirrorSet};
use crate::flow::{offset_syncs_topic, Replicator};
use crate::kafka::{self, KContext, Role};
use crate::metrics::{self, Health, Metrics};
use crate::offsets::codec::Heartbeat;

/// Name of the heartbeats topic on the target.
pub const HEARTBEATS_TOPIC: &str = "heartbeats";

/// Creates the internal topics kmirror writes on the target, retrying
/// until it works or `shutdown`.
async fn ensure_internal_topics(
    config: &Config,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let admin: AdminClient<KContext> = kafka::create(
        &kafka::client_config(&config.target, Role::Admin, "kmirror-admin"),
        KContext::default(),
    )?;
    // The offset-sync topic is never compacted: its key is MM2's
    // (topic, partition), so compaction would keep one point per partition
    // and lose the history that exact translation needs.
    let topics = [
        (HEARTBEATS_TOPIC.to_string(), "compact"),
        (offset_syncs_topic(&config.source.alias), "delete"),
        (
            crate::config_sync::sync::managed_topic(&config.source.alias),
            "compact",
        ),
        (
            crate::offsets::checkpoint::checkpoints_topic(&config.source.alias),
            "compact",
        ),
    ];
    let mut delay = Duration::from_millis(500);
    loop {
        let mut failed = None;
        for (t, policy) in &topics {
            let configs = [("cleanup.policy", *policy)];
            if let Err(e) = discovery::create_topic(&admin, t, 1, -1, &configs)
                .await
                .map(|_| ())
            {
                failed = Some(format!("{t}: {e}"));
            }
        }
        match failed {
            None => return Ok(()),
            Some(e) => {
                warn!(error = %e, retry_in = ?delay, "cannot create kmirror's internal topics on the target yet");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

async fn heartbeats(
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let every = config
        .flows
        .iter()
        .map(|f| f.heartbeat_interval)
        .min()
        .unwrap_or(Duration::from_secs(1));
    let mut cfg = kafka::client_config(&config.target, Role::Producer, "kmirror-heartbeats");
    kafka::apply_producer_owned(&mut cfg, "none", &config.runtime);
    cfg.set("message.timeout.ms", "30000");
    let producer = kafka::Polled::create(&cfg, KContext::default())?;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let hb = Heartbeat {
            source: config.source.alias.clone(),
            target: config.target.alias.clone(),
            timestamp_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
        };
        let (k, v) = (hb.key(), hb.value());
        let sent = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = kafka::send_acked(&producer, HEARTBEATS_TOPIC, 0, &k, &v, Some(hb.timestamp_ms), Duration::from_secs(5)) => r,
        };
        match sent {
            Ok(()) => metrics.heartbeats.inc(),
            Err(e) => {
                metrics.errors.with_label_values(&["", "heartbeat"]).inc();
                warn!(error = %e, "heartbeat not written");
            }
        }
    }
}

/// Runs kmirror until `shutdown` is cancelled (or a task fails, which
/// cancels it). Returns an error naming the failed task.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with(
        config,
        shutdown,
        Arc::new(Metrics::new()),
        Arc::new(Health::default()),
    )
    .await
}

/// Like [`run`], with metrics and health owned by the caller.
pub async fn run_with(
    config: Config,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    if !config.http.listen.is_empty() {
        let addr = config.http.listen.parse()?;
        metrics::serve(addr, metrics.clone(), health.clone(), shutdown.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ([http] listen): {e}"))?;
        info!(%addr, "serving /metrics, /healthz, /readyz");
    }
    for (role, cl) in [("source", &config.source), ("target", &config.target)] {
        let off = cl.tls_verification_off();
        if !off.is_empty() {
            warn!(cluster = role, alias = %cl.alias, properties = %off.join(", "), "TLS certificate verification is OFF for this cluster: anyone on the path can impersonate its brokers and read or alter mirrored records and credentials");
        }
    }
    ensure_internal_topics(&config, &shutdown).await?;

    let mut tasks: Vec<(String, JoinHandle<anyhow::Result<()>>)> = Vec::new();
    let mut flows = Vec::new();
    let refresh = Arc::new(tokio::sync::Notify::new());
    for f in &config.flows {
        let rules = FlowRules::new(f).map_err(|e| anyhow::anyhow!("flow {}: {e}", f.name))?;
        let (tx, rx) = watch::channel(Arc::new(MirrorSet::new()));
        flows.push((f.clone(), rules, tx));
        let sync = ConfigSync {
            flow: f.clone(),
            source: config.source.clone(),
            target: config.target.clone(),
            metrics: metrics.clone(),
            mirror: rx.clone(),
            refresh: refresh.clone(),
        };
        tasks.push((
            format!("config sync {}", f.name),
            tokio::spawn(sync.run(shutdown.clone())),
        ));
        let cp = crate::offsets::checkpoint::Checkpointer {
            flow: f.clone(),
            source: config.source.clone(),
            target: config.target.clone(),
            metrics: metrics.clone(),
            mirror: rx.clone(),
        };
        tasks.push((
            format!("checkpoints {}", f.name),
            tokio::spawn(cp.run(shutdown.clone())),
        ));
        health.add_flow(&f.name);
        let rep = Replicator {
            flow: f.clone(),
            source: config.source.clone(),
            target: config.target.clone(),
            runtime: config.runtime.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
            mirror: rx,
        };
        let token = shutdown.clone();
        tasks.push((
            format!("flow {}", f.name),
            tokio::task::spawn_blocking(move || rep.run(token)),
        ));
    }
    let disc = Discovery {
        source: config.source.clone(),
        target: config.target.clone(),
        flows,
        metrics: metrics.clone(),
        health: health.clone(),
        refresh,
    };
    tasks.push(("discovery".into(), tokio::spawn(disc.run(shutdown.clone()))));
    tasks.push((
        "heartbeats".into(),
        tokio::spawn(heartbeats(
            config.clone(),
            metrics.clone(),
            shutdown.clone(),
        )),
    ));

    supervise(tasks, shutdown, config.runtime.shutdown_timeout).await
}

/// Waits for the tasks: the first that fails cancels the others; after a
/// cancellation, tasks get `deadline` to finish before they are named and
/// abandoned.
async fn supervise(
    tasks: Vec<(String, JoinHandle<anyhow::Result<()>>)>,
    shutdown: CancellationToken,
    deadline: Duration,
) -> anyhow::Result<()> {
    use futures::stream::{FuturesUnordered, StreamExt};
    let mut first_error: Option<anyhow::Error> = None;
    let mut running: Vec<String> = tasks.iter().map(|(n, _)| n.clone()).collect();
    let mut set: FuturesUnordered<_> = tasks
        .into_iter()
        .map(|(name, h)| async move { (name, h.await) })
        .collect();
    let mut cancel_at: Option<tokio::time::Instant> = None;
    loop {
        let deadline_passed = async {
            match cancel_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => futures::future::pending::<()>().await,
            }
        };
        tokio::select! {
            next = set.next() => {
                let Some((name, r)) = next else { break };
                running.retain(|n| *n != name);
                let failure = match r {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.context(format!("task {name} failed"))),
                    Err(e) => Some(anyhow::anyhow!("task {name} panicked: {e}")),
                };
                if let Some(e) = failure {
                    error!(error = format!("{e:#}"), "stopping kmirror");
                    first_error.get_or_insert(e);
                    shutdown.cancel();
                }
            }
            _ = shutdown.cancelled(), if cancel_at.is_none() => {
                cancel_at = Some(tokio::time::Instant::now() + deadline);
            }
            _ = deadline_passed => {
                error!(tasks = ?running, "shutdown deadline passed; abandoning the tasks still running");
                return Err(first_error.unwrap_or_else(|| {
                    anyhow::anyhow!("shutdown deadline passed with {running:?} still running")
                }));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
