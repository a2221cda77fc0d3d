//! The pure decision of the config-sync loop: given the source topic, the
//! target topic (if it exists) and the flow's policy, which changes to make
//! on the target.
//!
//! Nothing here talks to a cluster, so the rules are unit-tested directly;
//! the loop and `kmirror plan` both call [`diff`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use regex::Regex;
use serde::Serialize;

use crate::policy::whole_name_regex;

/// MirrorMaker 2's default excluded properties
/// (`DefaultConfigPropertyFilter`): never copied to the target, whatever the
/// flow says.
pub const MM2_DEFAULT_EXCLUDES: &[&str] = &[
    "follower.replication.throttled.replicas",
    "leader.replication.throttled.replicas",
    "message.timestamp.difference.max.ms",
    "message.timestamp.type",
    "unclean.leader.election.enable",
    "min.insync.replicas",
];

/// Where a config value comes from (as DescribeConfigs reports it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConfigSource {
    /// Set explicitly on this topic (`DYNAMIC_TOPIC_CONFIG`): the only source
    /// that is copied.
    DynamicTopic,
    /// Inherited from a dynamic broker or cluster-wide setting.
    DynamicBroker,
    /// Inherited from the broker's static configuration file.
    StaticBroker,
    /// Kafka's built-in default.
    Default,
    /// Anything else the broker reports.
    Unknown,
}

/// One topic config property as DescribeConfigs reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    /// The value; `None` when the broker withholds it (sensitive) or has none.
    pub value: Option<String>,
    /// Where the value comes from.
    pub source: ConfigSource,
    /// The property cannot be changed.
    pub read_only: bool,
    /// The property is a secret; it is never copied or shown.
    pub sensitive: bool,
}

/// What the loop knows about one topic on one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicState {
    /// Partition count.
    pub partitions: i32,
    /// Config properties by name.
    pub configs: BTreeMap<String, ConfigEntry>,
}

/// The flow's config-sync settings, compiled.
#[derive(Debug, Clone)]
pub struct Policy {
    sync_configs: bool,
    sync_partitions: bool,
    extra_exclude: Vec<(String, Regex)>,
    managed: BTreeSet<String>,
}

/// One change to make on the target topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Action {
    /// Create the missing target topic with this partition count and these
    /// configs, in one CreateTopics call.
    CreateTopic {
        /// The source's partition count.
        partitions: i32,
        /// The synced configs (empty when config sync is off).
        configs: BTreeMap<String, String>,
    },
    /// SET a property with IncrementalAlterConfigs.
    SetConfig {
        /// Property name.
        key: String,
        /// The target's current value, `None` when it has none.
        from: Option<String>,
        /// The source's value.
        to: String,
    },
    /// DELETE a property (back to the target's default) with
    /// IncrementalAlterConfigs; only for properties kmirror set earlier.
    DeleteConfig {
        /// Property name.
        key: String,
        /// The target's current value.
        was: Option<String>,
    },
    /// Raise the target partition count with CreatePartitions.
    CreatePartitions {
        /// The target's current count.
        from: i32,
        /// The source's count.
        to: i32,
    },
}

impl Policy {
    /// Compiles the flow's settings.
    ///
    /// - `sync_configs`: the flow's `sync_topic_configs`;
    /// - `sync_partitions`: the flow's `sync_partitions`;
    /// - `extra_exclude`: the flow's `config_exclude` regexes, each matched
    ///   against the whole property name (on top of
    ///   [`MM2_DEFAULT_EXCLUDES`]);
    /// - `managed`: the properties kmirror itself set on this target topic
    ///   earlier; only these may ever be deleted.
    ///
    /// The error names the regex that does not compile.
    pub fn new(
        sync_configs: bool,
        sync_partitions: bool,
        extra_exclude: &[String],
        managed: BTreeSet<String>,
    ) -> Result<Self, String> {
        let extra_exclude = extra_exclude
            .iter()
            .map(|p| {
                whole_name_regex(p)
                    .map(|r| (p.clone(), r))
                    .map_err(|e| format!("invalid config_exclude regex {p:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            sync_configs,
            sync_partitions,
            extra_exclude,
            managed,
        })
    }

    /// Whether topic configs are synced.
    pub fn sync_configs(&self) -> bool {
        self.sync_configs
    }

    /// Whether partition counts are synced.
    pub fn sync_partitions(&self) -> bool {
        self.sync_partitions
    }

    /// The properties kmirror set earlier (the only ones it may delete).
    pub fn managed(&self) -> &BTreeSet<String> {
        &self.managed
    }

    /// Why `key` is never copied by name: the MM2 default exclusion or the
    /// flow's `config_exclude` pattern that matches it; `None` when its name
    /// is not excluded. For `kmirror plan` and logs.
    pub fn exclusion(&self, key: &str) -> Option<String> {
        if MM2_DEFAULT_EXCLUDES.contains(&key) {
            return Some(format!("MM2 default exclusion {key:?}"));
        }
        self.extra_exclude
            .iter()
            .find(|(_, r)| r.is_match(key))
            .map(|(p, _)| format!("config_exclude {p:?}"))
    }

    /// Whether a source property is copied: explicitly set on the topic
    /// (`DynamicTopic`), with a value, not read-only, not sensitive, and its
    /// name not excluded (see [`Policy::exclusion`]).
    pub fn is_syncable(&self, key: &str, entry: &ConfigEntry) -> bool {
        entry.source == ConfigSource::DynamicTopic
            && entry.value.is_some()
            && !entry.read_only
            && !entry.sensitive
            && self.exclusion(key).is_none()
    }
}

/// The source properties that are copied, with their values.
fn syncable(source: &TopicState, policy: &Policy) -> BTreeMap<String, String> {
    source
        .configs
        .iter()
        .filter(|(k, e)| policy.is_syncable(k, e))
        .filter_map(|(k, e)| e.value.clone().map(|v| (k.clone(), v)))
        .collect()
}

/// The changes that bring the target topic in line with the source topic.
///
/// - `target == None`: exactly one [`Action::CreateTopic`] with the source
///   partition count and every syncable config (none when config sync is
///   off).
/// - Config sync on: [`Action::SetConfig`] for each syncable property whose
///   target value differs; [`Action::DeleteConfig`] for each property in the
///   policy's managed set that is no longer syncable-and-set on the source
///   but is still explicitly set on the target. No other target property is
///   touched.
/// - Partition sync on and the source has more partitions:
///   [`Action::CreatePartitions`]. Never shrinks.
///
/// Order is deterministic: config actions by property name, then
/// `CreatePartitions`. An empty result means the target is in line.
pub fn diff(source: &TopicState, target: Option<&TopicState>, policy: &Policy) -> Vec<Action> {
    let wanted = if policy.sync_configs {
        syncable(source, policy)
    } else {
        BTreeMap::new()
    };
    let Some(target) = target else {
        return vec![Action::CreateTopic {
            partitions: source.partitions,
            configs: wanted,
        }];
    };

    // Keyed by property name so that SETs and DELETEs come out in name order.
    let mut config_actions: BTreeMap<&str, Action> = BTreeMap::new();
    if policy.sync_configs {
        for (key, to) in &wanted {
            let from = target.configs.get(key).and_then(|e| e.value.clone());
            if from.as_deref() != Some(to.as_str()) {
                config_actions.insert(
                    key,
                    Action::SetConfig {
                        key: key.clone(),
                        from,
                        to: to.clone(),
                    },
                );
            }
        }
        for key in &policy.managed {
            if wanted.contains_key(key) {
                continue;
            }
            if let Some(entry) = target.configs.get(key) {
                if entry.source == ConfigSource::DynamicTopic {
                    config_actions.insert(
                        key,
                        Action::DeleteConfig {
                            key: key.clone(),
                            was: entry.value.clone(),
                        },
                    );
                }
            }
        }
    }

    let mut actions: Vec<Action> = config_actions.into_values().collect();
    if policy.sync_partitions && source.partitions > target.partitions {
        actions.push(Action::CreatePartitions {
            from: target.partitions,
            to: source.partitions,
        });
    }
    actions
}

impl Action {
    /// The `op` label value of `kmirror_config_sync_operations_total`:
    /// `create_topic`, `set_config`, `delete_config` or `create_partitions`.
    pub fn op(&self) -> &'static str {
        match self {
            Action::CreateTopic { .. } => "create_topic",
            Action::SetConfig { .. } => "set_config",
            Action::DeleteConfig { .. } => "delete_config",
            Action::CreatePartitions { .. } => "create_partitions",
        }
    }
}

/// Writes a value, or `(unset)` when there is none.
fn or_unset(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("(unset)")
}

impl fmt::Display for Action {
    /// One line for logs and `kmirror plan`:
    /// - `create topic: 6 partitions, cleanup.policy=compact, retention.ms=1000`
    /// - `max.message.bytes: 1048588 -> 2000000` (`(unset)` when the target
    ///   has no value)
    /// - `retention.ms: 1000 -> (deleted)`
    /// - `partitions: 3 -> 6`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::CreateTopic {
                partitions,
                configs,
            } => {
                write!(f, "create topic: {partitions} partitions")?;
                for (k, v) in configs {
                    write!(f, ", {k}={v}")?;
                }
                Ok(())
            }
            Action::SetConfig { key, from, to } => {
                write!(f, "{key}: {} -> {to}", or_unset(from))
            }
            Action::DeleteConfig { key, was } => {
                write!(f, "{key}: {} -> (deleted)", or_unset(was))
            }
            Action::CreatePartitions { from, to } => write!(f, "partitions: {from} -> {to}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(value: &str, source: ConfigSource) -> ConfigEntry {
        ConfigEntry {
            value: Some(value.to_string()),
            source,
            read_only: false,
            sensitive: false,
        }
    }

    fn set(value: &str) -> ConfigEntry {
        entry(value, ConfigSource::DynamicTopic)
    }

    fn topic(partitions: i32, configs: &[(&str, ConfigEntry)]) -> TopicState {
        TopicState {
            partitions,
            configs: configs
                .iter()
                .map(|(k, e)| (k.to_string(), e.clone()))
                .collect(),
        }
    }

    fn policy() -> Policy {
        Policy::new(true, true, &[], BTreeSet::new()).unwrap()
    }

    fn policy_managing(keys: &[&str]) -> Policy {
        let managed = keys.iter().map(|k| k.to_string()).collect();
        Policy::new(true, true, &[], managed).unwrap()
    }

    fn strings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn new_topic_is_created_with_partitions_and_syncable_configs() {
        let source = topic(
            6,
            &[
                ("retention.ms", set("1000")),
                ("cleanup.policy", set("compact")),
                ("max.message.bytes", set("2000000")),
                ("min.insync.replicas", set("2")),
                ("segment.bytes", entry("1073741824", ConfigSource::Default)),
            ],
        );
        let got = diff(&source, None, &policy());
        assert_eq!(
            got,
            vec![Action::CreateTopic {
                partitions: 6,
                configs: strings(&[
                    ("cleanup.policy", "compact"),
                    ("max.message.bytes", "2000000"),
                    ("retention.ms", "1000"),
                ]),
            }]
        );
        assert_eq!(got[0].op(), "create_topic");
        assert_eq!(
            got[0].to_string(),
            "create topic: 6 partitions, cleanup.policy=compact, max.message.bytes=2000000, retention.ms=1000"
        );
    }

    #[test]
    fn new_topic_without_config_sync_has_no_configs() {
        let source = topic(3, &[("retention.ms", set("1000"))]);
        let p = Policy::new(false, false, &[], BTreeSet::new()).unwrap();
        assert_eq!(
            diff(&source, None, &p),
            vec![Action::CreateTopic {
                partitions: 3,
                configs: BTreeMap::new(),
            }]
        );
    }

    #[test]
    fn changed_value_is_set() {
        let source = topic(3, &[("max.message.bytes", set("2000000"))]);
        let target = topic(3, &[("max.message.bytes", set("1048588"))]);
        let got = diff(&source, Some(&target), &policy());
        assert_eq!(
            got,
            vec![Action::SetConfig {
                key: "max.message.bytes".into(),
                from: Some("1048588".into()),
                to: "2000000".into(),
            }]
        );
        assert_eq!(got[0].op(), "set_config");
        assert_eq!(got[0].to_string(), "max.message.bytes: 1048588 -> 2000000");
    }

    #[test]
    fn value_missing_on_target_is_set_from_unset() {
        let source = topic(3, &[("retention.ms", set("1000"))]);
        let target = topic(3, &[]);
        let got = diff(&source, Some(&target), &policy());
        assert_eq!(
            got,
            vec![Action::SetConfig {
                key: "retention.ms".into(),
                from: None,
                to: "1000".into(),
            }]
        );
        assert_eq!(got[0].to_string(), "retention.ms: (unset) -> 1000");
    }

    #[test]
    fn target_default_that_differs_is_set() {
        let source = topic(3, &[("retention.ms", set("1000"))]);
        let target = topic(
            3,
            &[("retention.ms", entry("604800000", ConfigSource::Default))],
        );
        assert_eq!(
            diff(&source, Some(&target), &policy()),
            vec![Action::SetConfig {
                key: "retention.ms".into(),
                from: Some("604800000".into()),
                to: "1000".into(),
            }]
        );
    }

    #[test]
    fn unchanged_value_needs_no_action() {
        let source = topic(
            3,
            &[
                ("retention.ms", set("1000")),
                ("cleanup.policy", set("compact")),
            ],
        );
        let target = source.clone();
        assert_eq!(
            diff(&source, Some(&target), &policy_managing(&["retention.ms"])),
            vec![]
        );
    }

    #[test]
    fn removed_property_that_kmirror_managed_is_deleted() {
        let source = topic(3, &[]);
        let target = topic(3, &[("retention.ms", set("1000"))]);
        let got = diff(&source, Some(&target), &policy_managing(&["retention.ms"]));
        assert_eq!(
            got,
            vec![Action::DeleteConfig {
                key: "retention.ms".into(),
                was: Some("1000".into()),
            }]
        );
        assert_eq!(got[0].op(), "delete_config");
        assert_eq!(got[0].to_string(), "retention.ms: 1000 -> (deleted)");
    }

    #[test]
    fn property_back_at_its_default_on_the_source_is_deleted_when_managed() {
        let source = topic(
            3,
            &[("retention.ms", entry("604800000", ConfigSource::Default))],
        );
        let target = topic(3, &[("retention.ms", set("1000"))]);
        assert_eq!(
            diff(&source, Some(&target), &policy_managing(&["retention.ms"])),
            vec![Action::DeleteConfig {
                key: "retention.ms".into(),
                was: Some("1000".into()),
            }]
        );
    }

    #[test]
    fn managed_property_already_gone_from_target_needs_no_action() {
        let source = topic(3, &[]);
        let target = topic(
            3,
            &[("retention.ms", entry("604800000", ConfigSource::Default))],
        );
        assert_eq!(
            diff(&source, Some(&target), &policy_managing(&["retention.ms"])),
            vec![]
        );
        let target = topic(3, &[]);
        assert_eq!(
            diff(&source, Some(&target), &policy_managing(&["retention.ms"])),
            vec![]
        );
    }

    #[test]
    fn removed_property_that_kmirror_did_not_manage_is_untouched() {
        let source = topic(3, &[]);
        let target = topic(3, &[("retention.ms", set("1000"))]);
        assert_eq!(diff(&source, Some(&target), &policy()), vec![]);
        // A different managed property does not widen what may be deleted.
        assert_eq!(
            diff(
                &source,
                Some(&target),
                &policy_managing(&["cleanup.policy"])
            ),
            vec![]
        );
    }

    #[test]
    fn target_only_property_is_untouched() {
        let source = topic(3, &[("retention.ms", set("1000"))]);
        let target = topic(
            3,
            &[
                ("retention.ms", set("1000")),
                ("segment.ms", set("3600000")),
            ],
        );
        assert_eq!(
            diff(&source, Some(&target), &policy_managing(&["retention.ms"])),
            vec![]
        );
    }

    #[test]
    fn mm2_default_exclusions_are_never_copied() {
        for key in MM2_DEFAULT_EXCLUDES {
            let source = topic(3, &[(key, set("2"))]);
            assert_eq!(
                diff(&source, None, &policy()),
                vec![Action::CreateTopic {
                    partitions: 3,
                    configs: BTreeMap::new(),
                }],
                "{key}"
            );
            let target = topic(3, &[(key, set("1"))]);
            assert_eq!(diff(&source, Some(&target), &policy()), vec![], "{key}");
            assert!(policy().exclusion(key).is_some());
        }
    }

    #[test]
    fn flow_exclude_regex_matches_whole_names() {
        let p = Policy::new(
            true,
            true,
            &["retention\\..*".to_string(), "segment".to_string()],
            BTreeSet::new(),
        )
        .unwrap();
        let source = topic(
            3,
            &[
                ("retention.ms", set("1000")),
                ("retention.bytes", set("5000")),
                // "segment" must match the whole name, so segment.ms is copied.
                ("segment.ms", set("3600000")),
                ("cleanup.policy", set("compact")),
            ],
        );
        let target = topic(3, &[]);
        assert_eq!(
            diff(&source, Some(&target), &p),
            vec![
                Action::SetConfig {
                    key: "cleanup.policy".into(),
                    from: None,
                    to: "compact".into(),
                },
                Action::SetConfig {
                    key: "segment.ms".into(),
                    from: None,
                    to: "3600000".into(),
                },
            ]
        );
        assert_eq!(
            p.exclusion("retention.ms"),
            Some("config_exclude \"retention\\\\..*\"".to_string())
        );
        assert_eq!(p.exclusion("segment.ms"), None);
    }

    #[test]
    fn bad_exclude_regex_is_an_error_naming_it() {
        let err = Policy::new(true, true, &["(".to_string()], BTreeSet::new()).unwrap_err();
        assert!(err.contains("\"(\""), "{err}");
    }

    #[test]
    fn defaults_read_only_and_sensitive_are_skipped() {
        let read_only = ConfigEntry {
            read_only: true,
            ..set("x")
        };
        let sensitive = ConfigEntry {
            sensitive: true,
            ..set("secret")
        };
        let source = topic(
            3,
            &[
                ("retention.ms", entry("604800000", ConfigSource::Default)),
                (
                    "segment.bytes",
                    entry("1000000", ConfigSource::StaticBroker),
                ),
                (
                    "log.retention.hours",
                    entry("24", ConfigSource::DynamicBroker),
                ),
                ("compression.type", entry("lz4", ConfigSource::Unknown)),
                ("some.read.only", read_only),
                ("some.password", sensitive),
                (
                    "no.value",
                    ConfigEntry {
                        value: None,
                        ..set("")
                    },
                ),
            ],
        );
        assert_eq!(
            diff(&source, None, &policy()),
            vec![Action::CreateTopic {
                partitions: 3,
                configs: BTreeMap::new(),
            }]
        );
        assert_eq!(diff(&source, Some(&topic(3, &[])), &policy()), vec![]);
    }

    #[test]
    fn partition_growth_creates_partitions_last() {
        let source = topic(
            6,
            &[
                ("retention.ms", set("2000")),
                ("cleanup.policy", set("compact")),
            ],
        );
        let target = topic(
            3,
            &[
                ("retention.ms", set("1000")),
                ("cleanup.policy", set("delete")),
            ],
        );
        let got = diff(&source, Some(&target), &policy());
        assert_eq!(
            got,
            vec![
                Action::SetConfig {
                    key: "cleanup.policy".into(),
                    from: Some("delete".into()),
                    to: "compact".into(),
                },
                Action::SetConfig {
                    key: "retention.ms".into(),
                    from: Some("1000".into()),
                    to: "2000".into(),
                },
                Action::CreatePartitions { from: 3, to: 6 },
            ]
        );
        assert_eq!(got[2].op(), "create_partitions");
        assert_eq!(got[2].to_string(), "partitions: 3 -> 6");
    }

    #[test]
    fn shrink_is_ignored() {
        let source = topic(2, &[]);
        let target = topic(6, &[]);
        assert_eq!(diff(&source, Some(&target), &policy()), vec![]);
    }

    #[test]
    fn sets_and_deletes_come_in_name_order() {
        let source = topic(3, &[("b.key", set("2")), ("d.key", set("4"))]);
        let target = topic(3, &[("a.key", set("1")), ("c.key", set("3"))]);
        let got = diff(
            &source,
            Some(&target),
            &policy_managing(&["a.key", "c.key"]),
        );
        let keys: Vec<_> = got
            .iter()
            .map(|a| match a {
                Action::SetConfig { key, .. } | Action::DeleteConfig { key, .. } => key.as_str(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(keys, ["a.key", "b.key", "c.key", "d.key"]);
    }

    #[test]
    fn sync_configs_false_touches_no_config() {
        let p = Policy::new(false, true, &[], ["retention.ms".to_string()].into()).unwrap();
        let source = topic(6, &[("cleanup.policy", set("compact"))]);
        let target = topic(3, &[("retention.ms", set("1000"))]);
        assert_eq!(
            diff(&source, Some(&target), &p),
            vec![Action::CreatePartitions { from: 3, to: 6 }]
        );
    }

    #[test]
    fn sync_partitions_false_leaves_partition_count() {
        let p = Policy::new(true, false, &[], BTreeSet::new()).unwrap();
        let source = topic(6, &[("retention.ms", set("1000"))]);
        let target = topic(3, &[("retention.ms", set("1000"))]);
        assert_eq!(diff(&source, Some(&target), &p), vec![]);
        // A missing topic is still created with the source's count.
        assert_eq!(
            diff(&source, None, &p),
            vec![Action::CreateTopic {
                partitions: 6,
                configs: strings(&[("retention.ms", "1000")]),
            }]
        );
    }

    #[test]
    fn actions_serialize_with_their_op_label() {
        let a = Action::CreatePartitions { from: 3, to: 6 };
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["op"], a.op());
        assert_eq!(json["to"], 6);
    }
}
