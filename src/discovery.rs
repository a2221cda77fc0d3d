//! Topic discovery: lists source topics, applies each flow's filters and
//! rename rule, creates missing target topics, and publishes each flow's
//! mirror set to its replicator.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{ClusterConfig, FlowConfig};
use crate::kafka::{self, KContext, Role};
use crate::metrics::{Health, Metrics};
use crate::policy::{never_mirrored, NameFilter, Rename, Selection};

/// One mirrored topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// Source topic.
    pub source: String,
    /// Target topic.
    pub target: String,
    /// Partitions of the source topic.
    pub partitions: i32,
    /// Partitions of the target topic (0 while it does not exist).
    pub target_partitions: i32,
}

/// What one flow mirrors now, by source topic.
pub type MirrorSet = BTreeMap<String, Mirror>;

/// Why a source topic is not mirrored by a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// An internal topic (never mirrored).
    Internal(&'static str),
    /// It came from the target (prefix rule): mirroring it back is a cycle.
    Cycle,
    /// No `topics` pattern matches.
    NotIncluded,
    /// This `topics_exclude` pattern matches.
    Excluded(String),
    /// An earlier flow already mirrors this source topic: a source topic
    /// belongs to one flow (the first in the file that selects it), so
    /// that offset-sync points, exactly-once resume positions and
    /// checkpoints of the topic never mix two flows.
    SourceTaken {
        /// The flow that mirrors the source topic.
        flow: String,
    },
    /// An earlier flow already writes the same target topic.
    TargetTaken {
        /// The flow that owns the target topic.
        flow: String,
        /// The target topic.
        target: String,
    },
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::Internal(why) => write!(f, "{why}"),
            Skip::Cycle => write!(f, "came from the target cluster (cycle prevention)"),
            Skip::NotIncluded => write!(f, "matches no `topics` pattern"),
            Skip::Excluded(p) => write!(f, "excluded by `topics_exclude` pattern {p:?}"),
            Skip::SourceTaken { flow } => write!(
                f,
                "already mirrored by flow {flow:?} (a source topic is mirrored by one flow only)"
            ),
            Skip::TargetTaken { flow, target } => {
                write!(
                    f,
                    "target topic {target:?} is already written by flow {flow:?}"
                )
            }
        }
    }
}

/// A flow's compiled selection rules.
#[derive(Debug, Clone)]
pub struct FlowRules {
    /// Flow name.
    pub name: String,
    filter: NameFilter,
    rename: Rename,
}

impl FlowRules {
    /// Compiles a validated flow config.
    pub fn new(f: &FlowConfig) -> Result<Self, String> {
        Ok(Self {
            name: f.name.clone(),
            filter: NameFilter::new(&f.topics, &f.topics_exclude)?,
            rename: Rename::new(&f.rename)?,
        })
    }
}

/// (source topic, target topic, partitions) of each topic a flow mirrors.
pub type Taken = Vec<(String, String, i32)>;

/// The decision of every flow for every source topic: a pure function.
/// `claimed` (target topic -> flow, and source topic -> flow under keys
/// that start with NUL) makes the first flow win a collision.
pub fn decide(
    rules: &FlowRules,
    source_alias: &str,
    target_alias: &str,
    source_topics: &BTreeMap<String, i32>,
    claimed: &mut HashMap<String, String>,
) -> (Taken, Vec<(String, Skip)>) {
    let mut take = Vec::new();
    let mut skip = Vec::new();
    for (topic, parts) in source_topics {
        if let Some(why) = never_mirrored(topic) {
            skip.push((topic.clone(), Skip::Internal(why)));
            continue;
        }
        if rules.rename.came_from(target_alias, topic) {
            skip.push((topic.clone(), Skip::Cycle));
            continue;
        }
        match rules.filter.select(topic) {
            Selection::NotIncluded => skip.push((topic.clone(), Skip::NotIncluded)),
            Selection::Excluded(p) => skip.push((topic.clone(), Skip::Excluded(p))),
            Selection::Included(_) => {
                let source_key = format!("\0{topic}");
                if let Some(owner) = claimed.get(&source_key).filter(|o| **o != rules.name) {
                    skip.push((
                        topic.clone(),
                        Skip::SourceTaken {
                            flow: owner.clone(),
                        },
                    ));
                    continue;
                }
                let target = rules.rename.apply(source_alias, topic);
                match claimed.get(&target) {
                    Some(owner) if *owner != rules.name => skip.push((
                        topic.clone(),
                        Skip::TargetTaken {
                            flow: owner.clone(),
                            target,
                        },
                    )),
                    _ => {
                        claimed.insert(target.clone(), rules.name.clone());
                        claimed.insert(source_key, rules.name.clone());
                        take.push((topic.clone(), target, *parts));
                    }
                }
            }
        }
    }
    (take, skip)
}

/// Lists the topics of a cluster with their partition counts (all topics:
/// naming one topic in a metadata request can auto-create it).
pub fn list_topics(
    consumer: &BaseConsumer<KContext>,
    timeout: Duration,
) -> Result<BTreeMap<String, i32>, String> {
    let md = consumer
        .fetch_metadata(None, timeout)
        .map_err(|e| kafka::failure_of(consumer, &e.to_string()))?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_string(), t.partitions().len() as i32))
        .collect())
}

/// [`list_topics`] off the async threads (the request blocks).
async fn list_blocking(c: &Arc<BaseConsumer<KContext>>) -> Result<BTreeMap<String, i32>, String> {
    let c = c.clone();
    tokio::task::spawn_blocking(move || list_topics(&c, Duration::from_secs(10)))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
}

/// Creates a topic; "already exists" is success. `Ok(true)` when this call
/// created it, `Ok(false)` when it existed already.
pub async fn create_topic(
    admin: &AdminClient<KContext>,
    name: &str,
    partitions: i32,
    replication_factor: i32,
    configs: &[(&str, &str)],
) -> Result<bool, String> {
    let spec: TopicSpec = (
        name.to_string(),
        partitions,
        configs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    create_topics(admin, &[spec], replication_factor)
        .await
        .pop()
        .unwrap_or_else(|| Err(format!("cannot create topic {name}: no result")))
}

/// A topic to create: name, partitions, configs.
pub type TopicSpec = (String, i32, Vec<(String, String)>);

/// Creates topics with one CreateTopics request per
/// [`crate::config_sync::sync::BATCH`]: per topic (name, partitions,
/// configs), `Ok(true)` when this call created it, `Ok(false)` when it
/// existed already, or the error; in order.
pub async fn create_topics(
    admin: &AdminClient<KContext>,
    topics: &[TopicSpec],
    replication_factor: i32,
) -> Vec<Result<bool, String>> {
    let mut out = Vec::with_capacity(topics.len());
    for chunk in topics.chunks(crate::config_sync::sync::BATCH) {
        let nts: Vec<NewTopic<'_>> = chunk
            .iter()
            .map(|(name, partitions, configs)| {
                let mut nt = NewTopic::new(
                    name,
                    *partitions,
                    TopicReplication::Fixed(replication_factor),
                );
                for (k, v) in configs {
                    nt = nt.set(k, v);
                }
                nt
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        match admin.create_topics(nts.iter(), &opts).await {
            Err(e) => out.extend(chunk.iter().map(|_| Err(e.to_string()))),
            Ok(rs) => {
                let mut by: HashMap<String, Result<bool, String>> = rs
                    .into_iter()
                    .map(|r| match r {
                        Ok(t) => (t, Ok(true)),
                        Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => (t, Ok(false)),
                        Err((t, e)) => {
                            let msg = format!("cannot create topic {t}: {e}");
                            (t, Err(msg))
                        }
                    })
                    .collect();
                out.extend(chunk.iter().map(|(name, _, _)| {
                    by.remove(name)
                        .unwrap_or_else(|| Err(format!("cannot create topic {name}: no result")))
                }));
            }
        }
    }
    out
}

/// Everything the discovery loop needs.
pub struct Discovery {
    /// Source cluster.
    pub source: ClusterConfig,
    /// Target cluster.
    pub target: ClusterConfig,
    /// Flows, in config order (earlier flows win target collisions).
    pub flows: Vec<(FlowConfig, FlowRules, watch::Sender<Arc<MirrorSet>>)>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Health.
    pub health: Arc<Health>,
    /// Notified when another pass is wanted now (e.g. topics were created).
    pub refresh: Arc<tokio::sync::Notify>,
}

impl Discovery {
    /// Runs until `shutdown`: one pass at once, then every
    /// `refresh_topics_interval` (the shortest of the flows').
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let every = self
            .flows
            .iter()
            .map(|(f, _, _)| f.refresh_topics_interval)
            .min()
            .unwrap_or(Duration::from_secs(10));
        let src: Arc<BaseConsumer<KContext>> = Arc::new(kafka::create(
            &kafka::client_config(&self.source, Role::Admin, "kmirror-discovery"),
            KContext::default(),
        )?);
        let dst: Arc<BaseConsumer<KContext>> = Arc::new(kafka::create(
            &kafka::client_config(&self.target, Role::Admin, "kmirror-discovery"),
            KContext::default(),
        )?);
        let mut reported: HashSet<String> = HashSet::new();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {}
                _ = self.refresh.notified() => {}
            }
            // A pass against a cluster that refuses or does not answer can
            // take its requests' timeouts; a stop does not wait for it
            // (nothing a pass does needs finishing: the next one redoes it).
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = self.pass(&src, &dst, &mut reported) => {}
            }
        }
    }

    fn cluster_ok(&self, role: &str, cluster: &ClusterConfig, reported: &mut HashSet<String>) {
        cluster_ok(&self.health, &self.metrics, role, cluster, reported);
    }

    fn cluster_failed(
        &self,
        role: &str,
        cluster: &ClusterConfig,
        error: &str,
        reported: &mut HashSet<String>,
    ) {
        cluster_failed(
            &self.health,
            &self.metrics,
            role,
            cluster,
            error,
            "keeping the current mirror set and trying again",
            reported,
        );
    }

    async fn pass(
        &self,
        src: &Arc<BaseConsumer<KContext>>,
        dst: &Arc<BaseConsumer<KContext>>,
        reported: &mut HashSet<String>,
    ) {
        let source_topics = match list_blocking(src).await {
            Ok(t) => {
                self.cluster_ok("source", &self.source, reported);
                t
            }
            Err(e) => {
                for (f, _, _) in &self.flows {
                    self.metrics
                        .errors
                        .with_label_values(&[&f.name, "discovery"])
                        .inc();
                }
                self.cluster_failed("source", &self.source, &e, reported);
                return;
            }
        };
        let target_topics = match list_blocking(dst).await {
            Ok(t) => {
                self.cluster_ok("target", &self.target, reported);
                t
            }
            Err(e) => {
                self.cluster_failed("target", &self.target, &e, reported);
                return;
            }
        };
        let mut claimed = HashMap::new();
        for (flow, rules, tx) in &self.flows {
            let (take, skip) = decide(
                rules,
                &self.source.alias,
                &self.target.alias,
                &source_topics,
                &mut claimed,
            );
            for (topic, why) in &skip {
                let stage = match why {
                    Skip::TargetTaken { .. } => "discovery",
                    Skip::SourceTaken { .. } => "flow_overlap",
                    _ => continue,
                };
                let key = format!("taken/{}/{topic}", flow.name);
                if reported.insert(key) {
                    error!(flow = %flow.name, topic = %topic, "not mirrored: {why}");
                    self.metrics
                        .errors
                        .with_label_values(&[&flow.name, stage])
                        .inc();
                }
            }
            // Missing target topics are created by the config-sync loop
            // (with the synced configs), which then asks for a new pass.
            let mut set = MirrorSet::new();
            for (source, target, parts) in take {
                let tp = target_topics.get(&target).copied().unwrap_or(0);
                if tp > 0 && tp < parts {
                    let key = format!("mismatch/{source}/{tp}/{parts}");
                    if reported.insert(key) {
                        error!(
                            flow = %flow.name, topic = %source, target = %target,
                            source_partitions = parts, target_partitions = tp,
                            "target topic has fewer partitions than the source: partitions {tp}..{} are held (not mirrored, not remapped) until the target has them",
                            parts - 1
                        );
                        self.metrics
                            .errors
                            .with_label_values(&[&flow.name, "partition_mismatch"])
                            .inc();
                    }
                }
                set.insert(
                    source.clone(),
                    Mirror {
                        source,
                        target,
                        partitions: parts,
                        target_partitions: tp,
                    },
                );
            }
            self.metrics
                .topics_mirrored
                .with_label_values(&[&flow.name])
                .set(set.len() as i64);
            tx.send_if_modified(|cur| {
                if **cur != set {
                    *cur = Arc::new(set);
                    true
                } else {
                    false
                }
            });
        }
    }
}

/// A cluster answered: ready again, and the next failure is reported.
pub(crate) fn cluster_ok(
    health: &Health,
    metrics: &Metrics,
    role: &str,
    cluster: &ClusterConfig,
    reported: &mut HashSet<String>,
) {
    health.set_cluster(role, Ok(()));
    metrics
        .cluster_up
        .with_label_values(&[role, &cluster.alias])
        .set(1);
    let key = format!("cluster:{role}");
    if reported.remove(&key) {
        info!(cluster = role, alias = %cluster.alias, bootstrap = %cluster.bootstrap_servers, "cluster reachable again");
    }
}

/// A cluster did not answer: `/readyz` says why (in words when the cause
/// is known: TLS, SASL), `kmirror_cluster_up` is 0,
/// `kmirror_cluster_errors_total{cause}` counts it, and a WARN names the
/// cluster once per error, saying what happens `next` (the clients retry
/// with librdkafka's reconnect backoff, and the caller asks again).
pub(crate) fn cluster_failed(
    health: &Health,
    metrics: &Metrics,
    role: &str,
    cluster: &ClusterConfig,
    error: &str,
    next: &str,
    reported: &mut HashSet<String>,
) {
    let cause = kafka::cause_of(error).map_or("unreachable", kafka::Cause::label);
    let why = format!(
        "{role} cluster {} at {}: {error}",
        cluster.alias, cluster.bootstrap_servers
    );
    health.set_cluster(role, Err(why.clone()));
    metrics
        .cluster_up
        .with_label_values(&[role, &cluster.alias])
        .set(0);
    metrics
        .cluster_errors
        .with_label_values(&[role, cause])
        .inc();
    if reported.insert(format!("cluster:{role}")) {
        warn!("cannot reach the {why}; {next}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(topics: &[&str], exclude: &[&str], rename: &str) -> FlowRules {
        FlowRules {
            name: "f".into(),
            filter: NameFilter::new(
                &topics.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                &exclude.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
            .unwrap(),
            rename: Rename::new(rename).unwrap(),
        }
    }

    fn topics(names: &[&str]) -> BTreeMap<String, i32> {
        names.iter().map(|n| (n.to_string(), 3)).collect()
    }

    #[test]
    fn selects_renames_and_prevents_cycles() {
        let r = rules(&[".*"], &["tmp\\..*"], "{source}.{topic}");
        let src = topics(&[
            "orders",
            "tmp.x",
            "__consumer_offsets",
            "west.orders",
            "heartbeats",
            "east.checkpoints.internal",
        ]);
        let (take, skip) = decide(&r, "east", "west", &src, &mut HashMap::new());
        assert_eq!(take, vec![("orders".into(), "east.orders".into(), 3)]);
        let why: BTreeMap<_, _> = skip.into_iter().collect();
        assert_eq!(why["west.orders"], Skip::Cycle);
        assert_eq!(why["tmp.x"], Skip::Excluded("tmp\\..*".into()));
        assert!(matches!(why["__consumer_offsets"], Skip::Internal(_)));
        assert!(matches!(why["heartbeats"], Skip::Internal(_)));
        assert!(matches!(
            why["east.checkpoints.internal"],
            Skip::Internal(_)
        ));
    }

    #[test]
    fn identity_rename_keeps_names() {
        let r = rules(&["a|b"], &[], "{topic}");
        let (take, skip) = decide(
            &r,
            "east",
            "west",
            &topics(&["a", "b", "c"]),
            &mut HashMap::new(),
        );
        assert_eq!(take.len(), 2);
        assert_eq!(take[0].1, "a");
        assert_eq!(skip, vec![("c".into(), Skip::NotIncluded)]);
    }

    #[test]
    fn a_source_topic_belongs_to_the_first_flow_that_selects_it() {
        let f1 = rules(&["orders"], &[], "{source}.{topic}");
        let mut f2 = rules(&["ord.*"], &[], "{topic}.copy");
        f2.name = "g".into();
        let mut claimed = HashMap::new();
        let src = topics(&["orders", "ordinal"]);
        let (t1, _) = decide(&f1, "east", "west", &src, &mut claimed);
        let (t2, s2) = decide(&f2, "east", "west", &src, &mut claimed);
        assert_eq!(t1.len(), 1);
        assert_eq!(t2, vec![("ordinal".into(), "ordinal.copy".into(), 3)]);
        assert!(s2
            .iter()
            .any(|(t, s)| t == "orders" && matches!(s, Skip::SourceTaken { flow } if flow == "f")));
        // Deciding again (the next pass) keeps the same owners.
        let (t1, _) = decide(&f1, "east", "west", &src, &mut claimed);
        assert_eq!(t1.len(), 1);
    }

    #[test]
    fn first_flow_wins_a_target_collision() {
        let mut claimed = HashMap::new();
        let f1 = rules(&["east\\.a"], &[], "{topic}");
        let mut f2 = rules(&["a"], &[], "{source}.{topic}");
        f2.name = "g".into();
        let (t1, _) = decide(&f1, "east", "west", &topics(&["east.a", "a"]), &mut claimed);
        assert_eq!(t1[0].1, "east.a");
        let (t2, s2) = decide(&f2, "east", "west", &topics(&["east.a", "a"]), &mut claimed);
        assert!(t2.is_empty());
        assert!(s2
            .iter()
            .any(|(t, s)| t == "a" && matches!(s, Skip::TargetTaken { .. })));
    }
}
