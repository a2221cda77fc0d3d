//! `kmirror plan`: a dry run. Connects to both clusters and shows, per
//! flow, what kmirror would mirror and change. It only reads.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::consumer::BaseConsumer;
use serde::Serialize;

use crate::config::{Config, StartFrom};
use crate::config_sync::acl::to_create;
use crate::config_sync::sync::{
    describe_acl_pair, managed_topic, plan_topic, policy_for, Managed, TopicPlan,
};
use crate::discovery::{decide, list_topics, FlowRules, Mirror};
use crate::kafka::{self, KContext, Role};

/// A topic a flow does not mirror, and why.
#[derive(Debug, Serialize)]
pub struct Excluded {
    /// Source topic.
    pub topic: String,
    /// The rule that excluded it.
    pub reason: String,
}

/// One flow's plan.
#[derive(Debug, Serialize)]
pub struct FlowPlan {
    /// Flow name.
    pub flow: String,
    /// Source consumer group.
    pub group: String,
    /// Topics mirrored, with their changes.
    pub topics: Vec<TopicPlan>,
    /// Topics not mirrored.
    pub excluded: Vec<Excluded>,
    /// Topic ACLs: what would be done.
    pub acls: String,
    /// `start_from` of the flow.
    pub start_from: String,
    /// Where each mirrored partition would start now.
    pub starts: Vec<PartitionStart>,
}

/// Where one source partition starts when the flow (re)starts.
#[derive(Debug, Serialize)]
pub struct PartitionStart {
    /// Source topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The flow's group's committed offset (where it resumes), if any.
    pub committed: Option<i64>,
    /// Without a commit: the offset `start_from` gives (`None`: the end,
    /// only records written later).
    pub start: Option<i64>,
}

/// Reads the flow group's commits on the source and resolves `start_from`
/// for the partitions without one (what the flow would do on assignment;
/// exactly-once flows resume after what the target holds instead).
fn plan_starts(
    source: &crate::config::ClusterConfig,
    group: &str,
    topics: &[(String, i32)],
    from: StartFrom,
) -> anyhow::Result<Vec<PartitionStart>> {
    use rdkafka::consumer::Consumer;
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let timeout = Duration::from_secs(10);
    let mut cfg = kafka::client_config(source, Role::Consumer, "kmirror-plan");
    cfg.set("group.id", group);
    cfg.set("enable.auto.commit", "false");
    let c: BaseConsumer<KContext> = kafka::create(&cfg, KContext::default())?;
    let mut tpl = TopicPartitionList::new();
    for (t, n) in topics {
        for p in 0..*n {
            tpl.add_partition(t, p);
        }
    }
    if tpl.count() == 0 {
        return Ok(Vec::new());
    }
    let committed = c.committed_offsets(tpl.clone(), timeout)?;
    let mut out = Vec::new();
    let mut fresh = TopicPartitionList::new();
    for e in committed.elements() {
        let committed = match e.offset() {
            Offset::Offset(o) if o >= 0 => Some(o),
            _ => None,
        };
        out.push(PartitionStart {
            topic: e.topic().to_string(),
            partition: e.partition(),
            committed,
            start: None,
        });
        if committed.is_none() {
            let q = match from {
                StartFrom::Earliest => Offset::Beginning,
                StartFrom::Latest => Offset::End,
                StartFrom::Timestamp(ts) => Offset::Offset(ts),
            };
            fresh.add_partition_offset(e.topic(), e.partition(), q)?;
        }
    }
    let resolved: HashMap<(String, i32), Option<i64>> = match from {
        _ if fresh.count() == 0 => HashMap::new(),
        StartFrom::Timestamp(_) => kafka::offsets_by_time(&c, fresh, timeout)
            .map_err(|e| anyhow::anyhow!(e))?
            .into_iter()
            .collect(),
        StartFrom::Latest => HashMap::new(),
        StartFrom::Earliest => fresh
            .elements()
            .iter()
            .map(|e| {
                let lo = c
                    .fetch_watermarks(e.topic(), e.partition(), timeout)
                    .map(|(lo, _)| lo)
                    .ok();
                ((e.topic().to_string(), e.partition()), lo)
            })
            .collect(),
    };
    for ps in &mut out {
        if ps.committed.is_none() {
            ps.start = resolved
                .get(&(ps.topic.clone(), ps.partition))
                .copied()
                .flatten();
        }
    }
    Ok(out)
}

/// The whole plan.
#[derive(Debug, Serialize)]
pub struct Plan {
    /// Source alias.
    pub source: String,
    /// Target alias.
    pub target: String,
    /// Per flow.
    pub flows: Vec<FlowPlan>,
}

/// Builds the plan (reads both clusters, writes nothing).
pub async fn build(config: &Config) -> anyhow::Result<Plan> {
    let timeout = Duration::from_secs(10);
    let (s, t) = (config.source.clone(), config.target.clone());
    let (source_topics, target_topics, managed) = tokio::task::spawn_blocking(move || {
        let sc: BaseConsumer<KContext> = kafka::create(
            &kafka::client_config(&s, Role::Admin, "kmirror-plan"),
            KContext::default(),
        )?;
        let tc: BaseConsumer<KContext> = kafka::create(
            &kafka::client_config(&t, Role::Admin, "kmirror-plan"),
            KContext::default(),
        )?;
        let st =
            list_topics(&sc, timeout).map_err(|e| anyhow::anyhow!("source {}: {e}", s.alias))?;
        let tt =
            list_topics(&tc, timeout).map_err(|e| anyhow::anyhow!("target {}: {e}", t.alias))?;
        let managed = Managed::load(&t, &managed_topic(&s.alias))
            .map_err(|e| anyhow::anyhow!("target {}: {e}", t.alias))?;
        anyhow::Ok((st, tt, managed))
    })
    .await??;
    let src: AdminClient<KContext> = kafka::create(
        &kafka::client_config(&config.source, Role::Admin, "kmirror-plan"),
        KContext::default(),
    )?;
    let dst: AdminClient<KContext> = kafka::create(
        &kafka::client_config(&config.target, Role::Admin, "kmirror-plan"),
        KContext::default(),
    )?;
    let mut claimed = HashMap::new();
    let mut flows = Vec::new();
    for f in &config.flows {
        let rules = FlowRules::new(f).map_err(|e| anyhow::anyhow!("flow {}: {e}", f.name))?;
        let (take, skip) = decide(
            &rules,
            &config.source.alias,
            &config.target.alias,
            &source_topics,
            &mut claimed,
        );
        let mut topics = Vec::new();
        for (source, target, partitions) in take {
            let m = Mirror {
                target_partitions: target_topics.get(&target).copied().unwrap_or(0),
                source,
                target,
                partitions,
            };
            let policy = policy_for(f, managed.0.get(&m.target).cloned().unwrap_or_default())
                .map_err(|e| anyhow::anyhow!("flow {}: {e}", f.name))?;
            topics.push(
                plan_topic(&src, &dst, &m, &policy)
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?,
            );
        }
        let group = f.group_id(&config.source.alias, &config.target.alias);
        let parts: Vec<(String, i32)> = topics
            .iter()
            .map(|t| (t.source.clone(), t.source_partitions))
            .collect();
        let (sc, g, from) = (config.source.clone(), group.clone(), f.start_from);
        let starts = tokio::task::spawn_blocking(move || plan_starts(&sc, &g, &parts, from))
            .await?
            .map_err(|e| anyhow::anyhow!("flow {}: start positions: {e}", f.name))?;
        let mirrored: Vec<(String, String)> = topics
            .iter()
            .map(|t| (t.source.clone(), t.target.clone()))
            .collect();
        flows.push(FlowPlan {
            flow: f.name.clone(),
            group,
            start_from: f.start_from.to_string(),
            starts,
            topics,
            excluded: skip
                .into_iter()
                .map(|(topic, why)| Excluded {
                    topic,
                    reason: why.to_string(),
                })
                .collect(),
            acls: if !f.sync_topic_acls {
                "disabled (sync_topic_acls = false)".into()
            } else {
                let described = describe_acl_pair(&src, &dst);
                match described {
                    Ok((s, d)) => {
                        let want = to_create(&s, &d, &mirrored);
                        if want.is_empty() {
                            "in sync (nothing to create)".into()
                        } else {
                            format!(
                                "would create: {}",
                                want.iter()
                                    .map(|a| a.to_string())
                                    .collect::<Vec<_>>()
                                    .join("; ")
                            )
                        }
                    }
                    Err(e) => format!("cannot be synced: {e}"),
                }
            },
        });
    }
    Ok(Plan {
        source: config.source.alias.clone(),
        target: config.target.alias.clone(),
        flows,
    })
}

/// Human-readable rendering.
pub fn render(p: &Plan) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "plan: {} -> {} (dry run: nothing is changed)",
        p.source, p.target
    );
    for f in &p.flows {
        let _ = writeln!(s, "\nflow {} (group {})", f.flow, f.group);
        if f.topics.is_empty() {
            let _ = writeln!(s, "  no source topic matches");
        }
        for t in &f.topics {
            let parts = if t.target_partitions == 0 {
                format!("{}/- (target topic missing)", t.source_partitions)
            } else {
                format!("{}/{}", t.source_partitions, t.target_partitions)
            };
            let _ = writeln!(
                s,
                "  {} -> {}   partitions source/target {parts}",
                t.source, t.target
            );
            if t.actions.is_empty() {
                let _ = writeln!(s, "      in sync");
            }
            for a in &t.actions {
                let _ = writeln!(s, "      {a}");
            }
            for (k, why) in &t.excluded_configs {
                let _ = writeln!(s, "      not copied: {k} ({why})");
            }
        }
        if !f.excluded.is_empty() {
            let _ = writeln!(s, "  not mirrored:");
            for e in &f.excluded {
                let _ = writeln!(s, "      {}: {}", e.topic, e.reason);
            }
        }
        let _ = writeln!(s, "  ACLs: {}", f.acls);
        render_starts(&mut s, f);
    }
    s
}

/// Per topic: how many partitions resume at the group's commit, and where
/// the others start under `start_from`.
fn render_starts(s: &mut String, f: &FlowPlan) {
    let _ = writeln!(
        s,
        "  start_from: {} (partitions the group has no commit for; exactly-once resumes after what the target holds)",
        f.start_from
    );
    let mut by_topic: std::collections::BTreeMap<&str, Vec<&PartitionStart>> = Default::default();
    for p in &f.starts {
        by_topic.entry(p.topic.as_str()).or_default().push(p);
    }
    for (topic, parts) in by_topic {
        let resumed = parts.iter().filter(|p| p.committed.is_some()).count();
        let fresh: Vec<String> = parts
            .iter()
            .filter(|p| p.committed.is_none())
            .map(|p| match p.start {
                Some(o) => format!("{}@{o}", p.partition),
                None => format!("{}@end", p.partition),
            })
            .collect();
        if fresh.is_empty() {
            let _ = writeln!(s, "      {topic}: every partition resumes at its commit");
        } else {
            let _ = writeln!(
                s,
                "      {topic}: {resumed} resume at their commit; no commit, start at partition@offset: {}",
                fresh.join(" ")
            );
        }
    }
}
