//! Cross-field rules of a parsed configuration. Every rule adds a
//! [`Problem`] with the line of the key it is about; none stops at the first.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::check::{Lines, Problem};
use super::{ClusterConfig, Config};
use crate::policy::{is_valid_topic_name, NameFilter, Rename};

/// librdkafka properties that kmirror sets itself; a user value would break
/// a guarantee (delivery, ordering, offsets) or be overwritten silently.
pub const RESERVED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "set it with `bootstrap_servers`"),
    ("metadata.broker.list", "set it with `bootstrap_servers`"),
    (
        "group.id",
        "kmirror names the group `kmirror.<source>.<target>.<flow>`",
    ),
    (
        "group.instance.id",
        "set it with `[runtime] group_instance_id`",
    ),
    (
        "enable.auto.commit",
        "kmirror commits only acknowledged records",
    ),
    (
        "auto.commit.interval.ms",
        "set it with `[runtime] commit_interval`",
    ),
    (
        "enable.auto.offset.store",
        "kmirror stores only acknowledged offsets",
    ),
    (
        "enable.idempotence",
        "the target producer is always idempotent",
    ),
    ("acks", "the target producer always uses acks=all"),
    (
        "request.required.acks",
        "the target producer always uses acks=all",
    ),
    ("compression.type", "set it with the flow's `compression`"),
    ("compression.codec", "set it with the flow's `compression`"),
    (
        "partition.assignment.strategy",
        "kmirror uses cooperative-sticky",
    ),
    ("enable.partition.eof", "kmirror needs partition EOF events"),
    ("isolation.level", "kmirror reads committed records only"),
    (
        "queued.max.messages.kbytes",
        "set it with `[runtime] consumer_queue_kbytes`",
    ),
    (
        "queue.buffering.max.kbytes",
        "set it with `[runtime] producer_queue_kbytes`",
    ),
];

fn at(lines: &Lines, key: &str) -> Option<usize> {
    lines.get(key).copied()
}

fn cluster(c: &ClusterConfig, name: &str, lines: &Lines, out: &mut Vec<Problem>) {
    let key = format!("{name}.alias");
    if c.alias.is_empty() {
        out.push(Problem::new(
            at(lines, &key),
            &key,
            "alias must not be empty",
        ));
    } else if !is_valid_topic_name(&c.alias) {
        out.push(Problem::new(
            at(lines, &key),
            &key,
            format!(
                "alias {:?} cannot be part of a topic name (allowed: letters, digits, . _ -)",
                c.alias
            ),
        ));
    }
    let key = format!("{name}.bootstrap_servers");
    let servers: Vec<&str> = c
        .bootstrap_servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if servers.is_empty() {
        out.push(Problem::new(
            at(lines, &key),
            &key,
            "empty bootstrap list: give at least one host:port",
        ));
    }
    for s in servers {
        let ok = s
            .rsplit_once(':')
            .map(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            .unwrap_or(false);
        if !ok {
            out.push(Problem::new(
                at(lines, &key),
                &key,
                format!("{s:?} is not host:port"),
            ));
        }
    }
    for (k, _) in c.properties.iter() {
        if let Some((_, why)) = RESERVED_PROPERTIES.iter().find(|(r, _)| *r == k) {
            let key = format!("{name}.properties.{k}");
            out.push(Problem::new(
                at(lines, &key),
                &key,
                format!("`{k}` is set by kmirror itself and cannot be overridden: {why}"),
            ));
        }
    }
}

/// Applies every cross-field rule, appending problems to `out`.
pub fn validate(c: &Config, lines: &Lines, out: &mut Vec<Problem>) {
    cluster(&c.source, "source", lines, out);
    cluster(&c.target, "target", lines, out);
    if !c.source.alias.is_empty() && c.source.alias == c.target.alias {
        out.push(Problem::new(
            at(lines, "target.alias"),
            "target.alias",
            format!(
                "source and target have the same alias {:?}: internal topics and renamed topics would collide",
                c.source.alias
            ),
        ));
    }
    if !c.http.listen.is_empty() && c.http.listen.parse::<SocketAddr>().is_err() {
        out.push(Problem::new(
            at(lines, "http.listen"),
            "http.listen",
            format!(
                "{:?} is not an address such as \"127.0.0.1:9464\"",
                c.http.listen
            ),
        ));
    }

    let mut names: HashMap<&str, usize> = HashMap::new();
    // (target topic) -> (flow index, source topic) for literal topic names.
    let mut targets: HashMap<String, (usize, String)> = HashMap::new();
    let mut filters: Vec<Option<NameFilter>> = Vec::new();
    let mut renames: Vec<Option<Rename>> = Vec::new();
    for (i, fl) in c.flows.iter().enumerate() {
        let base = format!("flow[{i}]");
        let key = format!("{base}.name");
        if fl.name.is_empty() || !is_valid_topic_name(&fl.name) {
            out.push(Problem::new(
                at(lines, &key),
                &key,
                format!(
                    "flow name {:?} must be non-empty and use letters, digits, . _ - (it names the consumer group)",
                    fl.name
                ),
            ));
        }
        if let Some(first) = names.insert(&fl.name, i) {
            out.push(Problem::new(
                at(lines, &key),
                &key,
                format!("duplicate flow name {:?} (also flow[{first}])", fl.name),
            ));
        }
        if fl.topics.is_empty() {
            let key = format!("{base}.topics");
            out.push(Problem::new(
                at(lines, &key),
                &key,
                "no topic pattern: use [\".*\"] to mirror every topic",
            ));
        }
        // Regexes and the rename template were checked with their lines
        // by `check`; only valid configs reach this point.
        let rename = Rename::new(&fl.rename).ok();
        if fl.replication_factor == 0 || fl.replication_factor < -1 {
            let key = format!("{base}.replication_factor");
            out.push(Problem::new(
                at(lines, &key),
                &key,
                "replication_factor must be -1 (the target's default) or at least 1",
            ));
        }
        filters.push(NameFilter::new(&fl.topics, &fl.topics_exclude).ok());
        renames.push(rename);
    }

    // Two flows mapping source topics to one target topic. Regexes cannot be
    // compared in general; literal topic names are checked here against
    // every flow, and discovery checks the real topics at run time.
    for (j, fl) in c.flows.iter().enumerate() {
        for (k, p) in fl.topics.iter().enumerate() {
            if !is_valid_topic_name(p) || filters[j].as_ref().is_none_or(|f| !f.matches(p)) {
                continue;
            }
            let Some(rj) = &renames[j] else { continue };
            let tj = rj.apply(&c.source.alias, p);
            let key = format!("flow[{j}].topics[{k}]");
            for (i, other) in c.flows.iter().enumerate() {
                if i == j {
                    continue;
                }
                let (Some(fi), Some(ri)) = (&filters[i], &renames[i]) else {
                    continue;
                };
                if fi.matches(p) && i < j {
                    let why = if ri.apply(&c.source.alias, p) == tj {
                        format!("both mirror it to {tj:?}; one target topic can have one writer")
                    } else {
                        "a source topic is mirrored by one flow only (its offset-sync points, exactly-once positions and checkpoints are per source topic); at run time the first flow in the file takes it".to_string()
                    };
                    out.push(Problem::new(
                        at(lines, &key),
                        &key,
                        format!(
                            "topic {p:?} is selected by flow {:?} and flow {:?}: {why}",
                            other.name, fl.name
                        ),
                    ));
                }
            }
            if let Some((i, src)) = targets.get(&tj) {
                if *i != j && src != p {
                    out.push(Problem::new(
                        at(lines, &key),
                        &key,
                        format!(
                            "flows {:?} and {:?} both map to target topic {tj:?} (from {src:?} and {p:?})",
                            c.flows[*i].name, fl.name
                        ),
                    ));
                }
            } else {
                targets.insert(tj, (j, p.clone()));
            }
        }
    }
}
