//! Typed configuration: the TOML file an operator writes.
//!
//! Loading is three steps, see [`load`]:
//! 1. [`check`] walks the parsed document with its source positions and
//!    reports every structural problem (unknown key, wrong type, unset
//!    `${VAR}`) with its line;
//! 2. serde builds the typed [`Config`] below (`deny_unknown_fields`, named
//!    defaults) and `${VAR}` references are replaced from the environment;
//! 3. [`validate`] applies the cross-field rules (regexes, rename template,
//!    duplicate names, target-topic collisions, aliases, clashing properties).
//!
//! All problems of all steps are reported together, each naming the file,
//! the line and the key.

pub mod check;
pub mod env;
pub mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub use check::Problem;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The cluster records are read from.
    pub source: ClusterConfig,
    /// The cluster records are written to.
    pub target: ClusterConfig,
    /// The HTTP endpoint serving `/metrics`, `/healthz` and `/readyz`.
    #[serde(default)]
    pub http: HttpConfig,
    /// Process-wide settings: shutdown deadline, static membership, memory bounds.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// The replication flows, one `[[flow]]` table each.
    #[serde(rename = "flow")]
    pub flows: Vec<FlowConfig>,
}

/// One Kafka cluster.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Short name of the cluster: prefixes mirrored topics (`{source}`),
    /// names internal topics and labels metrics.
    pub alias: String,
    /// Comma-separated `host:port` list used to reach the cluster.
    pub bootstrap_servers: String,
    /// librdkafka properties passed through verbatim (TLS, SASL, timeouts).
    /// Values may hold `${VAR}`; secret values are masked in every output.
    #[serde(default)]
    pub properties: Properties,
}

impl ClusterConfig {
    /// A duration property in milliseconds (`session.timeout.ms`, ...)
    /// from `properties`, else `default_ms`.
    pub fn ms_property(&self, key: &str, default_ms: u64) -> std::time::Duration {
        let ms = self
            .properties
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.trim().parse::<u64>().ok())
            .unwrap_or(default_ms);
        std::time::Duration::from_millis(ms)
    }

    /// The properties that turn TLS certificate verification off
    /// (`enable.ssl.certificate.verification = false`,
    /// `ssl.endpoint.identification.algorithm = none`): explicit keys
    /// only; verification is on by default. Warned about at start.
    pub fn tls_verification_off(&self) -> Vec<String> {
        self.properties
            .iter()
            .filter(|(k, v)| {
                let v = v.trim().to_ascii_lowercase();
                // librdkafka reads "false", "f" and "0" as false.
                (*k == "enable.ssl.certificate.verification"
                    && matches!(v.as_str(), "false" | "f" | "0"))
                    || (*k == "ssl.endpoint.identification.algorithm" && v == "none")
            })
            .map(|(k, v)| format!("{k} = {v}"))
            .collect()
    }
}

/// `[http]`: where the metrics and health endpoints listen.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `host:port` to listen on; `""` disables the HTTP server.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// How fine the data-path series are: per flow (default), per topic,
    /// or per partition.
    #[serde(default)]
    pub metrics_level: MetricsLevel,
}

/// Detail of the data-path metrics (records, bytes, lag, latency).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsLevel {
    /// One series per flow (`topic` and `partition` labels empty): the
    /// number of series does not grow with topics or partitions.
    #[default]
    Flow,
    /// Per topic (`partition` empty).
    Topic,
    /// Per partition.
    Partition,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            metrics_level: MetricsLevel::default(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:9464".to_string()
}

/// `[runtime]`: settings of the process rather than of one flow.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// How long a graceful stop (SIGINT/SIGTERM) may take to flush and
    /// commit before the remaining tasks are aborted.
    #[serde(default = "default_shutdown_timeout", deserialize_with = "de_duration")]
    pub shutdown_timeout: Duration,
    /// Static group membership (`group.instance.id`): a stable name per
    /// process lets a restarted process take its partitions back at once
    /// instead of after the session timeout. Empty = dynamic membership.
    #[serde(default)]
    pub group_instance_id: String,
    /// Upper bound of records fetched ahead from the source and not yet
    /// handed to the producer, in KiB (librdkafka `queued.max.messages.kbytes`).
    #[serde(default = "default_consumer_queue_kbytes")]
    pub consumer_queue_kbytes: u64,
    /// Upper bound of records handed to the producer and not yet
    /// acknowledged by the target, in KiB (`queue.buffering.max.kbytes`).
    #[serde(default = "default_producer_queue_kbytes")]
    pub producer_queue_kbytes: u64,
    /// How often acknowledged source positions are committed (and, while
    /// records flow, the most time between two offset-sync points of a
    /// partition, since a commit never passes the last persisted point).
    /// An at-least-once process killed with `kill -9` mirrors again about
    /// this much traffic.
    #[serde(default = "default_commit_interval", deserialize_with = "de_duration")]
    pub commit_interval: Duration,
    /// Bandwidth limit of the whole process in bytes per second (key +
    /// value + headers of the records mirrored), on top of each flow's
    /// own; 0 = none.
    #[serde(default)]
    pub max_bytes_per_second: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            shutdown_timeout: default_shutdown_timeout(),
            group_instance_id: String::new(),
            consumer_queue_kbytes: default_consumer_queue_kbytes(),
            producer_queue_kbytes: default_producer_queue_kbytes(),
            commit_interval: default_commit_interval(),
            max_bytes_per_second: 0,
        }
    }
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_commit_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_consumer_queue_kbytes() -> u64 {
    16 * 1024
}
fn default_producer_queue_kbytes() -> u64 {
    32 * 1024
}

/// How each source record is delivered to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Every record lands at least once; a crash may repeat the records
    /// that were written but not yet committed.
    AtLeastOnce,
    /// Every record lands exactly once, across crashes and restarts, without
    /// broker transactions: the resume position is derived from the target.
    ExactlyOnce,
}

impl fmt::Display for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Delivery::AtLeastOnce => "at-least-once",
            Delivery::ExactlyOnce => "exactly-once",
        })
    }
}

/// Where a partition starts when the flow's group has no committed offset
/// for it (a new flow, a new topic, a new partition): `start_from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The partition's first record still held by the source (default:
    /// a mirror copies everything unless told otherwise).
    #[default]
    Earliest,
    /// Only records written after the partition is assigned.
    Latest,
    /// The first record whose timestamp is at or after this time (Unix
    /// milliseconds), found with ListOffsets by time.
    Timestamp(i64),
}

impl StartFrom {
    /// Parses `earliest`, `latest` or an RFC 3339 timestamp.
    pub fn parse(s: &str) -> Result<StartFrom, String> {
        match s.trim() {
            "earliest" => Ok(StartFrom::Earliest),
            "latest" => Ok(StartFrom::Latest),
            t => parse_rfc3339_ms(t).map(StartFrom::Timestamp).map_err(|e| {
                format!(
                    "start_from = {s:?}: expected \"earliest\", \"latest\" or an RFC 3339 timestamp such as \"2026-11-01T00:00:00Z\" ({e})"
                )
            }),
        }
    }
}

impl fmt::Display for StartFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartFrom::Earliest => f.write_str("earliest"),
            StartFrom::Latest => f.write_str("latest"),
            StartFrom::Timestamp(ms) => f.write_str(&format_rfc3339_ms(*ms)),
        }
    }
}

impl<'de> Deserialize<'de> for StartFrom {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        StartFrom::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Parses an RFC 3339 timestamp (`Z` or a `±HH:MM` offset, optional
/// fraction) into Unix milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let (base, offset_min) = if let Some(b) = s.strip_suffix('Z').or_else(|| s.strip_suffix('z')) {
        (b, 0i64)
    } else {
        let n = s.len();
        let tail = s.get(n.saturating_sub(6)..).unwrap_or("");
        let b = tail.as_bytes();
        if b.len() == 6 && (b[0] == b'+' || b[0] == b'-') && b[3] == b':' {
            let h: i64 = tail[1..3]
                .parse()
                .map_err(|_| "bad offset hours".to_string())?;
            let m: i64 = tail[4..6]
                .parse()
                .map_err(|_| "bad offset minutes".to_string())?;
            let sign = if b[0] == b'-' { -1 } else { 1 };
            (&s[..n - 6], sign * (h * 60 + m))
        } else {
            return Err("a time zone (Z or ±HH:MM) is required".into());
        }
    };
    if !base.contains('T') && !base.contains('t') {
        return Err("the date and the time are separated by T".into());
    }
    let t = humantime::parse_rfc3339_weak(base).map_err(|e| e.to_string())?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "before 1970".to_string())?
        .as_millis() as i64;
    Ok(ms - offset_min * 60_000)
}

/// Formats Unix milliseconds as RFC 3339 in UTC.
pub fn format_rfc3339_ms(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    if ms % 1000 == 0 {
        humantime::format_rfc3339_seconds(t).to_string()
    } else {
        humantime::format_rfc3339_millis(t).to_string()
    }
}

/// Compression codec of the target producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No compression added.
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// The librdkafka `compression.type` value.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// One `[[flow]]`: a set of source topics mirrored with one policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    /// Unique name: labels metrics and names the source consumer group
    /// `kmirror.<source>.<target>.<flow>`.
    pub name: String,
    /// Regexes of source topics to mirror, each matched against the whole name.
    pub topics: Vec<String>,
    /// Regexes of source topics never to mirror (win over `topics`).
    #[serde(default)]
    pub topics_exclude: Vec<String>,
    /// Target topic name template: `{source}` is the source alias, `{topic}`
    /// the source topic. Must contain `{topic}`.
    #[serde(default = "default_rename")]
    pub rename: String,
    /// Regexes of consumer groups whose offsets are checkpointed.
    #[serde(default = "default_groups")]
    pub groups: Vec<String>,
    /// Regexes of consumer groups never checkpointed.
    #[serde(default = "default_groups_exclude")]
    pub groups_exclude: Vec<String>,
    /// `at-least-once` (default) or `exactly-once`.
    #[serde(default = "default_delivery")]
    pub delivery: Delivery,
    /// Copy explicitly set topic configs from source to target.
    #[serde(default = "yes")]
    pub sync_topic_configs: bool,
    /// Extra regexes of topic property names never copied.
    #[serde(default)]
    pub config_exclude: Vec<String>,
    /// Raise the target partition count when the source grows.
    #[serde(default = "yes")]
    pub sync_partitions: bool,
    /// Copy topic ALLOW ACLs (MM2's rule: WRITE dropped, ALL becomes READ).
    #[serde(default = "yes")]
    pub sync_topic_acls: bool,
    /// Replication factor of topics kmirror creates; -1 = the target's default.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Codec of the target producer.
    #[serde(default = "default_compression")]
    pub compression: Compression,
    /// Add a `kmirror-source` header naming the source alias, and skip
    /// source records whose header names this direction's target alias.
    /// Needed for identity renaming in an active-active pair.
    #[serde(default)]
    pub provenance_header: bool,
    /// Write translated offsets into idle consumer groups on the target.
    #[serde(default)]
    pub sync_group_offsets: bool,
    /// Where a partition with no committed offset in the flow's group
    /// starts: `earliest` (default), `latest` or an RFC 3339 timestamp.
    #[serde(default)]
    pub start_from: StartFrom,
    /// Bandwidth limit of the flow in bytes per second (key + value +
    /// headers of the records mirrored); 0 = none. Consumption waits,
    /// nothing is dropped.
    #[serde(default)]
    pub max_bytes_per_second: u64,
    /// How often source topics are listed to find new ones.
    #[serde(default = "default_refresh", deserialize_with = "de_duration")]
    pub refresh_topics_interval: Duration,
    /// How often topic configs, partitions and ACLs are synced.
    #[serde(default = "default_sync_configs", deserialize_with = "de_duration")]
    pub sync_configs_interval: Duration,
    /// How often consumer group offsets are checkpointed.
    #[serde(default = "default_checkpoint", deserialize_with = "de_duration")]
    pub checkpoint_interval: Duration,
    /// How often a heartbeat record is written to `heartbeats` on the target.
    #[serde(default = "default_heartbeat", deserialize_with = "de_duration")]
    pub heartbeat_interval: Duration,
}

fn default_rename() -> String {
    "{source}.{topic}".to_string()
}
fn default_groups() -> Vec<String> {
    vec![".*".to_string()]
}
fn default_groups_exclude() -> Vec<String> {
    vec![
        "console-consumer-.*".to_string(),
        "connect-.*".to_string(),
        "__.*".to_string(),
    ]
}
fn default_delivery() -> Delivery {
    Delivery::AtLeastOnce
}
fn yes() -> bool {
    true
}
fn default_replication_factor() -> i32 {
    -1
}
fn default_compression() -> Compression {
    Compression::None
}
fn default_refresh() -> Duration {
    Duration::from_secs(10)
}
fn default_sync_configs() -> Duration {
    Duration::from_secs(30)
}
fn default_checkpoint() -> Duration {
    Duration::from_secs(5)
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(1)
}

/// Parses a humantime duration such as `"10s"` or `"1m 30s"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{e} (expected e.g. \"10s\", \"500ms\", \"1m\")"))?;
    if d.is_zero() {
        return Err("must be greater than zero".to_string());
    }
    Ok(d)
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// librdkafka properties of one cluster. Values of secret keys (see
/// [`is_secret_key`]) are masked by `Debug` and by [`Properties::redacted`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Properties(pub BTreeMap<String, String>);

/// Substrings of property names whose values are secrets.
pub const SECRET_MARKERS: &[&str] = &["password", "secret", "sasl.jaas.config", "ssl.key"];

/// Property names that took a value from a secret file (`${file:PATH}`)
/// in a configuration read by this process: masked whatever their name.
static FILE_SECRET_KEYS: std::sync::Mutex<BTreeSet<String>> =
    std::sync::Mutex::new(BTreeSet::new());

/// Marks a property name as secret (its value came from a secret file).
pub fn mark_secret_key(key: &str) {
    if let Ok(mut k) = FILE_SECRET_KEYS.lock() {
        k.insert(key.to_ascii_lowercase());
    }
}

/// True when a property's value must never be shown: its name contains a
/// [`SECRET_MARKERS`] entry, or it took a value from a secret file.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    SECRET_MARKERS.iter().any(|m| k.contains(m))
        || FILE_SECRET_KEYS.lock().is_ok_and(|s| s.contains(&k))
}

/// The text shown instead of a secret value.
pub const MASK: &str = "******";

impl Properties {
    /// Iterates over (key, value) pairs, values in clear.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Key/value pairs with secret values replaced by [`MASK`].
    pub fn redacted(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .map(|(k, v)| {
                let v = if is_secret_key(k) {
                    MASK.to_string()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect()
    }
}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.redacted()).finish()
    }
}

impl<'de> Deserialize<'de> for Properties {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = BTreeMap::<String, toml::Value>::deserialize(d)?;
        let mut out = BTreeMap::new();
        for (k, v) in raw {
            let s = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                _ => {
                    return Err(serde::de::Error::custom(format!(
                        "property {k:?} must be a string, integer or boolean"
                    )))
                }
            };
            out.insert(k, s);
        }
        Ok(Properties(out))
    }
}

impl FlowConfig {
    /// The source consumer group of this flow.
    pub fn group_id(&self, source: &str, target: &str) -> String {
        format!("kmirror.{source}.{target}.{}", self.name)
    }
}

/// A configuration file that could not be loaded: every problem found.
#[derive(Debug)]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// All problems, in file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{}: {} problem{} found",
            self.path.display(),
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  {}", p.display(&self.path))?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads, checks, interpolates and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        problems: vec![Problem::new(None, "", format!("cannot read the file: {e}"))],
    })?;
    load_str(path, &text, &env::process_env)
}

/// Like [`load`], from text; `lookup` resolves `${VAR}`.
pub fn load_str(
    path: &Path,
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let fail = |problems: Vec<Problem>| ConfigError {
        path: path.to_path_buf(),
        problems,
    };
    let checked = check::check(text, lookup);
    let mut problems = checked.problems;
    if !problems.is_empty() {
        // Still apply the cross-field rules, to what is left once the keys
        // with structural problems are taken out, so that one run reports
        // every problem; a key keeps only its first problem.
        if let Some(c) = lenient(text, &problems, lookup) {
            let mut more = Vec::new();
            validate::validate(&c, &checked.lines, &mut more);
            for p in more {
                if !problems.iter().any(|q| q.key == p.key) {
                    problems.push(p);
                }
            }
        }
        problems.sort_by_key(|p| p.line.unwrap_or(0));
        return Err(fail(problems));
    }
    let mut config: Config = match toml::from_str(text) {
        Ok(c) => c,
        Err(e) => {
            let line = e.span().map(|s| check::line_of(text, s.start));
            return Err(fail(vec![Problem::new(line, "", e.message().to_string())]));
        }
    };
    if let Err(errs) = env::interpolate_config(&mut config, lookup) {
        // check() already reported unset variables with their lines; this is
        // only reached if the two disagree.
        return Err(fail(
            errs.into_iter()
                .map(|m| Problem::new(None, "", m))
                .collect(),
        ));
    }
    validate::validate(&config, &checked.lines, &mut problems);
    if !problems.is_empty() {
        problems.sort_by_key(|p| p.line.unwrap_or(0));
        return Err(fail(problems));
    }
    Ok(config)
}

/// The config with the keys that have problems removed, when serde can
/// still build it (required keys present); unset variables read as "x".
fn lenient(
    text: &str,
    problems: &[Problem],
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Option<Config> {
    let mut doc: toml_edit::DocumentMut = text.parse().ok()?;
    for p in problems {
        remove_path(doc.as_table_mut(), &p.key);
    }
    let mut c: Config = toml::from_str(&doc.to_string()).ok()?;
    let forgiving = |name: &str| lookup(name).or_else(|| Some("x".to_string()));
    env::interpolate_config(&mut c, &forgiving).ok()?;
    Some(c)
}

/// Removes the item at a problem's key path (`flow[1].topics[0]`,
/// `source.properties.sasl.password`).
fn remove_path(table: &mut toml_edit::Table, path: &str) {
    fn split(seg: &str) -> (&str, Option<usize>) {
        match seg.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse().ok()),
            None => (seg, None),
        }
    }
    let segs: Vec<&str> = path.split('.').collect();
    let Some((&first, rest)) = segs.split_first() else {
        return;
    };
    let (key, idx) = split(first);
    if rest.is_empty() {
        match idx {
            None => {
                table.remove(key);
            }
            Some(i) => {
                if let Some(arr) = table.get_mut(key).and_then(|it| it.as_array_mut()) {
                    if i < arr.len() {
                        arr.remove(i);
                    }
                }
            }
        }
        return;
    }
    let next: Option<&mut toml_edit::Table> = match (table.get_mut(key), idx) {
        (Some(toml_edit::Item::Table(t)), None) => Some(t),
        (Some(toml_edit::Item::ArrayOfTables(a)), Some(i)) => a.get_mut(i),
        _ => None,
    };
    if let Some(t) = next {
        if rest.first() == Some(&"properties") && rest.len() > 1 {
            if let Some(props) = t.get_mut("properties").and_then(|i| i.as_table_like_mut()) {
                props.remove(&rest[1..].join("."));
            }
        } else {
            remove_path(t, &rest.join("."));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_librdkafka_reads_as_false_turns_verification_off() {
        let cluster = |k: &str, v: &str| ClusterConfig {
            alias: "a".into(),
            bootstrap_servers: "h:1".into(),
            properties: Properties([(k.to_string(), v.to_string())].into_iter().collect()),
        };
        for v in ["false", "FALSE", " f ", "0"] {
            let c = cluster("enable.ssl.certificate.verification", v);
            assert_eq!(c.tls_verification_off().len(), 1, "{v:?}");
        }
        for v in ["true", "1", "t"] {
            let c = cluster("enable.ssl.certificate.verification", v);
            assert!(c.tls_verification_off().is_empty(), "{v:?}");
        }
        let c = cluster("ssl.endpoint.identification.algorithm", "None");
        assert_eq!(c.tls_verification_off().len(), 1);
        let c = cluster("ssl.endpoint.identification.algorithm", "https");
        assert!(c.tls_verification_off().is_empty());
    }

    #[test]
    fn start_from_parses_names_and_rfc3339_with_offsets() {
        assert_eq!(StartFrom::parse("earliest"), Ok(StartFrom::Earliest));
        assert_eq!(StartFrom::parse("latest"), Ok(StartFrom::Latest));
        let utc = 1_793_491_200_000; // 2026-11-01T00:00:00Z
        assert_eq!(
            StartFrom::parse("2026-11-01T00:00:00Z"),
            Ok(StartFrom::Timestamp(utc))
        );
        assert_eq!(
            StartFrom::parse("2026-11-01T02:00:00.250+02:00"),
            Ok(StartFrom::Timestamp(utc + 250))
        );
        assert_eq!(
            StartFrom::parse("2026-10-31T19:30:00-04:30"),
            Ok(StartFrom::Timestamp(utc))
        );
        assert_eq!(
            StartFrom::Timestamp(utc).to_string(),
            "2026-11-01T00:00:00Z"
        );
        for bad in [
            "yesterday",
            "2026-11-01",
            "2026-11-01T00:00:00",
            "2026-11-01 00:00:00Z",
        ] {
            let e = StartFrom::parse(bad).unwrap_err();
            assert!(
                e.contains("start_from") && e.contains("RFC 3339"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn debug_masks_secrets() {
        let mut p = BTreeMap::new();
        p.insert("sasl.password".to_string(), "hunter2".to_string());
        p.insert("ssl.key.pem".to_string(), "PRIVATE".to_string());
        p.insert("sasl.username".to_string(), "alice".to_string());
        let props = Properties(p);
        let dbg = format!("{props:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(!dbg.contains("PRIVATE"), "{dbg}");
        assert!(dbg.contains("alice"), "{dbg}");
        assert!(dbg.contains(MASK));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("0s").is_err());
    }
}
