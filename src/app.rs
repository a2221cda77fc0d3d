//! Wiring of `kmirror run`: HTTP server, internal topics, discovery, one
//! replicator per flow, heartbeats, all under one cancellation token.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::admin::AdminClient;
use rdkafka::consumer::Consumer;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{Config, FlowConfig};
use crate::config_sync::sync::ConfigSync;
use crate::discovery::{self, Discovery, FlowRules, MirrorSet};
use crate::flow::Replicator;
use crate::kafka::{self, KContext, Role};
use crate::metrics::{self, Health, Metrics};
use crate::offsets::codec::Heartbeat;
use crate::offsets::offset_syncs_topic;

/// Name of the heartbeats topic on the target.
pub const HEARTBEATS_TOPIC: &str = "heartbeats";

/// How long a reload waits for kmirror's internal topics on the target
/// before it starts the flows anyway (and goes back to reading reloads).
const RELOAD_TOPICS_WAIT: Duration = Duration::from_secs(30);

/// One try at creating kmirror's internal topics (those that exist are
/// kept): the first refusal, in words.
async fn create_internal_topics(
    admin: &AdminClient<KContext>,
    topics: &[(String, &str)],
) -> Result<(), String> {
    for (t, policy) in topics {
        let mut configs = vec![("cleanup.policy", *policy)];
        if *policy == "delete" {
            configs.push(("retention.ms", crate::offsets::SYNC_RETENTION_MS));
        }
        if let Err(e) = discovery::create_topic(admin, t, 1, -1, &configs).await {
            return Err(format!("cannot create kmirror's internal topic {t}: {e}"));
        }
    }
    Ok(())
}

/// Creates the internal topics kmirror writes on the target, retrying
/// with backoff until it works, `shutdown`, or `limit` (true once they
/// exist). A target that refuses kmirror (TLS, SASL) or cannot be reached
/// shows on `/readyz` and in `kmirror_cluster_up` /
/// `kmirror_cluster_errors_total{cause}`, with one WARN per state that
/// names the cluster and the cause in words. A target that answers but
/// refuses the topics (ACL, topic policy) shows on `/readyz`, with one
/// WARN.
async fn ensure_internal_topics(
    config: &Config,
    health: &Health,
    metrics: &Metrics,
    shutdown: &CancellationToken,
    limit: Option<Duration>,
) -> anyhow::Result<bool> {
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
        (crate::leader::leader_topic(&config.source.alias), "compact"),
    ];
    // Asked first, with a short timeout: a refusal (TLS, SASL) shows in
    // words at once, where a CreateTopics request would wait for its whole
    // operation timeout and say only that it timed out.
    let probe = Arc::new(kafka::reader(&config.target, "kmirror-admin")?);
    let deadline = limit.map(|l| tokio::time::Instant::now() + l);
    let mut reported = std::collections::HashSet::new();
    let mut delay = Duration::from_millis(500);
    loop {
        let p = probe.clone();
        let answered = tokio::task::spawn_blocking(move || {
            kafka::brokers::answer(p.client(), Duration::from_secs(10))
                .map_err(|e| kafka::failure_of(&p, &e))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        if let Err(text) = answered {
            discovery::cluster_failed(
                health,
                metrics,
                "target",
                &config.target,
                &text,
                "retrying with backoff (nothing is mirrored until kmirror's internal topics exist)",
                &mut reported,
            );
            debug!(error = %text, retry_in = ?delay, "internal topics not created yet");
        } else {
            // The target answers: it is up, whatever CreateTopics says.
            discovery::cluster_ok(health, metrics, "target", &config.target, &mut reported);
            match create_internal_topics(&admin, &topics).await {
                Ok(()) => {
                    if reported.remove("internal_topics") {
                        info!("kmirror's internal topics created on the target");
                    }
                    return Ok(true);
                }
                Err(text) => {
                    // Reachable, but refused (ACL, topic policy): /readyz
                    // says so; not counted as a connection error.
                    let why = format!(
                        "target cluster {} at {}: {text}",
                        config.target.alias, config.target.bootstrap_servers
                    );
                    health.set_cluster("target", Err(why.clone()));
                    if reported.insert("internal_topics".into()) {
                        warn!("{why}; retrying with backoff (nothing is mirrored until kmirror's internal topics exist)");
                    }
                    debug!(error = %text, retry_in = ?delay, "internal topics not created yet");
                }
            }
        }
        let mut wait = delay;
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            wait = wait.min(left);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(false),
            _ = tokio::time::sleep(wait) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

async fn heartbeats(
    config: Config,
    metrics: Arc<Metrics>,
    leader: crate::leader::Leader,
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
        if !leader.is_leader() {
            continue;
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
    let (_tx, rx) = mpsc::unbounded_channel();
    run_reloadable(config, None, rx, shutdown, metrics, health).await
}

/// Like [`run_with`]; each message on `reload` re-reads `path` (SIGHUP,
/// `kmirror run --watch`): a file `validate` refuses is refused with the
/// same messages and the running config goes on; otherwise flows added
/// start, flows removed stop cleanly (drain, commit), flows whose settings
/// changed restart alone, unchanged flows are not touched, and a change of
/// `[source]`, `[target]` (secrets read again included) or `[runtime]`
/// restarts every flow with new clients. `kmirror_config_reloads_total`
/// counts the outcomes.
pub async fn run_reloadable(
    config: Config,
    path: Option<PathBuf>,
    mut reload: mpsc::UnboundedReceiver<&'static str>,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    metrics.set_level(config.http.metrics_level);
    if !config.http.listen.is_empty() {
        let addr = config.http.listen.parse()?;
        metrics::serve(addr, metrics.clone(), health.clone(), shutdown.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ([http] listen): {e}"))?;
        info!(%addr, "serving /metrics, /healthz, /readyz");
    }
    warn_tls_off(&config);
    ensure_internal_topics(&config, &health, &metrics, &shutdown, None).await?;
    let mut engine = Engine {
        config: config.clone(),
        metrics,
        health,
        shutdown: shutdown.clone(),
        failed: Arc::new(Mutex::new(None)),
        refresh: Arc::new(tokio::sync::Notify::new()),
        flows: BTreeMap::new(),
        shared: Vec::new(),
        limit: None,
    };
    for f in &config.flows {
        engine.start_flow(f)?;
    }
    engine.start_shared();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            why = reload.recv() => {
                let Some(why) = why else {
                    // No reload source any more: wait for the shutdown.
                    shutdown.cancelled().await;
                    break;
                };
                if let Some(path) = &path {
                    engine.reload(path, why).await;
                }
            }
        }
    }
    engine.finish().await
}

fn warn_tls_off(config: &Config) {
    for (role, cl) in [("source", &config.source), ("target", &config.target)] {
        let off = cl.tls_verification_off();
        if !off.is_empty() {
            warn!(cluster = role, alias = %cl.alias, properties = %off.join(", "), "TLS certificate verification is OFF for this cluster: anyone on the path can impersonate its brokers and read or alter mirrored records and credentials");
        }
    }
}

/// A running task: its name, its own token (a child of the shutdown
/// token) and the handle of the monitor that reports its failure.
struct Task {
    name: String,
    token: CancellationToken,
    handle: JoinHandle<()>,
}

/// A running flow: its mirror-set sender (owned across
/// discovery restarts) and its three tasks.
struct FlowTasks {
    /// Whether this process leads the flow's control loops.
    leader: crate::leader::Leader,
    tx: watch::Sender<Arc<MirrorSet>>,
    tasks: Vec<Task>,
}

/// The running tasks of `kmirror run`.
struct Engine {
    config: Config,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
    /// The first task failure (it cancels `shutdown`).
    failed: Arc<Mutex<Option<anyhow::Error>>>,
    refresh: Arc<tokio::sync::Notify>,
    flows: BTreeMap<String, FlowTasks>,
    /// Discovery and heartbeats.
    shared: Vec<Task>,
    /// `[runtime] max_bytes_per_second` and its bucket, shared by every
    /// flow started under it.
    limit: Option<(u64, Arc<Mutex<crate::flow::throttle::TokenBucket>>)>,
}

impl Engine {
    /// Runs `fut` under a monitor: a failure or a panic is recorded and
    /// cancels the shutdown token (the whole process stops, as before
    /// reloads existed); a task cancelled by its own token just ends.
    fn monitor(
        &self,
        name: String,
        token: CancellationToken,
        handle: JoinHandle<anyhow::Result<()>>,
    ) -> Task {
        let (failed, shutdown, n) = (self.failed.clone(), self.shutdown.clone(), name.clone());
        let handle = tokio::spawn(async move {
            let failure = match handle.await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.context(format!("task {n} failed"))),
                Err(e) => Some(anyhow::anyhow!("task {n} panicked: {e}")),
            };
            if let Some(e) = failure {
                error!(error = format!("{e:#}"), "stopping kmirror");
                if let Ok(mut f) = failed.lock() {
                    f.get_or_insert(e);
                }
                shutdown.cancel();
            }
        });
        Task {
            name,
            token,
            handle,
        }
    }

    /// The process-wide bucket for the current `[runtime]` (`None`: no
    /// limit); made again when the limit changes.
    fn process_limit(&mut self) -> Option<Arc<Mutex<crate::flow::throttle::TokenBucket>>> {
        let rate = self.config.runtime.max_bytes_per_second;
        if rate == 0 {
            self.limit = None;
            return None;
        }
        match &self.limit {
            Some((r, b)) if *r == rate => Some(b.clone()),
            _ => {
                let b = Arc::new(Mutex::new(crate::flow::throttle::TokenBucket::new(rate)));
                self.limit = Some((rate, b.clone()));
                Some(b)
            }
        }
    }

    fn start_flow(&mut self, f: &FlowConfig) -> anyhow::Result<()> {
        let token = self.shutdown.child_token();
        let (tx, rx) = watch::channel(Arc::new(MirrorSet::new()));
        let leader = crate::leader::leader_for(&self.config);
        let cfg = &self.config;
        let sync = ConfigSync {
            flow: f.clone(),
            source: cfg.source.clone(),
            target: cfg.target.clone(),
            metrics: self.metrics.clone(),
            mirror: rx.clone(),
            refresh: self.refresh.clone(),
            leader: leader.clone(),
        };
        let cp = crate::offsets::checkpoint::Checkpointer {
            flow: f.clone(),
            source: cfg.source.clone(),
            target: cfg.target.clone(),
            metrics: self.metrics.clone(),
            mirror: rx.clone(),
            leader: leader.clone(),
        };
        self.health.add_flow(&f.name);
        let rep = Replicator {
            flow: f.clone(),
            source: cfg.source.clone(),
            target: cfg.target.clone(),
            runtime: cfg.runtime.clone(),
            metrics: self.metrics.clone(),
            health: self.health.clone(),
            mirror: rx,
            process_limit: self.process_limit(),
        };
        let t = token.clone();
        let election = {
            let (cfg, name, l, metrics, health, t) = (
                self.config.clone(),
                f.name.clone(),
                leader.clone(),
                self.metrics.clone(),
                self.health.clone(),
                token.clone(),
            );
            tokio::task::spawn_blocking(move || {
                crate::leader::run(&cfg, &name, l, metrics, health, t)
            })
        };
        let tasks = vec![
            self.monitor(
                format!("leader election {}", f.name),
                token.clone(),
                election,
            ),
            self.monitor(
                format!("config sync {}", f.name),
                token.clone(),
                tokio::spawn(sync.run(token.clone())),
            ),
            self.monitor(
                format!("checkpoints {}", f.name),
                token.clone(),
                tokio::spawn(cp.run(token.clone())),
            ),
            self.monitor(
                format!("flow {}", f.name),
                token.clone(),
                tokio::task::spawn_blocking(move || rep.run(t)),
            ),
        ];
        self.flows
            .insert(f.name.clone(), FlowTasks { leader, tx, tasks });
        Ok(())
    }

    /// Discovery (over the flows in config order) and heartbeats.
    fn start_shared(&mut self) {
        let mut flows = Vec::new();
        for f in &self.config.flows {
            let Some(ft) = self.flows.get(&f.name) else {
                continue;
            };
            match FlowRules::new(f) {
                Ok(rules) => flows.push((f.clone(), rules, ft.tx.clone())),
                Err(e) => error!(flow = %f.name, error = %e, "flow rules"),
            }
        }
        let disc = Discovery {
            source: self.config.source.clone(),
            target: self.config.target.clone(),
            flows,
            metrics: self.metrics.clone(),
            health: self.health.clone(),
            refresh: self.refresh.clone(),
        };
        let token = self.shutdown.child_token();
        let d = self.monitor(
            "discovery".into(),
            token.clone(),
            tokio::spawn(disc.run(token.clone())),
        );
        // The heartbeats are written by the leader of the first flow.
        let first_leader = self
            .config
            .flows
            .first()
            .and_then(|f| self.flows.get(&f.name))
            .map(|ft| ft.leader.clone())
            .unwrap_or_else(|| crate::leader::Leader::new(Duration::from_secs(1)));
        let token = self.shutdown.child_token();
        let h = self.monitor(
            "heartbeats".into(),
            token.clone(),
            tokio::spawn(heartbeats(
                self.config.clone(),
                self.metrics.clone(),
                first_leader,
                token.clone(),
            )),
        );
        self.shared = vec![d, h];
    }

    /// Cancels `tasks` and waits for them (at most `shutdown_timeout`).
    async fn stop(&self, tasks: Vec<Task>) {
        for t in &tasks {
            t.token.cancel();
        }
        let deadline = tokio::time::Instant::now() + self.config.runtime.shutdown_timeout;
        for t in tasks {
            let mut handle = t.handle;
            if tokio::time::timeout_at(deadline, &mut handle)
                .await
                .is_err()
            {
                error!(task = %t.name, "did not stop within shutdown_timeout; abandoned");
                handle.abort();
            }
        }
    }

    async fn stop_flow(&mut self, name: &str) {
        if let Some(ft) = self.flows.remove(name) {
            self.stop(ft.tasks).await;
            self.health.remove_flow(name);
        }
    }

    /// Re-reads the file and applies what changed (see [`run_reloadable`]).
    async fn reload(&mut self, path: &Path, why: &str) {
        let new = match crate::config::load(path) {
            Ok(c) => c,
            Err(e) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["invalid"])
                    .inc();
                error!(trigger = why, file = %path.display(), "configuration reload refused; the running configuration goes on:\n{e}");
                return;
            }
        };
        let old = self.config.clone();
        let plan = ReloadPlan::new(&old, &new);
        if plan.is_empty() {
            self.metrics
                .config_reloads
                .with_label_values(&["unchanged"])
                .inc();
            info!(trigger = why, "configuration reloaded: nothing changed");
            return;
        }
        info!(trigger = why, changes = %plan, "configuration reload: applying");
        if new.http.listen != old.http.listen {
            warn!(running = %old.http.listen, file = %new.http.listen, "[http] listen changes need a restart; the running address is kept");
        }
        if new.http.metrics_level != old.http.metrics_level {
            warn!(running = ?old.http.metrics_level, file = ?new.http.metrics_level, "[http] metrics_level changes need a restart; the running level is kept");
        }
        // Stop first (drain, commit), then start: a topic that moves from
        // one flow to another is never mirrored by both.
        let shared = std::mem::take(&mut self.shared);
        self.stop(shared).await;
        for name in plan.removed.iter().chain(&plan.changed) {
            self.stop_flow(name).await;
        }
        let mut new_cfg = new.clone();
        new_cfg.http = old.http.clone();
        self.config = new_cfg;
        warn_tls_off(&self.config);
        if plan.clusters || !plan.added.is_empty() {
            // Bounded: a reload whose target refuses kmirror (a wrong new
            // secret) must not keep the process from reading the next one.
            match ensure_internal_topics(
                &self.config,
                &self.health,
                &self.metrics,
                &self.shutdown,
                Some(RELOAD_TOPICS_WAIT),
            )
            .await
            {
                Ok(true) => {}
                Ok(false) => {
                    error!(wait = ?RELOAD_TOPICS_WAIT, "after the reload, kmirror's internal topics could not be created on the target (see /readyz for the cause); the flows start anyway and retry, and the next reload is read")
                }
                Err(e) => error!(error = format!("{e:#}"), "internal topics after the reload"),
            }
        }
        let mut result = "applied";
        for f in new
            .flows
            .iter()
            .filter(|f| plan.added.contains(&f.name) || plan.changed.contains(&f.name))
        {
            if let Err(e) = self.start_flow(f) {
                error!(flow = %f.name, error = format!("{e:#}"), "cannot start the flow after the reload");
                result = "failed";
            }
        }
        self.start_shared();
        self.metrics
            .config_reloads
            .with_label_values(&[result])
            .inc();
        info!(changes = %plan, "configuration reloaded");
    }

    /// Stops everything (each task within `shutdown_timeout`) and returns
    /// the first failure.
    async fn finish(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let mut tasks = std::mem::take(&mut self.shared);
        for (_, ft) in std::mem::take(&mut self.flows) {
            tasks.extend(ft.tasks);
        }
        self.stop(tasks).await;
        match self.failed.lock().ok().and_then(|mut f| f.take()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// What a reload changes: flows by name, and whether the clusters (or
/// `[runtime]`) changed, which restarts every flow.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Flows in the new file only.
    pub added: Vec<String>,
    /// Flows in the running config only.
    pub removed: Vec<String>,
    /// Flows whose settings differ (or every flow when `clusters`).
    pub changed: Vec<String>,
    /// `[source]`, `[target]` (properties and secrets included) or
    /// `[runtime]` differ.
    pub clusters: bool,
}

impl ReloadPlan {
    /// Compares the running config with a new one.
    pub fn new(old: &Config, new: &Config) -> ReloadPlan {
        let clusters =
            old.source != new.source || old.target != new.target || old.runtime != new.runtime;
        let mut plan = ReloadPlan {
            clusters,
            ..ReloadPlan::default()
        };
        for f in &new.flows {
            match old.flows.iter().find(|o| o.name == f.name) {
                None => plan.added.push(f.name.clone()),
                Some(o) if clusters || o != f => plan.changed.push(f.name.clone()),
                Some(_) => {}
            }
        }
        for o in &old.flows {
            if !new.flows.iter().any(|f| f.name == o.name) {
                plan.removed.push(o.name.clone());
            }
        }
        // A change in flow order changes which flow takes a topic first.
        let order = |c: &Config| c.flows.iter().map(|f| f.name.clone()).collect::<Vec<_>>();
        if plan.added.is_empty() && plan.removed.is_empty() && order(old) != order(new) {
            for f in &new.flows {
                if !plan.changed.contains(&f.name) {
                    plan.changed.push(f.name.clone());
                }
            }
        }
        plan
    }

    /// Nothing to apply (an `[http]` change alone is only warned about).
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && !self.clusters
    }
}

impl std::fmt::Display for ReloadPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return f.write_str("nothing changes");
        }
        let mut parts = Vec::new();
        if self.clusters {
            parts.push(
                "clusters or [runtime] changed: every flow restarts with new clients".to_string(),
            );
        }
        for (what, v) in [
            ("start", &self.added),
            ("stop", &self.removed),
            ("restart", &self.changed),
        ] {
            if !v.is_empty() {
                parts.push(format!("{what} {}", v.join(", ")));
            }
        }
        f.write_str(&parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(flows: &str, target_props: &str) -> Config {
        let text = format!(
            "[source]\nalias = \"s\"\nbootstrap_servers = \"127.0.0.1:1\"\n\n[target]\nalias = \"t\"\nbootstrap_servers = \"127.0.0.1:2\"\n{target_props}\n{flows}"
        );
        crate::config::load_str(Path::new("t.toml"), &text, &|_| None).unwrap()
    }

    const A: &str = "[[flow]]\nname = \"a\"\ntopics = [\"a\"]\n";
    const B: &str = "[[flow]]\nname = \"b\"\ntopics = [\"b\"]\n";

    #[test]
    fn a_reload_plan_names_what_starts_stops_and_restarts() {
        let one = load(A, "");
        assert!(ReloadPlan::new(&one, &one).is_empty());
        let two = load(&format!("{A}{B}"), "");
        let p = ReloadPlan::new(&one, &two);
        assert_eq!(
            (
                p.added.clone(),
                p.removed.clone(),
                p.changed.clone(),
                p.clusters
            ),
            (vec!["b".to_string()], vec![], vec![], false)
        );
        let p = ReloadPlan::new(&two, &one);
        assert_eq!(p.removed, vec!["b".to_string()]);
        // A changed flow restarts alone.
        let changed = load(&format!("{A}{}", B.replace("[\"b\"]", "[\"b2\"]")), "");
        let p = ReloadPlan::new(&two, &changed);
        assert_eq!(
            (p.changed.clone(), p.added.is_empty(), p.removed.is_empty()),
            (vec!["b".to_string()], true, true)
        );
        // A cluster change (a rotated secret) restarts every flow.
        let rotated = load(
            &format!("{A}{B}"),
            "[target.properties]\n\"sasl.password\" = \"new\"\n",
        );
        let p = ReloadPlan::new(&two, &rotated);
        assert!(p.clusters);
        assert_eq!(p.changed, vec!["a".to_string(), "b".to_string()]);
        // Reordered flows: which flow takes a topic first may change.
        let swapped = load(&format!("{B}{A}"), "");
        assert_eq!(ReloadPlan::new(&two, &swapped).changed.len(), 2);
    }
}
