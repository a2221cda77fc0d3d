//! The config-sync loop and `kmirror plan`: describe, [`diff`], apply.
//!
//! Which target properties kmirror set itself (the "managed" set that
//! decides DELETEs) is persisted in the compacted topic
//! `kmirror-config-sync.<source>.internal` on the target, one record per
//! target topic (key: topic name, value: JSON array of property names), so
//! that a restarted kmirror still never touches properties it did not set.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, ResourceSpecifier};
use rdkafka::message::Message;
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::acl;
use super::diff::{self, Action, ConfigEntry, ConfigSource, Policy, TopicState};
use crate::config::{ClusterConfig, FlowConfig};
use crate::discovery::{self, Mirror, MirrorSet};
use crate::kafka::acls::{create_topic_acls, describe_topic_acls};
use crate::kafka::incremental::{incremental_alter_topic_configs, ConfigOp};
use crate::kafka::{self, KContext, Role};
use crate::metrics::Metrics;

/// Name of the managed-properties topic on the target.
pub fn managed_topic(source_alias: &str) -> String {
    format!("kmirror-config-sync.{source_alias}.internal")
}

fn source_of(s: rdkafka::admin::ConfigSource) -> ConfigSource {
    use rdkafka::admin::ConfigSource as S;
    match s {
        S::DynamicTopic => ConfigSource::DynamicTopic,
        S::DynamicBroker | S::DynamicDefaultBroker => ConfigSource::DynamicBroker,
        S::StaticBroker => ConfigSource::StaticBroker,
        S::Default => ConfigSource::Default,
        S::Unknown => ConfigSource::Unknown,
    }
}

/// Describes one topic's configs; `partitions` comes from metadata.
pub async fn describe_topic(
    admin: &AdminClient<KContext>,
    topic: &str,
    partitions: i32,
) -> Result<TopicState, String> {
    describe_topics(admin, &[(topic.to_string(), partitions)])
        .await
        .pop()
        .unwrap_or_else(|| Err(format!("DescribeConfigs {topic}: no result")))
}

/// Describes the configs of many topics with one DescribeConfigs request
/// per [`BATCH`] topics; one result per topic, in order.
pub async fn describe_topics(
    admin: &AdminClient<KContext>,
    topics: &[(String, i32)],
) -> Vec<Result<TopicState, String>> {
    let mut out = Vec::with_capacity(topics.len());
    for chunk in topics.chunks(BATCH) {
        let specs: Vec<ResourceSpecifier<'_>> = chunk
            .iter()
            .map(|(t, _)| ResourceSpecifier::Topic(t.as_str()))
            .collect();
        let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
        match admin.describe_configs(specs.iter(), &opts).await {
            Err(e) => {
                let e = format!("DescribeConfigs of {} topic(s): {e}", chunk.len());
                out.extend(chunk.iter().map(|_| Err(e.clone())));
            }
            Ok(results) => {
                for ((topic, partitions), r) in chunk.iter().zip(
                    results
                        .into_iter()
                        .map(Some)
                        .chain(std::iter::repeat_with(|| None)),
                ) {
                    out.push(match r {
                        None => Err(format!("DescribeConfigs {topic}: no result")),
                        Some(Err(e)) => Err(format!("DescribeConfigs {topic}: {e}")),
                        Some(Ok(r)) => Ok(topic_state(r.entries, *partitions)),
                    });
                }
            }
        }
    }
    out
}

/// Topics per admin request in the config-sync loop (DescribeConfigs,
/// CreateTopics, CreatePartitions, IncrementalAlterConfigs).
pub const BATCH: usize = 500;

fn topic_state(entries: Vec<rdkafka::admin::ConfigEntry>, partitions: i32) -> TopicState {
    let mut configs = BTreeMap::new();
    for e in entries {
        // Some brokers (nisshi among them) report explicitly set topic
        // properties with source Unknown; a non-default, non-read-only
        // entry is then taken as set on the topic.
        let mut source = source_of(e.source);
        if source == ConfigSource::Unknown && !e.is_default && !e.is_read_only {
            source = ConfigSource::DynamicTopic;
        }
        configs.insert(
            e.name,
            ConfigEntry {
                value: e.value,
                source,
                read_only: e.is_read_only,
                sensitive: e.is_sensitive,
            },
        );
    }
    TopicState {
        partitions,
        configs,
    }
}

/// Target properties kmirror set, per target topic.
#[derive(Debug, Default, Clone)]
pub struct Managed(pub HashMap<String, BTreeSet<String>>);

impl Managed {
    /// Reads the whole managed-properties topic (empty if it is missing).
    pub fn load(target: &ClusterConfig, topic: &str) -> Result<Self, String> {
        let c = kafka::reader(target, "kmirror-config-sync").map_err(|e| e.to_string())?;
        let mut m = HashMap::new();
        for r in kafka::Follower::new(topic).poll(&c)? {
            if let Some(k) = r.key() {
                let key = String::from_utf8_lossy(k).into_owned();
                let keys: BTreeSet<String> = r
                    .payload()
                    .and_then(|v| serde_json::from_slice(v).ok())
                    .unwrap_or_default();
                m.insert(key, keys);
            }
        }
        Ok(Self(m))
    }
}

/// The plan of one mirrored topic.
#[derive(Debug, Clone, Serialize)]
pub struct TopicPlan {
    /// Source topic.
    pub source: String,
    /// Target topic.
    pub target: String,
    /// Source partitions.
    pub source_partitions: i32,
    /// Target partitions (0: missing).
    pub target_partitions: i32,
    /// What config sync would do.
    pub actions: Vec<Action>,
    /// Source properties not copied, with the rule that excludes them.
    pub excluded_configs: BTreeMap<String, String>,
}

/// Computes the actions for one mirrored topic (describes both sides).
pub async fn plan_topic(
    src: &AdminClient<KContext>,
    dst: &AdminClient<KContext>,
    m: &Mirror,
    policy: &Policy,
) -> Result<TopicPlan, String> {
    let source = describe_topic(src, &m.source, m.partitions).await?;
    let target = if m.target_partitions > 0 {
        Some(describe_topic(dst, &m.target, m.target_partitions).await?)
    } else {
        None
    };
    Ok(plan_from(m, &source, target.as_ref(), policy))
}

/// The plan of one mirrored topic from both sides' descriptions.
fn plan_from(
    m: &Mirror,
    source: &TopicState,
    target: Option<&TopicState>,
    policy: &Policy,
) -> TopicPlan {
    let actions = diff::diff(source, target, policy);
    let excluded_configs = source
        .configs
        .iter()
        .filter(|(_, e)| e.source == ConfigSource::DynamicTopic)
        .filter_map(|(k, _)| policy.exclusion(k).map(|why| (k.clone(), why)))
        .collect();
    TopicPlan {
        source: m.source.clone(),
        target: m.target.clone(),
        source_partitions: m.partitions,
        target_partitions: m.target_partitions,
        actions,
        excluded_configs,
    }
}

/// Topic ACLs of both clusters (blocking inside the async runtime).
pub fn describe_acl_pair(
    src: &AdminClient<KContext>,
    dst: &AdminClient<KContext>,
) -> Result<(Vec<acl::TopicAcl>, Vec<acl::TopicAcl>), String> {
    let t = Duration::from_secs(10);
    tokio::task::block_in_place(|| {
        let s =
            describe_topic_acls(src.inner(), t).map_err(|e| format!("source DescribeAcls: {e}"))?;
        let d =
            describe_topic_acls(dst.inner(), t).map_err(|e| format!("target DescribeAcls: {e}"))?;
        Ok((s, d))
    })
}

/// The policy of a flow for one target topic.
pub fn policy_for(flow: &FlowConfig, managed: BTreeSet<String>) -> Result<Policy, String> {
    Policy::new(
        flow.sync_topic_configs,
        flow.sync_partitions,
        &flow.config_exclude,
        managed,
    )
}

/// Waits (bounded) until the target's metadata lists every topic of
/// `topics` (one metadata request per try, whatever their number).
fn wait_visible(admin: &AdminClient<KContext>, topics: &[String], timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    tokio::task::block_in_place(|| {
        while std::time::Instant::now() < deadline {
            let seen = admin
                .inner()
                .fetch_metadata(None, Duration::from_secs(2))
                .map(|md| {
                    let present: HashSet<&str> = md
                        .topics()
                        .iter()
                        .filter(|t| !t.partitions().is_empty())
                        .map(|t| t.name())
                        .collect();
                    topics.iter().all(|t| present.contains(t.as_str()))
                })
                .unwrap_or(false);
            if seen {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

/// One flow's config-sync loop.
pub struct ConfigSync {
    /// The flow.
    pub flow: FlowConfig,
    /// Source cluster.
    pub source: ClusterConfig,
    /// Target cluster.
    pub target: ClusterConfig,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The flow's mirror set.
    pub mirror: watch::Receiver<Arc<MirrorSet>>,
    /// Asks discovery to look again (after topics were created).
    pub refresh: Arc<Notify>,
    /// Target configs and topics are changed only while this process
    /// leads (asked before each run).
    pub leader: crate::leader::Leader,
}

impl ConfigSync {
    /// Runs until `shutdown`: at once when the mirror set changes, and
    /// every `sync_configs_interval`. A failed run is logged and counted;
    /// the loop goes on and never stops the data path.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let src: Arc<AdminClient<KContext>> = Arc::new(kafka::create(
            &kafka::client_config(&self.source, Role::Admin, "kmirror-config-sync"),
            KContext::default(),
        )?);
        let dst: Arc<AdminClient<KContext>> = Arc::new(kafka::create(
            &kafka::client_config(&self.target, Role::Admin, "kmirror-config-sync"),
            KContext::default(),
        )?);
        let mut cfg = kafka::client_config(&self.target, Role::Producer, "kmirror-config-sync");
        cfg.set("message.timeout.ms", "30000");
        let producer = kafka::Polled::create(&cfg, KContext::default())?;
        let managed_topic = managed_topic(&self.source.alias);
        let mut managed = loop {
            let (t, mt) = (self.target.clone(), managed_topic.clone());
            match tokio::task::spawn_blocking(move || Managed::load(&t, &mt)).await? {
                Ok(m) => break m,
                Err(e) => {
                    warn!(flow = %self.flow.name, error = %e, "config sync: cannot read {managed_topic} yet; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
            }
        };
        let mut reported: HashSet<String> = HashSet::new();
        let mut was_leader = false;
        let mut unreachable = false;
        let mut created_at: HashMap<String, std::time::Instant> = HashMap::new();
        let mut tick = tokio::time::interval(self.flow.sync_configs_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {}
                r = self.mirror.changed() => { if r.is_err() { return Ok(()); } }
            }
            let set = self.mirror.borrow_and_update().clone();
            if set.is_empty() {
                continue;
            }
            // Only the leader changes configs and ACLs; every process
            // creates the target topics and partitions its own flows need
            // (its records wait for them; creating is idempotent), also
            // when the leader runs another config (a rolling change).
            let leading = self.leader.is_leader();
            if !leading {
                was_leader = false;
                if !set
                    .values()
                    .any(|m| m.target_partitions == 0 || m.target_partitions < m.partitions)
                {
                    continue;
                }
            }
            if leading && !was_leader {
                // Just became the leader: what the previous leader set is
                // read again, so that no update of its is lost.
                let (t, mt) = (self.target.clone(), managed_topic.clone());
                match tokio::task::spawn_blocking(move || Managed::load(&t, &mt)).await? {
                    Ok(m) => {
                        managed = m;
                        was_leader = true;
                    }
                    Err(e) => {
                        warn!(flow = %self.flow.name, error = %e, "config sync: cannot read {managed_topic} after becoming the leader; retrying next tick");
                        continue;
                    }
                }
            }
            // Nothing is asked of a cluster that is down (see
            // `kafka::reachable`); the next tick tries again.
            let up = match kafka::reachable(&src, Duration::from_secs(5)).await {
                Ok(()) => kafka::reachable(&dst, Duration::from_secs(5))
                    .await
                    .map_err(|e| format!("target cluster: {e}")),
                Err(e) => Err(format!("source cluster: {e}")),
            };
            if let Err(e) = up {
                self.metrics
                    .errors
                    .with_label_values(&[&self.flow.name, "config_sync"])
                    .inc();
                if !unreachable {
                    unreachable = true;
                    warn!(flow = %self.flow.name, error = %e, "config sync paused: a cluster is unreachable (counted in kmirror_errors_total{{stage=\"config_sync\"}} every tick until it answers)");
                }
                continue;
            }
            if unreachable {
                unreachable = false;
                info!(flow = %self.flow.name, "config sync resumed: both clusters answer");
            }
            // A topic discovery has seen is no longer "just created": if it
            // vanishes later (deleted), it is created again at once.
            if !created_at.is_empty() {
                let seen: HashSet<&str> = set
                    .values()
                    .filter(|m| m.target_partitions > 0)
                    .map(|m| m.target.as_str())
                    .collect();
                created_at.retain(|t, _| !seen.contains(t.as_str()));
            }
            // Batched: one admin request per `BATCH` topics for each
            // kind of work, never one round trip per topic in series.
            let todo: Vec<Mirror> = set
                .values()
                .filter(|m| {
                    leading || m.target_partitions == 0 || m.target_partitions < m.partitions
                })
                // Created moments ago; discovery has not seen it yet.
                .filter(|m| {
                    !(m.target_partitions == 0
                        && created_at
                            .get(&m.target)
                            .is_some_and(|t| t.elapsed() < Duration::from_secs(30)))
                })
                .cloned()
                .collect();
            let mut created = false;
            let mut made: Vec<String> = Vec::new();
            for chunk in todo.chunks(BATCH) {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                let results = self
                    .sync_batch(&src, &dst, chunk, &managed, leading, &mut reported)
                    .await;
                let mut saves = Vec::new();
                for (m, r) in chunk.iter().zip(results) {
                    let before = managed.0.get(&m.target).cloned().unwrap_or_default();
                    match r {
                        Ok((did_create, now)) => {
                            if did_create {
                                created_at.insert(m.target.clone(), std::time::Instant::now());
                                made.push(m.target.clone());
                            }
                            created |= did_create;
                            if now != before {
                                saves.push((m.target.clone(), now.clone()));
                                managed.0.insert(m.target.clone(), now);
                            }
                        }
                        Err(e) => {
                            self.metrics
                                .errors
                                .with_label_values(&[&self.flow.name, "config_sync"])
                                .inc();
                            if reported.insert(format!("describe/{}/{e}", m.source)) {
                                warn!(flow = %self.flow.name, topic = %m.source, error = %e, "config sync failed for this topic; retrying next tick");
                            }
                        }
                    }
                }
                futures::future::join_all(
                    saves
                        .iter()
                        .map(|(t, keys)| self.save_managed(&producer, &managed_topic, t, keys)),
                )
                .await;
            }
            if !made.is_empty() {
                wait_visible(&dst, &made, Duration::from_secs(10));
            }
            if created {
                self.refresh.notify_one();
            }
            if leading && self.flow.sync_topic_acls && !set.is_empty() {
                self.sync_acls(&src, &dst, &set, &mut reported);
            }
        }
    }

    /// Copies the source's topic ALLOW ACLs of the mirrored topics to the
    /// target (MM2's rule); never deletes. A broker without an authorizer,
    /// or one that refuses, is reported once per distinct error.
    fn sync_acls(
        &self,
        src: &AdminClient<KContext>,
        dst: &AdminClient<KContext>,
        set: &MirrorSet,
        reported: &mut HashSet<String>,
    ) {
        let t = Duration::from_secs(10);
        let mirrored: Vec<(String, String)> = set
            .values()
            .map(|m| (m.source.clone(), m.target.clone()))
            .collect();
        let described = describe_acl_pair(src, dst);
        let (s, d) = match described {
            Ok(x) => x,
            Err(e) => {
                self.count("describe_acls", false);
                if reported.insert(format!("acl/{e}")) {
                    warn!(flow = %self.flow.name, error = %e, "topic ACL sync skipped (reported once); the data path goes on");
                }
                return;
            }
        };
        let want = acl::to_create(&s, &d, &mirrored);
        if want.is_empty() {
            return;
        }
        match tokio::task::block_in_place(|| create_topic_acls(dst.inner(), &want, t)) {
            Ok(results) => {
                for (a, r) in want.iter().zip(results) {
                    self.count("create_acl", r.is_ok());
                    match r {
                        Ok(()) => {
                            info!(flow = %self.flow.name, acl = %a, "created ACL on the target")
                        }
                        Err(e) => {
                            if reported.insert(format!("acl/{a}/{e}")) {
                                error!(flow = %self.flow.name, acl = %a, error = %e, "the target refused an ACL (reported once)");
                            }
                        }
                    }
                }
            }
            Err(e) => {
                self.count("create_acl", false);
                if reported.insert(format!("acl/create/{e}")) {
                    warn!(flow = %self.flow.name, error = %e, "target CreateAcls failed (reported once)");
                }
            }
        }
    }

    async fn save_managed(
        &self,
        p: &kafka::Polled<KContext>,
        topic: &str,
        target: &str,
        keys: &BTreeSet<String>,
    ) {
        let value = serde_json::to_vec(keys).unwrap_or_default();
        let sent = kafka::send_acked(
            p,
            topic,
            0,
            target.as_bytes(),
            &value,
            None,
            Duration::from_secs(10),
        )
        .await;
        if let Err(e) = sent {
            warn!(flow = %self.flow.name, error = %e, "config sync: cannot persist the managed properties of {target}");
        }
    }

    fn count(&self, op: &str, ok: bool) {
        self.metrics
            .config_sync_ops
            .with_label_values(&[self.flow.name.as_str(), op, if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Syncs a batch of topics: describes both sides (one request per
    /// side), then creates topics, raises partition counts and alters
    /// configs with one request each. Per topic: (created by this call,
    /// managed keys after), or why it failed.
    async fn sync_batch(
        &self,
        src: &AdminClient<KContext>,
        dst: &AdminClient<KContext>,
        mirrors: &[Mirror],
        managed: &Managed,
        leading: bool,
        reported: &mut HashSet<String>,
    ) -> Vec<Result<(bool, BTreeSet<String>), String>> {
        let sources: Vec<(String, i32)> = mirrors
            .iter()
            .map(|m| (m.source.clone(), m.partitions))
            .collect();
        let existing: Vec<(String, i32)> = mirrors
            .iter()
            .filter(|m| m.target_partitions > 0)
            .map(|m| (m.target.clone(), m.target_partitions))
            .collect();
        let described_src = describe_topics(src, &sources).await;
        let mut described_dst: HashMap<String, Result<TopicState, String>> = existing
            .iter()
            .map(|(t, _)| t.clone())
            .zip(describe_topics(dst, &existing).await)
            .collect();
        // Per topic: its plan (or error) and managed keys.
        let mut out: Vec<Result<(bool, BTreeSet<String>), String>> = Vec::new();
        let mut plans: Vec<Option<TopicPlan>> = Vec::new();
        for (m, source) in mirrors.iter().zip(described_src) {
            let keys = managed.0.get(&m.target).cloned().unwrap_or_default();
            let plan = (|| -> Result<TopicPlan, String> {
                let policy = policy_for(&self.flow, keys.clone())?;
                let source = source?;
                let target = match described_dst.remove(&m.target) {
                    Some(t) => Some(t?),
                    None => None,
                };
                Ok(plan_from(m, &source, target.as_ref(), &policy))
            })();
            match plan {
                Ok(p) => {
                    out.push(Ok((false, keys)));
                    plans.push(Some(p));
                }
                Err(e) => {
                    out.push(Err(e));
                    plans.push(None);
                }
            }
        }
        // Gather the work of every topic.
        let mut creates: Vec<(usize, i32, BTreeMap<String, String>)> = Vec::new();
        let mut grow: Vec<(usize, i32, i32)> = Vec::new();
        let mut alters: Vec<(usize, Vec<ConfigOp>)> = Vec::new();
        for (i, plan) in plans.iter().enumerate() {
            let Some(plan) = plan else { continue };
            let mut ops = Vec::new();
            for a in &plan.actions {
                match a {
                    Action::CreateTopic {
                        partitions,
                        configs,
                    } => creates.push((i, *partitions, configs.clone())),
                    Action::CreatePartitions { from, to } => grow.push((i, *from, *to)),
                    // Config changes are the leader's.
                    Action::SetConfig { key, to, .. } if leading => {
                        ops.push(ConfigOp::Set(key.clone(), to.clone()))
                    }
                    Action::DeleteConfig { key, .. } if leading => {
                        ops.push(ConfigOp::Delete(key.clone()))
                    }
                    _ => {}
                }
            }
            if !ops.is_empty() {
                alters.push((i, ops));
            }
        }
        // Create topics.
        if !creates.is_empty() {
            let specs: Vec<discovery::TopicSpec> = creates
                .iter()
                .map(|(i, n, c)| {
                    (
                        mirrors[*i].target.clone(),
                        *n,
                        c.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    )
                })
                .collect();
            let results = discovery::create_topics(dst, &specs, self.flow.replication_factor).await;
            let mut made_names = Vec::new();
            for ((i, partitions, configs), r) in creates.iter().zip(results) {
                let m = &mirrors[*i];
                match r {
                    Ok(made) => {
                        self.count("create_topic", true);
                        if let Ok((created, keys)) = &mut out[*i] {
                            *created = true;
                            if made {
                                // Only a topic this call created carries
                                // properties kmirror set; one that someone
                                // else created meanwhile is not claimed.
                                keys.extend(configs.keys().cloned());
                            }
                        }
                        if made {
                            made_names.push(m.target.clone());
                            if creates.len() <= 20 {
                                info!(flow = %self.flow.name, topic = %m.source, target = %m.target, partitions, configs = configs.len(), "created target topic");
                            } else {
                                debug!(flow = %self.flow.name, topic = %m.source, target = %m.target, partitions, configs = configs.len(), "created target topic");
                            }
                        }
                    }
                    Err(e) => {
                        self.count("create_topic", false);
                        if reported.insert(format!("create/{}/{e}", m.target)) {
                            error!(flow = %self.flow.name, topic = %m.source, target = %m.target, error = %e, "cannot create the target topic; its records wait until it exists");
                        }
                    }
                }
            }
            if made_names.len() > 20 {
                info!(flow = %self.flow.name, topics = made_names.len(), which = %kafka::summary(&made_names, 5), "created target topics");
            }
        }
        // Raise partition counts.
        if !grow.is_empty() {
            let nps: Vec<NewPartitions<'_>> = grow
                .iter()
                .map(|(i, _, to)| NewPartitions::new(&mirrors[*i].target, *to as usize))
                .collect();
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
            let results: Vec<Result<(), String>> =
                match dst.create_partitions(nps.iter(), &opts).await {
                    Err(e) => grow.iter().map(|_| Err(e.to_string())).collect(),
                    Ok(rs) => {
                        let mut by: HashMap<String, Result<(), String>> = rs
                            .into_iter()
                            .map(|r| match r {
                                Ok(t) => (t, Ok(())),
                                Err((t, e)) => (t, Err(e.to_string())),
                            })
                            .collect();
                        grow.iter()
                            .map(|(i, _, _)| {
                                by.remove(&mirrors[*i].target)
                                    .unwrap_or_else(|| Err("no result".into()))
                            })
                            .collect()
                    }
                };
            for ((i, from, to), r) in grow.iter().zip(results) {
                let m = &mirrors[*i];
                match r {
                    Ok(()) => {
                        self.count("create_partitions", true);
                        info!(flow = %self.flow.name, topic = %m.source, target = %m.target, from, to, "raised the target partition count");
                        if let Ok((created, _)) = &mut out[*i] {
                            *created = true;
                        }
                    }
                    Err(e) => {
                        self.count("create_partitions", false);
                        if reported.insert(format!("partitions/{}/{to}", m.target)) {
                            error!(flow = %self.flow.name, topic = %m.source, target = %m.target, from, to, error = %e,
                                "cannot raise the target partition count; partitions {from}..{} stay held (not mirrored, not remapped) until the target has them", to - 1);
                        }
                    }
                }
            }
        }
        // Alter configs.
        if !alters.is_empty() {
            let changes: Vec<(String, Vec<ConfigOp>)> = alters
                .iter()
                .map(|(i, ops)| (mirrors[*i].target.clone(), ops.clone()))
                .collect();
            let client = dst.inner();
            let res = tokio::task::block_in_place(|| {
                incremental_alter_topic_configs(client, &changes, Duration::from_secs(30))
            });
            let mut by: HashMap<String, Result<(), String>> = match res {
                Ok(v) => v.into_iter().collect(),
                Err(e) => changes
                    .iter()
                    .map(|(t, _)| (t.clone(), Err(e.clone())))
                    .collect(),
            };
            for (i, ops) in &alters {
                let m = &mirrors[*i];
                let result = by
                    .remove(&m.target)
                    .unwrap_or_else(|| Err("no result".into()));
                for op in ops {
                    let (name, label) = match op {
                        ConfigOp::Set(k, _) => (k, "set_config"),
                        ConfigOp::Delete(k) => (k, "delete_config"),
                    };
                    self.count(label, result.is_ok());
                    if let (Ok(()), Ok((_, keys))) = (&result, &mut out[*i]) {
                        match op {
                            ConfigOp::Set(..) => {
                                keys.insert(name.clone());
                            }
                            ConfigOp::Delete(_) => {
                                keys.remove(name);
                            }
                        }
                    }
                }
                let actions = plans[*i].as_ref().map(|p| &p.actions[..]).unwrap_or(&[]);
                match &result {
                    Ok(()) => {
                        for a in actions.iter().filter(|a| {
                            matches!(a, Action::SetConfig { .. } | Action::DeleteConfig { .. })
                        }) {
                            info!(flow = %self.flow.name, topic = %m.source, target = %m.target, "config synced: {a}");
                        }
                    }
                    Err(e) => {
                        let what: Vec<String> = actions.iter().map(|a| a.to_string()).collect();
                        if reported.insert(format!("alter/{}/{}", m.target, what.join(";"))) {
                            error!(flow = %self.flow.name, topic = %m.source, target = %m.target, error = %e, changes = ?what,
                                "the target refused the config change; the data path goes on");
                        }
                    }
                }
            }
        }
        out
    }
}
