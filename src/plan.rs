//! `kmirror plan`: a dry run. Connects to both clusters and shows, per
//! flow, what kmirror would mirror and change. It only reads.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::consumer::BaseConsumer;
use serde::Serialize;

use crate::config::Config;
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
        let mirrored: Vec<(String, String)> = topics
            .iter()
            .map(|t| (t.source.clone(), t.target.clone()))
            .collect();
        flows.push(FlowPlan {
            flow: f.name.clone(),
            group: f.group_id(&config.source.alias, &config.target.alias),
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
    }
    s
}
