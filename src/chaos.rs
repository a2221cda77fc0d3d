//! Chaos soak harness: proves kmirror's delivery guarantees under mixed
//! faults, checked independently of kmirror's own metrics.
//!
//! [`run`] starts two nisshi brokers with durable (sqlite) storage, a
//! source and a target, and several `kmirror run` processes sharing one
//! config (scale-out through the flows' consumer groups) with two flows:
//! `alo` (at-least-once, source topic `chaos-alo`) and `eos` (exactly-once,
//! `chaos-eos`). Three source producers (no compression, lz4, zstd;
//! idempotent, `acks=all`, explicit partitions) write a steady keyed load
//! with headers plus random bursts of backlog; a source consumer group
//! `chaos-reader` reads along and commits every second, so that the
//! checkpoint loop has offsets to translate. Meanwhile one fault every few
//! seconds, drawn from a seeded RNG (the seed is printed; the same seed
//! draws the same faults and timings, not the same interleavings):
//!
//! - kill -9 of a kmirror process, restarted 1–3 s later;
//! - SIGTERM of a kmirror process (half of the time right after a burst
//!   started, which can fill its 1 MiB producer queue), which must exit 0 within
//!   `shutdown_timeout` + 10 s; restarted;
//! - a crash (SIGKILL) of the target broker, restarted 5–20 s later on the
//!   same port and sqlite file;
//! - a restart (SIGTERM) of the source broker, same port and file;
//! - SIGSTOP of a kmirror process for longer than its session timeout (a
//!   real zombie: its partitions move while it holds records), then SIGCONT;
//! - a restart of one process with a config that adds a third flow
//!   (`extra`, at-least-once, over `chaos-extra`, which receives load from
//!   the start); every later restart uses that config.
//!
//! The first faults cover every kind once, in random order; then kinds are
//! drawn at random until the fault time is used up. Then the load stops,
//! kmirror drains (until every source record is in the target and the
//! target stops changing, or a deadline), all processes get SIGTERM, and
//! every topic is read in full with group-less consumers (assign from the
//! beginning up to the high watermark):
//!
//! - at-least-once (`chaos-alo` and `chaos-extra`): every source record is
//!   in the same partition of the target (`lost` otherwise); `duplicated`
//!   counts the extra copies, each attributed to the fault that preceded it
//!   (by the target high watermarks taken just before each fault);
//! - exactly-once (`chaos-eos`): the target partition holds exactly the
//!   source partition, in order (`lost`, `duplicated`, `out_of_order`: a
//!   target record whose source offset is lower than that of the target
//!   record before it);
//! - every mirrored record keeps its key, value, headers and timestamp
//!   (`corrupt`), and none lands in another partition or topic (`foreign`);
//! - every checkpoint in `src.checkpoints.internal` (group, target topic,
//!   partition, upstream n, downstream d) is at or behind the truth: the
//!   target offset of the first target record that came from source offset
//!   n or later (the first copy of record n when order holds; the target's
//!   end when there is none) — `checkpoints_ahead` counts those past it, the
//!   ones a failed-over consumer would skip records with;
//! - the maximum replication latency: while running, a follower reads the
//!   target topics and keeps, over the first copy of each record, the
//!   largest (arrival − source CreateTime); it includes every outage (a
//!   frozen process, a target that is down) and the follower's own lag.
//!
//! [`Options::short`] is the test suite's mode (`tests/chaos.rs`, about
//! 2.5 minutes of faults); `kmirror-chaos --minutes N` runs any length.
//! kmirror runs with `RUST_LOG=info` (`KMIRROR_CHAOS_LOG` overrides it),
//! each process logging to `kmirror-N.log` in the work directory.
//! Every wait has a deadline; brokers and kmirror processes are killed when
//! the harness is dropped, also on panic. The work directory (configs,
//! broker and kmirror logs, sqlite files) is removed after a clean run
//! unless `keep` names it, and kept (its path printed) otherwise.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;

use crate::devcluster::{nisshi_bin, Nisshi, Storage};
use crate::offsets::codec::Checkpoint;

/// Source alias in kmirror's config: target topics are `src.<topic>`.
const SOURCE_ALIAS: &str = "src";
/// Target alias in kmirror's config.
const TARGET_ALIAS: &str = "dst";
/// Source topic of the at-least-once flow `alo`.
pub const ALO_TOPIC: &str = "chaos-alo";
/// Source topic of the exactly-once flow `eos`.
pub const EOS_TOPIC: &str = "chaos-eos";
/// Source topic of the at-least-once flow `extra`, added during the run.
pub const EXTRA_TOPIC: &str = "chaos-extra";
/// All source topics; indexes below refer to this order.
const TOPICS: [&str; 3] = [ALO_TOPIC, EOS_TOPIC, EXTRA_TOPIC];
/// Share of the load each topic gets (same order as [`TOPICS`]).
const WEIGHTS: [u32; 3] = [2, 2, 1];
/// The source consumer group whose offsets are checkpointed.
pub const READER_GROUP: &str = "chaos-reader";
/// Where kmirror writes checkpoints (on the target).
const CHECKPOINTS_TOPIC: &str = "src.checkpoints.internal";
/// kmirror's internal topics on the target and their cleanup policy, as
/// kmirror creates them; the harness creates them first, with
/// `retention.ms=-1` as well, because a restarted nisshi applies time
/// retention at once.
const TARGET_INTERNAL: [(&str, &str); 4] = [
    ("heartbeats", "compact"),
    ("kmirror-offset-syncs.src.internal", "delete"),
    ("kmirror-config-sync.src.internal", "compact"),
    (CHECKPOINTS_TOPIC, "compact"),
];
/// `[runtime] shutdown_timeout` of the kmirror processes.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);
/// `[runtime] producer_queue_kbytes` of the kmirror processes: 1 MiB, so
/// that a burst or a target outage fills the producer queue (the default,
/// 32 MiB, holds minutes of this load) and SIGTERM, freezes and kills meet
/// the backpressure path.
const PRODUCER_QUEUE_KBYTES: u64 = 1024;

/// A SIGTERM'd process must be gone within `shutdown_timeout` + this.
const EXIT_GRACE: Duration = Duration::from_secs(10);
/// Source consumer session timeout of the kmirror processes, so that a
/// frozen or killed process loses its partitions quickly.
const SESSION_TIMEOUT_MS: u64 = 6000;
/// After the drain, how long the reader group may take to commit the
/// source ends, and then kmirror to checkpoint those commits.
const CHECKPOINT_CATCH_UP: Duration = Duration::from_secs(30);
/// `compression.type` of each source producer.
const COMPRESSIONS: [&str; 3] = ["none", "lz4", "zstd"];

/// Name of the target topic that mirrors source topic `t`.
fn target_topic(t: &str) -> String {
    format!("{SOURCE_ALIAS}.{t}")
}

/// A kind of fault the harness injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// kill -9 of a kmirror process, restarted after 1–3 s.
    Kill9,
    /// SIGTERM of a kmirror process (it must exit 0 in time), restarted.
    Term,
    /// SIGKILL of the target broker, restarted after 5–20 s.
    TargetRestart,
    /// SIGTERM of the source broker, restarted at once.
    SourceRestart,
    /// SIGSTOP of a kmirror process past its session timeout, then SIGCONT.
    Stop,
    /// SIGTERM of a kmirror process, restarted with a config that adds a
    /// flow (once per run).
    AddFlow,
}

impl FaultKind {
    /// Every kind, in table order.
    pub const ALL: [FaultKind; 6] = [
        FaultKind::Kill9,
        FaultKind::Term,
        FaultKind::TargetRestart,
        FaultKind::SourceRestart,
        FaultKind::Stop,
        FaultKind::AddFlow,
    ];

    /// Short name for tables and logs.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill9 => "kill -9",
            FaultKind::Term => "SIGTERM",
            FaultKind::TargetRestart => "target restart",
            FaultKind::SourceRestart => "source restart",
            FaultKind::Stop => "SIGSTOP",
            FaultKind::AddFlow => "add flow",
        }
    }
}

impl std::str::FromStr for FaultKind {
    type Err = String;
    /// `kill9`, `term`, `target`, `source`, `stop` or `addflow`.
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "kill9" | "kill-9" => FaultKind::Kill9,
            "term" | "sigterm" => FaultKind::Term,
            "target" => FaultKind::TargetRestart,
            "source" => FaultKind::SourceRestart,
            "stop" | "sigstop" => FaultKind::Stop,
            "addflow" | "add-flow" => FaultKind::AddFlow,
            other => {
                return Err(format!(
                    "unknown fault kind `{other}` (kill9, term, target, source, stop, addflow)"
                ))
            }
        })
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long faults are injected (the drain and the checks come after;
    /// the first faults cover every kind even when this is shorter).
    pub fault_time: Duration,
    /// Seed of every random choice (faults, timings, load).
    pub seed: u64,
    /// The `kmirror` binary.
    pub kmirror: PathBuf,
    /// Partitions of each source topic.
    pub partitions: i32,
    /// Keep the work directory here (created if missing); `None` = a
    /// temporary directory, removed after a clean run.
    pub keep: Option<PathBuf>,
    /// Number of kmirror processes sharing the config.
    pub processes: usize,
    /// Steady load, records per second over all source topics.
    pub rate: u32,
    /// Records per burst: a random number in this range.
    pub burst_records: (usize, usize),
    /// Time between bursts: a random duration in this range.
    pub burst_every: (Duration, Duration),
    /// Time between faults: a random duration in this range.
    pub fault_gap: (Duration, Duration),
    /// How long kmirror may take to mirror everything after the load stops.
    pub drain_timeout: Duration,
    /// The kinds of fault injected (each at least once, then at random).
    pub kinds: Vec<FaultKind>,
}

impl Options {
    /// The soak defaults: `minutes` of faults, 8 partitions, 3 processes,
    /// 1,000 records/s plus bursts of 20–50k records every 30–90 s, a
    /// fault every 5–15 s, a random seed.
    pub fn new(kmirror: PathBuf, minutes: f64) -> Options {
        Options {
            fault_time: Duration::from_secs_f64((minutes * 60.0).max(0.0)),
            seed: random_seed(),
            kmirror,
            partitions: 8,
            keep: None,
            processes: 3,
            rate: 1000,
            burst_records: (20_000, 50_000),
            burst_every: (Duration::from_secs(30), Duration::from_secs(90)),
            fault_gap: (Duration::from_secs(5), Duration::from_secs(15)),
            drain_timeout: Duration::from_secs(120),
            kinds: FaultKind::ALL.to_vec(),
        }
    }

    /// The test suite's short mode: 2.5 minutes of faults (each kind at
    /// least once), 600 records/s plus bursts of 10–20k records every
    /// 20–40 s.
    pub fn short(kmirror: PathBuf) -> Options {
        Options {
            rate: 600,
            burst_records: (10_000, 20_000),
            burst_every: (Duration::from_secs(20), Duration::from_secs(40)),
            ..Options::new(kmirror, 2.5)
        }
    }
}

/// A seed from the clock and the process id.
pub fn random_seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    splitmix(t ^ (u64::from(std::process::id()) << 32)) % 1_000_000_000
}

/// One injected fault.
#[derive(Debug, Clone)]
pub struct FaultEvent {
    /// What.
    pub kind: FaultKind,
    /// Seconds since the faults started.
    pub at_secs: f64,
    /// The kmirror process it hit (1-based), if any.
    pub process: Option<usize>,
    /// What was done (durations, pids, exit codes).
    pub detail: String,
    /// At-least-once duplicates that landed after this fault and before the
    /// next one (an approximation of the duplicates it caused).
    pub alo_duplicates: u64,
    /// Exactly-once duplicates that landed after this fault and before the
    /// next one.
    pub eos_duplicates: u64,
    /// Those duplicates by `topic/partition` (source topic names).
    pub duplicates_by_partition: BTreeMap<String, u64>,
}

/// The checks of one flow (or one topic).
#[derive(Debug, Clone, Default)]
pub struct FlowReport {
    /// Records in the source topic(s).
    pub records: u64,
    /// Records in the target topic(s).
    pub target_records: u64,
    /// Source records not found in the same partition of the target.
    pub lost: u64,
    /// Extra copies in the target (target records − distinct records).
    pub duplicated: u64,
    /// Target records whose source offset is lower than that of the target
    /// record before them.
    pub out_of_order: u64,
    /// Target records that are not from the same source partition.
    pub foreign: u64,
    /// Target records whose key, value, headers or timestamp differ from
    /// the source record.
    pub corrupt: u64,
    /// Checkpoints checked.
    pub checkpoints_checked: u64,
    /// Checkpoints whose downstream offset is past the truth.
    pub checkpoints_ahead: u64,
    /// Checkpoints exactly at the truth.
    pub checkpoints_exact: u64,
    /// Partitions of the reader group (`chaos-reader`) whose last
    /// checkpoint, after the drain, is the group's final commit.
    pub checkpoints_current: u64,
    /// Partitions of the reader group checked for that.
    pub checkpoint_partitions: u64,
    /// Largest (arrival in the target − source timestamp) over first copies,
    /// seconds; includes outages.
    pub max_latency_secs: f64,
}

impl FlowReport {
    fn add(&mut self, o: &FlowReport) {
        self.records += o.records;
        self.target_records += o.target_records;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.foreign += o.foreign;
        self.corrupt += o.corrupt;
        self.checkpoints_checked += o.checkpoints_checked;
        self.checkpoints_ahead += o.checkpoints_ahead;
        self.checkpoints_exact += o.checkpoints_exact;
        self.checkpoints_current += o.checkpoints_current;
        self.checkpoint_partitions += o.checkpoint_partitions;
        self.max_latency_secs = self.max_latency_secs.max(o.max_latency_secs);
    }
}

/// Everything a run found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Minutes of fault injection.
    pub minutes: f64,
    /// Seconds of the whole run (set-up, faults, drain, checks).
    pub total_secs: f64,
    /// Partitions per topic.
    pub partitions: i32,
    /// kmirror processes.
    pub processes: usize,
    /// Faults injected, per kind (every kind is present, possibly 0).
    pub faults: BTreeMap<FaultKind, u32>,
    /// Every fault, in order.
    pub events: Vec<FaultEvent>,
    /// Duplicates that landed before the first fault (at-least-once,
    /// exactly-once).
    pub duplicates_before_faults: (u64, u64),
    /// Those duplicates by `topic/partition`.
    pub duplicates_before_faults_by_partition: BTreeMap<String, u64>,
    /// The at-least-once flows (`chaos-alo` and, once added, `chaos-extra`).
    pub alo: FlowReport,
    /// The exactly-once flow (`chaos-eos`).
    pub eos: FlowReport,
    /// Per source topic.
    pub topics: Vec<(String, FlowReport)>,
    /// Whether the `extra` flow was added (and `chaos-extra` checked).
    pub extra_flow_added: bool,
    /// Records the source acknowledged to the load producers.
    pub acked: u64,
    /// Records the load producers gave up on (not counted; the source
    /// topics' content is the ground truth).
    pub produce_failures: u64,
    /// Bursts of backlog produced.
    pub bursts: u64,
    /// Records the reader group consumed (its commits are checkpointed).
    pub reader_records: u64,
    /// kmirror misbehaviour the harness saw: a non-zero exit or a late
    /// exit after SIGTERM, a process that died on its own.
    pub errors: Vec<String>,
    /// Observations that are not kmirror guarantees (test-bed events).
    pub notes: Vec<String>,
    /// ERROR lines in the kmirror logs, and the first few distinct ones.
    pub kmirror_error_lines: (u64, Vec<String>),
    /// Where the logs are (removed after a clean run without `keep`).
    pub work_dir: PathBuf,
}

impl Report {
    /// Every broken guarantee, in words; empty when all held.
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        let mut flow = |name: &str, r: &FlowReport, exactly: bool| {
            if r.lost > 0 {
                v.push(format!("{name}: {} record(s) lost", r.lost));
            }
            if exactly && r.duplicated > 0 {
                v.push(format!("{name}: {} duplicate(s)", r.duplicated));
            }
            if exactly && r.out_of_order > 0 {
                v.push(format!("{name}: {} record(s) out of order", r.out_of_order));
            }
            if r.foreign > 0 {
                v.push(format!(
                    "{name}: {} record(s) not from the same source partition",
                    r.foreign
                ));
            }
            if r.corrupt > 0 {
                v.push(format!(
                    "{name}: {} record(s) with a different key, value, headers or timestamp",
                    r.corrupt
                ));
            }
            if r.checkpoints_current < r.checkpoint_partitions {
                v.push(format!(
                    "{name}: the last checkpoint of {} of {} partition(s) is not {READER_GROUP}'s final commit {} s after the drain",
                    r.checkpoint_partitions - r.checkpoints_current,
                    r.checkpoint_partitions,
                    CHECKPOINT_CATCH_UP.as_secs()
                ));
            }
            if r.checkpoints_ahead > 0 {
                v.push(format!(
                    "{name}: {} of {} checkpoint(s) ahead of the truth",
                    r.checkpoints_ahead, r.checkpoints_checked
                ));
            }
        };
        flow("at-least-once", &self.alo, false);
        flow("exactly-once", &self.eos, true);
        v.extend(self.errors.iter().cloned());
        v
    }

    /// Duplicates (at-least-once) attributed to each kill -9.
    pub fn duplicates_per_kill9(&self) -> Vec<u64> {
        self.events
            .iter()
            .filter(|e| e.kind == FaultKind::Kill9)
            .map(|e| e.alo_duplicates)
            .collect()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "chaos: seed {}, {:.1} min of faults, {:.0} s in all, {} kmirror processes, {} partitions per topic",
            self.seed, self.minutes, self.total_secs, self.processes, self.partitions
        )?;
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(f, "faults: {}", faults.join(", "))?;
        writeln!(
            f,
            "load: {} records acknowledged by the source, {} bursts, {} given up by the producers; {READER_GROUP} read {}",
            self.acked, self.bursts, self.produce_failures, self.reader_records
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "{:<34} {:>16} {:>16}",
            "", "at-least-once", "exactly-once"
        )?;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, a: String, e: String| {
            writeln!(f, "{name:<34} {a:>16} {e:>16}")
        };
        let (a, e) = (&self.alo, &self.eos);
        row(
            f,
            "records (source)",
            a.records.to_string(),
            e.records.to_string(),
        )?;
        row(
            f,
            "records (target)",
            a.target_records.to_string(),
            e.target_records.to_string(),
        )?;
        row(f, "lost", a.lost.to_string(), e.lost.to_string())?;
        row(
            f,
            "duplicated",
            a.duplicated.to_string(),
            e.duplicated.to_string(),
        )?;
        row(
            f,
            "out of order",
            format!("({})", a.out_of_order),
            e.out_of_order.to_string(),
        )?;
        row(
            f,
            "foreign / corrupt",
            format!("{} / {}", a.foreign, a.corrupt),
            format!("{} / {}", e.foreign, e.corrupt),
        )?;
        row(
            f,
            "checkpoints checked / ahead",
            format!("{} / {}", a.checkpoints_checked, a.checkpoints_ahead),
            format!("{} / {}", e.checkpoints_checked, e.checkpoints_ahead),
        )?;
        row(
            f,
            "checkpoints exactly at the truth",
            a.checkpoints_exact.to_string(),
            e.checkpoints_exact.to_string(),
        )?;
        row(
            f,
            "final commit checkpointed",
            format!("{} / {}", a.checkpoints_current, a.checkpoint_partitions),
            format!("{} / {}", e.checkpoints_current, e.checkpoint_partitions),
        )?;
        row(
            f,
            "max replication latency (s) *",
            format!("{:.1}", a.max_latency_secs),
            format!("{:.1}", e.max_latency_secs),
        )?;
        writeln!(
            f,
            "(out of order is informational for at-least-once: a re-delivery after a crash repeats older records)"
        )?;
        writeln!(
            f,
            "* arrival in the target − source timestamp, first copies only; includes outages (frozen process, target down); \
             chaos-extra is left out (its records wait for the flow to be added)"
        )?;
        writeln!(f)?;
        for (t, r) in &self.topics {
            write!(
                f,
                "{t:<12} records {:>7} target {:>7} lost {:>5} duplicated {:>5} ",
                r.records, r.target_records, r.lost, r.duplicated
            )?;
            writeln!(
                f,
                "out of order {:>5} checkpoints ahead {}/{} max latency {:.1}s",
                r.out_of_order, r.checkpoints_ahead, r.checkpoints_checked, r.max_latency_secs
            )?;
        }
        if !self.extra_flow_added {
            writeln!(
                f,
                "(the extra flow was never added: chaos-extra not checked)"
            )?;
        }
        let k9 = self.duplicates_per_kill9();
        if !k9.is_empty() {
            let mean = k9.iter().sum::<u64>() as f64 / k9.len() as f64;
            writeln!(
                f,
                "at-least-once duplicates per kill -9: {:?} (mean {mean:.0})",
                k9
            )?;
        }
        writeln!(
            f,
            "duplicates before the first fault: {} at-least-once, {} exactly-once {}",
            self.duplicates_before_faults.0,
            self.duplicates_before_faults.1,
            by_partition(&self.duplicates_before_faults_by_partition)
        )?;
        writeln!(
            f,
            "faults, with the duplicates that landed until the next fault (a fault's duplicates may land after the next one starts):"
        )?;
        for (i, e) in self.events.iter().enumerate() {
            let what = match e.process {
                Some(n) => format!("{} kmirror-{n}", e.kind.name()),
                None => e.kind.name().to_string(),
            };
            writeln!(
                f,
                "  #{:<3} {:>6.1}s {:<25} dup alo {:>6} eos {:>6}  {} {}",
                i + 1,
                e.at_secs,
                what,
                e.alo_duplicates,
                e.eos_duplicates,
                e.detail,
                by_partition(&e.duplicates_by_partition)
            )?;
        }
        let (n, first) = &self.kmirror_error_lines;
        writeln!(f, "kmirror logs: {n} ERROR line(s)")?;
        for l in first {
            writeln!(f, "  {l}")?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        let v = self.violations();
        if v.is_empty() {
            writeln!(f, "RESULT: every guarantee held")?;
        } else {
            writeln!(f, "RESULT: {} guarantee(s) broken:", v.len())?;
            for x in v {
                writeln!(f, "  - {x}")?;
            }
        }
        write!(f, "work dir: {}", self.work_dir.display())
    }
}

/// `[t/p:n ...]`, the largest first, at most six; empty when there are none.
fn by_partition(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return String::new();
    }
    let mut v: Vec<(&String, &u64)> = m.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let mut parts: Vec<String> = v.iter().take(6).map(|(k, n)| format!("{k}:{n}")).collect();
    if v.len() > 6 {
        parts.push(format!("+{} more", v.len() - 6));
    }
    format!("[{}]", parts.join(" "))
}

// ---------------------------------------------------------------------------
// Records: everything about a record follows from its id, so that any copy
// can be checked on its own.

/// splitmix64: a cheap, well-mixed hash of a counter.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The id of a record: `topic:partition:producer:seq` (seq counts per
/// producer over all topics).
fn id_text(topic: &str, partition: i32, producer: usize, seq: u64) -> String {
    format!("{topic}:{partition}:{producer}:{seq}")
}

/// A number unique to each generated record (over all topics).
fn packed(producer: usize, seq: u64) -> u64 {
    ((producer as u64) << 56) | seq
}

/// The value: the id, `|`, then padding up to 100–499 bytes.
fn make_value(id: &str, seq: u64) -> Vec<u8> {
    let len = 100 + (splitmix(seq) % 400) as usize;
    let mut v = Vec::with_capacity(len.max(id.len() + 1));
    v.extend_from_slice(id.as_bytes());
    v.push(b'|');
    while v.len() < len {
        v.push(b'a' + ((seq as usize + v.len()) % 26) as u8);
    }
    v
}

/// The key: a thousand distinct keys per producer.
fn make_key(producer: usize, seq: u64) -> String {
    format!("key-{producer}-{}", seq % 1000)
}

/// The headers: the id, and on every other record the producer's codec.
fn make_headers(id: &str, producer: usize, seq: u64) -> Vec<(&'static str, Vec<u8>)> {
    let mut h = vec![("chaos-id", id.as_bytes().to_vec())];
    if seq % 2 == 0 {
        h.push(("chaos-codec", COMPRESSIONS[producer].as_bytes().to_vec()));
    }
    h
}

/// (topic, partition, producer, seq) of a value made by [`make_value`].
fn parse_id(value: &[u8]) -> Option<(&str, i32, usize, u64)> {
    let end = value.iter().position(|b| *b == b'|')?;
    let id = std::str::from_utf8(&value[..end]).ok()?;
    let mut it = id.split(':');
    let topic = it.next()?;
    let partition = it.next()?.parse().ok()?;
    let producer: usize = it.next()?.parse().ok()?;
    let seq = it.next()?.parse().ok()?;
    if it.next().is_some() || producer >= COMPRESSIONS.len() {
        return None;
    }
    Some((topic, partition, producer, seq))
}

/// A record read back for the checks.
#[derive(Debug, Clone, Copy)]
struct Got {
    offset: i64,
    /// [`packed`] id; `None` when the record is not one this harness wrote
    /// to this source topic and partition.
    id: Option<u64>,
    timestamp: i64,
    /// Key, value and headers are exactly what the generator makes for the id.
    intact: bool,
}

/// One partition read back: its records and its high watermark.
#[derive(Debug, Default)]
struct PartitionData {
    recs: Vec<Got>,
    end: i64,
}

/// Reads a message of a copy of `source_topic`, partition `partition`.
fn got(m: &BorrowedMessage<'_>, source_topic: &str) -> Got {
    let value = m.payload().unwrap_or_default();
    let mut g = Got {
        offset: m.offset(),
        id: None,
        timestamp: m.timestamp().to_millis().unwrap_or(-1),
        intact: false,
    };
    let Some((topic, partition, producer, seq)) = parse_id(value) else {
        return g;
    };
    if topic != source_topic || partition != m.partition() {
        return g;
    }
    g.id = Some(packed(producer, seq));
    let id = id_text(topic, partition, producer, seq);
    let headers: Vec<(String, Vec<u8>)> = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default();
    let want: Vec<(String, Vec<u8>)> = make_headers(&id, producer, seq)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    g.intact = value == make_value(&id, seq).as_slice()
        && m.key() == Some(make_key(producer, seq).as_bytes())
        && headers == want;
    g
}

// ---------------------------------------------------------------------------
// Small helpers.

/// Seconds as text with one decimal.
fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// A random duration in `[lo, hi]`.
fn between(rng: &mut StdRng, (lo, hi): (Duration, Duration)) -> Duration {
    if hi <= lo {
        return lo;
    }
    Duration::from_millis(rng.random_range(lo.as_millis() as u64..=hi.as_millis() as u64))
}

/// Sends a signal with the `kill` command (the crate denies unsafe code).
fn signal(pid: u32, sig: &str) -> Result<(), String> {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("kill -{sig} {pid}: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("kill -{sig} {pid}: {st}"))
    }
}

/// True while `pid` runs (not gone, not a zombie).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|st| st != "Z" && st != "X")
        })
        .unwrap_or(false)
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A group-less consumer of `bootstrap` (assign only; never commits).
fn plain_consumer(bootstrap: &str) -> Result<BaseConsumer, String> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "kmirror-harness-plain")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.queue.backoff.ms", "1")
        .set("log_level", "0")
        .create()
        .map_err(|e| e.to_string())
}

/// Partition count of `topic` at `bootstrap` (listing all topics, so that
/// asking does not create it); `None` when missing or unreachable.
fn partition_count(c: &BaseConsumer, topic: &str) -> Option<i32> {
    let md = c.fetch_metadata(None, Duration::from_secs(5)).ok()?;
    md.topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len() as i32)
}

/// High watermarks of the partitions of `topics`, keyed by (index in
/// `topics`, partition); partitions that do not answer are left out.
fn watermarks(c: &BaseConsumer, topics: &[String], partitions: i32) -> HashMap<(usize, i32), i64> {
    let mut out = HashMap::new();
    // Only topics that exist: asking for the watermarks of a missing topic
    // could have the broker create it (kmirror must create it).
    let Ok(md) = c.fetch_metadata(None, Duration::from_secs(5)) else {
        return out;
    };
    for (i, t) in topics.iter().enumerate() {
        if !md.topics().iter().any(|m| m.name() == t.as_str()) {
            continue;
        }
        for p in 0..partitions {
            if let Ok((_, hi)) = c.fetch_watermarks(t, p, Duration::from_secs(3)) {
                out.insert((i, p), hi);
            }
        }
    }
    out
}

/// Reads every partition of `topic` from its low to its high watermark
/// (taken at the start), calling `f` for each message. Returns the high
/// watermarks; an empty list when the topic does not exist.
fn read_all(
    bootstrap: &str,
    topic: &str,
    mut f: impl FnMut(&BorrowedMessage<'_>),
) -> Result<Vec<i64>, String> {
    let c = plain_consumer(bootstrap)?;
    let Some(parts) = partition_count(&c, topic) else {
        return Ok(Vec::new());
    };
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    let mut pending = 0usize;
    let mut total = 0i64;
    for p in 0..parts {
        let (lo, hi) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(|e| format!("watermarks of {topic}/{p}: {e}"))?;
        ends.push(hi);
        if hi > lo {
            pending += 1;
            total += hi - lo;
            tpl.add_partition_offset(topic, p, Offset::Offset(lo))
                .map_err(|e| e.to_string())?;
        }
    }
    if pending == 0 {
        return Ok(ends);
    }
    c.assign(&tpl).map_err(|e| e.to_string())?;
    let timeout = Duration::from_secs(120 + (total / 5000) as u64);
    let deadline = Instant::now() + timeout;
    let mut done = vec![false; parts as usize];
    for (p, d) in done.iter_mut().enumerate() {
        *d = tpl.find_partition(topic, p as i32).is_none();
    }
    while done.iter().any(|d| !d) {
        if Instant::now() > deadline {
            return Err(format!(
                "reading {topic} at {bootstrap}: not done after {}",
                secs(timeout)
            ));
        }
        // Errors (a broker that is restarting) are retried by librdkafka.
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let p = m.partition() as usize;
            if p < done.len() && !done[p] {
                f(&m);
                if m.offset() + 1 >= ends[p] {
                    done[p] = true;
                }
            }
        }
    }
    Ok(ends)
}

/// Reads a copy of `source_topic` (the topic itself or its mirror) for the
/// checks: `partitions` entries (more if the topic has more).
fn read_copy(
    bootstrap: &str,
    topic: &str,
    source_topic: &str,
    partitions: i32,
) -> Result<Vec<PartitionData>, String> {
    let mut out: Vec<PartitionData> = (0..partitions).map(|_| PartitionData::default()).collect();
    let ends = read_all(bootstrap, topic, |m| {
        let p = m.partition() as usize;
        while out.len() <= p {
            out.push(PartitionData::default());
        }
        out[p].recs.push(got(m, source_topic));
    })?;
    for (p, e) in ends.into_iter().enumerate() {
        while out.len() <= p {
            out.push(PartitionData::default());
        }
        out[p].end = e;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Load: three idempotent producers writing explicit partitions.

/// Counters of the load, shared with the harness.
#[derive(Debug, Default)]
struct LoadStats {
    acked: AtomicU64,
    failed: AtomicU64,
    bursts: AtomicU64,
    queue_full: AtomicU64,
    producer_restarts: AtomicU64,
}

/// Counts delivery reports.
struct AckContext(Arc<LoadStats>);

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = ();

    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        let c = match r {
            Ok(_) => &self.0.acked,
            Err(_) => &self.0.failed,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

type LoadProducer = ThreadedProducer<AckContext>;

fn load_producer(
    bootstrap: &str,
    compression: &str,
    stats: &Arc<LoadStats>,
) -> Result<LoadProducer, String> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "0")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", compression)
        .set("linger.ms", "5")
        // Ride out a source restart: retry for up to 10 minutes.
        .set("message.timeout.ms", "600000")
        .set("queue.buffering.max.messages", "200000")
        .create_with_context(AckContext(stats.clone()))
        .map_err(|e| format!("source producer: {e}"))
}

/// The load thread's settings.
struct LoadPlan {
    bootstrap: String,
    partitions: i32,
    rate: u32,
    burst_records: (usize, usize),
    burst_every: (Duration, Duration),
    seed: u64,
}

/// The running load.
struct Load {
    stats: Arc<LoadStats>,
    burst_request: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Load {
    fn start(plan: LoadPlan) -> Result<Load, String> {
        let stats = Arc::new(LoadStats::default());
        let producers = COMPRESSIONS
            .iter()
            .map(|c| load_producer(&plan.bootstrap, c, &stats))
            .collect::<Result<Vec<_>, _>>()?;
        let burst_request = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, b, st) = (stats.clone(), burst_request.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("chaos-load".into())
            .spawn(move || load_loop(plan, producers, &s, &b, &st))
            .map_err(|e| e.to_string())?;
        Ok(Load {
            stats,
            burst_request,
            stop,
            handle: Some(handle),
        })
    }

    fn acked(&self) -> u64 {
        self.stats.acked.load(Ordering::Relaxed)
    }

    /// Asks for a burst of `n` records now.
    fn burst(&self, n: usize) {
        self.burst_request.store(n as u64, Ordering::Relaxed);
    }

    /// Stops producing and waits for the producers' last acknowledgements.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Picks (topic index, partition, producer) for the next record.
fn pick(rng: &mut StdRng, partitions: i32) -> (usize, i32, usize) {
    let total: u32 = WEIGHTS.iter().sum();
    let mut w = rng.random_range(0..total);
    let mut t = 0;
    while w >= WEIGHTS[t] {
        w -= WEIGHTS[t];
        t += 1;
    }
    (
        t,
        rng.random_range(0..partitions),
        rng.random_range(0..COMPRESSIONS.len()),
    )
}

/// Hands one record to its producer.
fn send_one(
    producers: &[LoadProducer],
    seqs: &[u64],
    (t, p, k): (usize, i32, usize),
) -> Result<(), KafkaError> {
    let seq = seqs[k];
    let id = id_text(TOPICS[t], p, k, seq);
    let value = make_value(&id, seq);
    let key = make_key(k, seq);
    let mut hs = OwnedHeaders::new();
    for (name, v) in make_headers(&id, k, seq) {
        hs = hs.insert(Header {
            key: name,
            value: Some(&v),
        });
    }
    let rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(TOPICS[t])
        .partition(p)
        .key(key.as_bytes())
        .payload(&value[..])
        .headers(hs);
    producers[k].send(rec).map_err(|(e, _)| e)
}

fn is_queue_full(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
    )
}

/// The load thread: `plan.rate` records per second spread over the topics,
/// partitions and producers at random, plus a burst every
/// `plan.burst_every` (or when asked), until `stop`; then waits for the
/// producers' last acknowledgements.
fn load_loop(
    plan: LoadPlan,
    mut producers: Vec<LoadProducer>,
    stats: &Arc<LoadStats>,
    burst_request: &AtomicU64,
    stop: &AtomicBool,
) {
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let mut seqs = vec![0u64; COMPRESSIONS.len()];
    let started = Instant::now();
    let mut sent = 0u64;
    let mut next_burst = Instant::now() + between(&mut rng, plan.burst_every);
    while !stop.load(Ordering::Relaxed) {
        // A producer with a fatal error (the idempotent producer's state
        // lost by a source restart) is replaced; what it held fails.
        for (k, p) in producers.iter_mut().enumerate() {
            if let Some((code, why)) = p.client().fatal_error() {
                let codec = COMPRESSIONS[k];
                eprintln!(
                    "chaos: source producer {k} ({codec}) hit a fatal error ({code:?}: {why}); replacing it"
                );
                stats.producer_restarts.fetch_add(1, Ordering::Relaxed);
                match load_producer(&plan.bootstrap, codec, stats) {
                    Ok(n) => *p = n,
                    Err(e) => eprintln!("chaos: {e}"),
                }
            }
        }
        let due = (started.elapsed().as_secs_f64() * f64::from(plan.rate)) as u64;
        while sent < due {
            let which = pick(&mut rng, plan.partitions);
            match send_one(&producers, &seqs, which) {
                Ok(()) => {
                    seqs[which.2] += 1;
                    sent += 1;
                }
                Err(e) => {
                    // A full queue (source down): skip this tick's records
                    // rather than build a backlog past the queue.
                    if is_queue_full(&e) {
                        stats.queue_full.fetch_add(1, Ordering::Relaxed);
                    }
                    sent = due;
                }
            }
        }
        let requested = burst_request.swap(0, Ordering::Relaxed) as usize;
        if requested > 0 || Instant::now() >= next_burst {
            let n = if requested > 0 {
                requested
            } else {
                rng.random_range(
                    plan.burst_records.0..=plan.burst_records.1.max(plan.burst_records.0),
                )
            };
            stats.bursts.fetch_add(1, Ordering::Relaxed);
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut i = 0;
            while i < n && !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let which = pick(&mut rng, plan.partitions);
                loop {
                    match send_one(&producers, &seqs, which) {
                        Ok(()) => {
                            seqs[which.2] += 1;
                            i += 1;
                            break;
                        }
                        Err(e)
                            if is_queue_full(&e)
                                && Instant::now() < deadline
                                && !stop.load(Ordering::Relaxed) =>
                        {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        Err(_) => {
                            i = n;
                            break;
                        }
                    }
                }
            }
            next_burst = Instant::now() + between(&mut rng, plan.burst_every);
            // The steady load goes on from now, without catching up.
            sent = sent.max((started.elapsed().as_secs_f64() * f64::from(plan.rate)) as u64);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in &producers {
        let _ = p.flush(Duration::from_secs(60));
    }
}

// ---------------------------------------------------------------------------
// Background readers: the checkpointed source group, and the latency
// follower on the target.

/// Reads the source topics in group `chaos-reader`, committing every second.
fn reader_loop(bootstrap: String, stop: Arc<AtomicBool>, read: Arc<AtomicU64>) {
    let c: BaseConsumer = match ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", READER_GROUP)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        .set("log_level", "0")
        .create()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chaos: {READER_GROUP} consumer: {e}");
            return;
        }
    };
    if let Err(e) = c.subscribe(&TOPICS) {
        eprintln!("chaos: {READER_GROUP} subscribe: {e}");
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(200)) {
            read.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the latency follower saw, per source topic index.
#[derive(Debug, Default)]
struct Follow {
    max_latency_ms: Mutex<[i64; 3]>,
    seen: [AtomicU64; 3],
}

/// Follows the target topics from the beginning; for the first copy of
/// each record, keeps the largest (now − record timestamp).
fn follow_loop(bootstrap: String, stop: Arc<AtomicBool>, follow: Arc<Follow>) {
    let mut consumers: Vec<Option<BaseConsumer>> = (0..TOPICS.len()).map(|_| None).collect();
    let mut first: HashSet<u64> = HashSet::new();
    let mut last_look = Instant::now() - Duration::from_secs(60);
    let meta = match plain_consumer(&bootstrap) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chaos: latency follower: {e}");
            return;
        }
    };
    while !stop.load(Ordering::Relaxed) {
        if consumers.iter().any(Option::is_none) && last_look.elapsed() > Duration::from_secs(1) {
            last_look = Instant::now();
            for (i, slot) in consumers.iter_mut().enumerate() {
                if slot.is_some() {
                    continue;
                }
                let name = target_topic(TOPICS[i]);
                let Some(parts) = partition_count(&meta, &name) else {
                    continue;
                };
                let mut tpl = TopicPartitionList::new();
                for p in 0..parts {
                    let _ = tpl.add_partition_offset(&name, p, Offset::Beginning);
                }
                if let Ok(c) = plain_consumer(&bootstrap) {
                    if c.assign(&tpl).is_ok() {
                        *slot = Some(c);
                    }
                }
            }
        }
        let mut any = false;
        for (i, c) in consumers.iter().enumerate() {
            let Some(c) = c else { continue };
            for _ in 0..2000 {
                let Some(Ok(m)) = c.poll(Duration::ZERO) else {
                    break;
                };
                any = true;
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                let Some((_, _, k, seq)) = m.payload().and_then(parse_id) else {
                    continue;
                };
                if !first.insert(packed(k, seq)) {
                    continue;
                }
                follow.seen[i].fetch_add(1, Ordering::Relaxed);
                if let Some(ts) = m.timestamp().to_millis() {
                    let mut max = follow
                        .max_latency_ms
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    max[i] = max[i].max(now - ts);
                }
            }
        }
        if !any {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

// ---------------------------------------------------------------------------
// kmirror processes.

/// One kmirror slot: the current process, if any, and its log.
struct Proc {
    /// `kmirror-N`.
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Starts `kmirror run --config CONFIG`, appending to the slot's log.
    fn start(&mut self, bin: &Path, config: &Path) -> Result<(), String> {
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let _ = writeln!(
            out,
            "==== chaos: starting {} with {} ====",
            self.name,
            config.display()
        );
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("KMIRROR_CHAOS_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL (works on a stopped process too) and reap.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit; `None` after `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.exited() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The exit status if the process has exited (it is then reaped).
    fn exited(&mut self) -> Option<ExitStatus> {
        let st = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(st)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Writes the kmirror config; `extra` adds the third flow.
fn write_config(path: &Path, source: &str, target: &str, extra: bool) -> Result<(), String> {
    let flow = |name: &str, topic: &str, delivery: &str| {
        format!(
            "[[flow]]\nname = \"{name}\"\ntopics = [\"{topic}\"]\ndelivery = \"{delivery}\"\ngroups = [\"chaos-.*\"]\ncheckpoint_interval = \"1s\"\nrefresh_topics_interval = \"2s\"\nsync_configs_interval = \"10s\"\n\n"
        )
    };
    let mut text = format!(
        "# kmirror config of the chaos harness ({}).\n\n\
         [source]\nalias = \"{SOURCE_ALIAS}\"\nbootstrap_servers = \"{source}\"\n\n\
         [source.properties]\n\"session.timeout.ms\" = \"{SESSION_TIMEOUT_MS}\"\n\"heartbeat.interval.ms\" = \"1000\"\n\n\
         [target]\nalias = \"{TARGET_ALIAS}\"\nbootstrap_servers = \"{target}\"\n\n\
         [target.properties]\n\"session.timeout.ms\" = \"{SESSION_TIMEOUT_MS}\"\n\n\
         [http]\nlisten = \"\"\n\n\
         [runtime]\nshutdown_timeout = \"{}s\"\nproducer_queue_kbytes = {PRODUCER_QUEUE_KBYTES}\n\n",
        if extra {
            "with the added flow"
        } else {
            "initial"
        },
        SHUTDOWN_TIMEOUT.as_secs()
    );
    text += &flow("alo", ALO_TOPIC, "at-least-once");
    text += &flow("eos", EOS_TOPIC, "exactly-once");
    if extra {
        text += &flow("extra", EXTRA_TOPIC, "at-least-once");
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// The harness.

/// Sets a flag when dropped, so that helper threads stop also on panic.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The running soak: brokers, kmirror processes, load, and what was seen.
struct Harness {
    // Processes first: dropped (killed) before the brokers.
    procs: Vec<Proc>,
    opts: Options,
    rng: StdRng,
    start: Instant,
    faults_start: Instant,
    config: [PathBuf; 2],
    extra_added: bool,
    errors: Vec<String>,
    notes: Vec<String>,
    events: Vec<FaultEvent>,
    /// Target high watermarks just before each fault.
    snaps: Vec<HashMap<(usize, i32), i64>>,
    last_status: Instant,
    follow: Arc<Follow>,
    load: Load,
    source: Nisshi,
    target: Nisshi,
    target_meta: BaseConsumer,
    target_topics: Vec<String>,
}

impl Harness {
    /// Seconds since the faults started.
    fn elapsed(&self) -> f64 {
        self.faults_start.elapsed().as_secs_f64()
    }

    /// A progress line on stderr, with the seconds since the start.
    fn say(&self, msg: &str) {
        eprintln!(
            "chaos: [{:>7.1}s] {msg}",
            self.start.elapsed().as_secs_f64()
        );
    }

    fn current_config(&self) -> &Path {
        &self.config[usize::from(self.extra_added)]
    }

    fn start_proc(&mut self, i: usize) -> Result<(), String> {
        let cfg = self.current_config().to_path_buf();
        self.procs[i].start(&self.opts.kmirror, &cfg)
    }

    /// Restarts every process that exited on its own, recording it.
    fn check_procs(&mut self) -> Result<(), String> {
        for i in 0..self.procs.len() {
            if let Some(st) = self.procs[i].exited() {
                let msg = format!(
                    "{} exited on its own ({st}); log tail:\n{}",
                    self.procs[i].name,
                    tail(&self.procs[i].log, 15)
                );
                self.say(&msg);
                self.errors.push(msg);
                self.start_proc(i)?;
            }
        }
        Ok(())
    }

    /// A progress line every 15 s.
    fn status(&mut self, force: bool) {
        if !force && self.last_status.elapsed() < Duration::from_secs(15) {
            return;
        }
        self.last_status = Instant::now();
        let seen: Vec<String> = TOPICS
            .iter()
            .zip(self.follow.seen.iter())
            .map(|(t, n)| format!("{t} {}", n.load(Ordering::Relaxed)))
            .collect();
        self.say(&format!(
            "source acknowledged {} records ({} bursts); first copies in the target: {}",
            self.load.acked(),
            self.load.stats.bursts.load(Ordering::Relaxed),
            seen.join(", ")
        ));
    }

    /// Waits `d`, watching the processes meanwhile.
    fn idle(&mut self, d: Duration) -> Result<(), String> {
        let until = Instant::now() + d;
        loop {
            self.check_procs()?;
            self.status(false);
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(Duration::from_millis(500)));
        }
    }

    /// A random process slot.
    fn pick_proc(&mut self) -> usize {
        self.rng.random_range(0..self.procs.len())
    }

    /// SIGTERM, then the exit must be 0 within shutdown_timeout + 10 s.
    fn term_and_wait(&mut self, i: usize) -> Result<String, String> {
        let Some(pid) = self.procs[i].pid() else {
            return Ok("not running".into());
        };
        signal(pid, "TERM")?;
        let t = Instant::now();
        let limit = SHUTDOWN_TIMEOUT + EXIT_GRACE;
        let detail = match self.procs[i].wait_exit(limit) {
            Some(st) if st.success() => format!("pid {pid} exited 0 in {}", secs(t.elapsed())),
            Some(st) => {
                let msg = format!(
                    "{} (pid {pid}) exited with {st} after SIGTERM ({}); log tail:\n{}",
                    self.procs[i].name,
                    secs(t.elapsed()),
                    tail(&self.procs[i].log, 15)
                );
                self.say(&msg);
                self.errors.push(msg);
                format!("pid {pid} exited with {st}")
            }
            None => {
                let msg = format!(
                    "{} (pid {pid}) still running {} after SIGTERM (shutdown_timeout {}); killed; log tail:\n{}",
                    self.procs[i].name,
                    secs(limit),
                    secs(SHUTDOWN_TIMEOUT),
                    tail(&self.procs[i].log, 15)
                );
                self.say(&msg);
                self.errors.push(msg);
                self.procs[i].kill9();
                format!("pid {pid} did not exit in {}", secs(limit))
            }
        };
        Ok(detail)
    }

    /// Injects one fault; returns (process, detail).
    fn inject(&mut self, kind: FaultKind) -> Result<(Option<usize>, String), String> {
        match kind {
            FaultKind::Kill9 => {
                let i = self.pick_proc();
                let pid = self.procs[i].pid().unwrap_or(0);
                self.procs[i].kill9();
                let down = between(
                    &mut self.rng,
                    (Duration::from_secs(1), Duration::from_secs(3)),
                );
                self.say(&format!(
                    "kill -9 {} (pid {pid}); restart in {}",
                    self.procs[i].name,
                    secs(down)
                ));
                self.idle(down)?;
                self.start_proc(i)?;
                Ok((Some(i), format!("pid {pid}, down {}", secs(down))))
            }
            FaultKind::Term | FaultKind::AddFlow => {
                let i = self.pick_proc();
                let mut detail = String::new();
                if kind == FaultKind::Term && self.rng.random_bool(0.5) {
                    // Right after a burst started: the process holds a
                    // full queue when it is told to stop.
                    let n = self.rng.random_range(
                        self.opts.burst_records.0
                            ..=self.opts.burst_records.1.max(self.opts.burst_records.0),
                    );
                    let before = self.load.acked();
                    self.load.burst(n);
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while self.load.acked() < before + n as u64 / 4 && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    detail = format!("during a burst of {n}, ");
                }
                self.say(&format!(
                    "SIGTERM {}{}",
                    self.procs[i].name,
                    if kind == FaultKind::AddFlow {
                        ", to restart it with the extra flow"
                    } else {
                        ""
                    }
                ));
                detail += &self.term_and_wait(i)?;
                if kind == FaultKind::AddFlow {
                    self.extra_added = true;
                    detail += ", restarted with the extra flow";
                }
                self.start_proc(i)?;
                Ok((Some(i), detail))
            }
            FaultKind::TargetRestart => {
                self.target.kill();
                let down = between(
                    &mut self.rng,
                    (Duration::from_secs(5), Duration::from_secs(20)),
                );
                self.say(&format!(
                    "target broker killed (-9); restart in {}",
                    secs(down)
                ));
                self.idle(down)?;
                let t = Instant::now();
                self.target.spawn()?;
                Ok((
                    None,
                    format!("down {}, ready in {}", secs(down), secs(t.elapsed())),
                ))
            }
            FaultKind::SourceRestart => {
                let t = Instant::now();
                if let Some(pid) = self.source.pid() {
                    let _ = signal(pid, "TERM");
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while running(pid) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                let stopped = t.elapsed();
                self.source.kill();
                self.say(&format!(
                    "source broker stopped (SIGTERM, {}); restarting",
                    secs(stopped)
                ));
                let t = Instant::now();
                self.source.spawn()?;
                Ok((
                    None,
                    format!("stop {}, ready in {}", secs(stopped), secs(t.elapsed())),
                ))
            }
            FaultKind::Stop => {
                let i = self.pick_proc();
                let Some(pid) = self.procs[i].pid() else {
                    return Ok((Some(i), "not running".into()));
                };
                let hold = between(
                    &mut self.rng,
                    (Duration::from_secs(10), Duration::from_secs(15)),
                );
                signal(pid, "STOP")?;
                self.say(&format!(
                    "SIGSTOP {} (pid {pid}) for {} (session timeout {} ms)",
                    self.procs[i].name,
                    secs(hold),
                    SESSION_TIMEOUT_MS
                ));
                std::thread::sleep(hold);
                signal(pid, "CONT")?;
                Ok((Some(i), format!("pid {pid}, frozen {}", secs(hold))))
            }
        }
    }

    fn faults(&mut self) -> Result<(), String> {
        let kinds = if self.opts.kinds.is_empty() {
            FaultKind::ALL.to_vec()
        } else {
            self.opts.kinds.clone()
        };
        let mut plan: Vec<FaultKind> = kinds.clone();
        plan.shuffle(&mut self.rng);
        self.faults_start = Instant::now();
        let hard_stop = self.opts.fault_time * 3 + Duration::from_secs(600);
        while (self.faults_start.elapsed() < self.opts.fault_time || !plan.is_empty())
            && self.faults_start.elapsed() < hard_stop
        {
            let gap = between(&mut self.rng, self.opts.fault_gap);
            self.idle(gap)?;
            if self.faults_start.elapsed() >= self.opts.fault_time && plan.is_empty() {
                break;
            }
            let kind = match plan.pop() {
                Some(k) => k,
                None => loop {
                    let k = kinds[self.rng.random_range(0..kinds.len())];
                    if k != FaultKind::AddFlow || !self.extra_added || kinds.len() == 1 {
                        break k;
                    }
                },
            };
            let snap = self.snapshot();
            let at = self.elapsed();
            let (process, detail) = self.inject(kind)?;
            self.snaps.push(snap);
            self.events.push(FaultEvent {
                kind,
                at_secs: at,
                process: process.map(|i| i + 1),
                detail,
                alo_duplicates: 0,
                eos_duplicates: 0,
                duplicates_by_partition: BTreeMap::new(),
            });
            self.status(true);
        }
        Ok(())
    }

    /// Target high watermarks now; partitions that do not answer keep the
    /// previous snapshot's value.
    fn snapshot(&self) -> HashMap<(usize, i32), i64> {
        let mut s = watermarks(&self.target_meta, &self.target_topics, self.opts.partitions);
        if let Some(prev) = self.snaps.last() {
            for (k, v) in prev {
                s.entry(*k).or_insert(*v);
            }
        }
        s
    }

    /// Topic indexes whose flow is configured.
    fn checked_topics(&self) -> Vec<usize> {
        if self.extra_added {
            vec![0, 1, 2]
        } else {
            vec![0, 1]
        }
    }

    /// Source records of the checked topics not yet in the target.
    fn missing(&self, src: &[Vec<PartitionData>]) -> Result<u64, String> {
        let mut n = 0;
        for i in self.checked_topics() {
            let dst = read_copy(
                &self.target.bootstrap(),
                &self.target_topics[i],
                TOPICS[i],
                self.opts.partitions,
            )?;
            n += check_topic(&src[i], &dst).report.lost;
        }
        Ok(n)
    }

    /// Committed offsets of the reader group for the checked topics, by
    /// (topic index, partition); partitions without a commit are left out.
    fn reader_commits(&self) -> Result<HashMap<(usize, i32), i64>, String> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.source.bootstrap())
            .set("group.id", READER_GROUP)
            .set("enable.auto.commit", "false")
            .set("log_level", "0")
            .create()
            .map_err(|e| e.to_string())?;
        let mut tpl = TopicPartitionList::new();
        for i in self.checked_topics() {
            for p in 0..self.opts.partitions {
                tpl.add_partition(TOPICS[i], p);
            }
        }
        let got = c
            .committed_offsets(tpl, Duration::from_secs(10))
            .map_err(|e| format!("committed offsets of {READER_GROUP}: {e}"))?;
        let mut out = HashMap::new();
        for e in got.elements() {
            if let (Some(i), Offset::Offset(o)) =
                (TOPICS.iter().position(|t| *t == e.topic()), e.offset())
            {
                out.insert((i, e.partition()), o);
            }
        }
        Ok(out)
    }

    /// Upstream offset of the last checkpoint of the reader group, by
    /// (topic index, partition).
    fn last_checkpoints(&self) -> Result<HashMap<(usize, i32), i64>, String> {
        let mut out = HashMap::new();
        read_all(&self.target.bootstrap(), CHECKPOINTS_TOPIC, |m| {
            let (Some(k), Some(v)) = (m.key(), m.payload()) else {
                return;
            };
            let Ok(cp) = Checkpoint::decode(k, v) else {
                return;
            };
            if cp.group != READER_GROUP {
                return;
            }
            if let Some(i) = self.target_topics.iter().position(|t| *t == cp.topic) {
                out.insert((i, cp.partition), cp.upstream_offset);
            }
        })?;
        Ok(out)
    }

    /// After the drain: waits until the reader group has committed the end
    /// of every source partition, then until kmirror's last checkpoint of
    /// each partition is that commit. Returns (current, partitions) per
    /// topic index.
    fn checkpoints_current(
        &mut self,
        src: &[Vec<PartitionData>],
    ) -> Result<HashMap<usize, (u64, u64)>, String> {
        let ends: HashMap<(usize, i32), i64> = self
            .checked_topics()
            .into_iter()
            .flat_map(|i| {
                src[i]
                    .iter()
                    .enumerate()
                    .map(move |(p, d)| ((i, p as i32), d.end))
            })
            .collect();
        let deadline = Instant::now() + CHECKPOINT_CATCH_UP;
        let mut commits = self.reader_commits()?;
        while ends.iter().any(|(k, e)| commits.get(k) != Some(e)) {
            if Instant::now() > deadline {
                let behind = ends
                    .iter()
                    .filter(|(k, e)| commits.get(k) != Some(e))
                    .count();
                self.notes.push(format!(
                    "{READER_GROUP} had not committed the end of {behind} partition(s) {} s after the drain (checked against its commits as they were)",
                    CHECKPOINT_CATCH_UP.as_secs()
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
            commits = self.reader_commits()?;
        }
        let deadline = Instant::now() + CHECKPOINT_CATCH_UP;
        let mut last = self.last_checkpoints()?;
        while commits.iter().any(|(k, c)| last.get(k) != Some(c)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_secs(1));
            last = self.last_checkpoints()?;
        }
        let mut out: HashMap<usize, (u64, u64)> = HashMap::new();
        for (k, c) in &commits {
            let e = out.entry(k.0).or_default();
            e.1 += 1;
            if last.get(k) == Some(c) {
                e.0 += 1;
            } else {
                self.say(&format!(
                    "{READER_GROUP} committed {c} on {}/{} but the last checkpoint says {:?}",
                    TOPICS[k.0],
                    k.1,
                    last.get(k)
                ));
            }
        }
        self.say("checkpoints compared with the reader group's final commits");
        Ok(out)
    }

    /// Waits until every source record is in the target and the target
    /// has not changed for 5 s, or the drain deadline.
    fn drain(&mut self, src: &[Vec<PartitionData>]) -> Result<(), String> {
        let deadline = Instant::now() + self.opts.drain_timeout;
        let topics = self.checked_topics();
        let src_ends: HashMap<(usize, i32), i64> = topics
            .iter()
            .flat_map(|&i| {
                src[i]
                    .iter()
                    .enumerate()
                    .map(move |(p, d)| ((i, p as i32), d.end))
            })
            .collect();
        let mut last: HashMap<(usize, i32), i64> = HashMap::new();
        let mut since = Instant::now();
        let mut read_at: Option<HashMap<(usize, i32), i64>> = None;
        loop {
            self.check_procs()?;
            let hw = watermarks(&self.target_meta, &self.target_topics, self.opts.partitions);
            if hw != last {
                last = hw.clone();
                since = Instant::now();
            }
            let covered = src_ends
                .iter()
                .all(|(k, e)| hw.get(k).is_some_and(|h| h >= e));
            let quiet = since.elapsed() >= Duration::from_secs(5);
            let out_of_time = Instant::now() >= deadline;
            if (covered && quiet && read_at.as_ref() != Some(&hw)) || out_of_time {
                let missing = self.missing(src)?;
                if missing == 0 {
                    self.say("drained: every source record is in the target");
                    return Ok(());
                }
                if out_of_time {
                    self.say(&format!(
                        "drain deadline ({}) passed with {missing} source record(s) not in the target",
                        secs(self.opts.drain_timeout)
                    ));
                    return Ok(());
                }
                self.say(&format!(
                    "{missing} source record(s) not in the target yet; waiting"
                ));
                read_at = Some(hw);
            }
            self.status(false);
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

// ---------------------------------------------------------------------------
// Checks.

/// The result of checking one target topic against its source topic.
struct TopicCheck {
    report: FlowReport,
    /// (partition, target offset) of each extra copy.
    duplicates: Vec<(i32, i64)>,
    /// Per partition: (target offset, highest source offset mirrored up to
    /// and including it) for every target record from the source.
    truth: Vec<Vec<(i64, i64)>>,
    /// Per partition: the target's high watermark.
    ends: Vec<i64>,
    /// Source records that appear more than once in the source (test-bed).
    source_repeats: u64,
    /// Source records that are not the generator's (test-bed).
    source_bad: u64,
}

/// Checks one target topic against its source topic, partition by
/// partition. The k-th copy of a record in the target maps to its k-th
/// occurrence in the source (normally there is one), so that a source that
/// itself holds a record twice is not mistaken for a duplicate.
fn check_topic(src: &[PartitionData], dst: &[PartitionData]) -> TopicCheck {
    let mut c = TopicCheck {
        report: FlowReport::default(),
        duplicates: Vec::new(),
        truth: Vec::new(),
        ends: Vec::new(),
        source_repeats: 0,
        source_bad: 0,
    };
    let empty = PartitionData::default();
    for p in 0..src.len().max(dst.len()) {
        let s = src.get(p).unwrap_or(&empty);
        let d = dst.get(p).unwrap_or(&empty);
        // id -> (source offset, timestamp) of each occurrence.
        let mut occurrences: HashMap<u64, Vec<(i64, i64)>> = HashMap::with_capacity(s.recs.len());
        for r in &s.recs {
            match r.id {
                Some(id) if r.intact => {
                    let o = occurrences.entry(id).or_default();
                    if !o.is_empty() {
                        c.source_repeats += 1;
                    }
                    o.push((r.offset, r.timestamp));
                }
                _ => c.source_bad += 1,
            }
        }
        c.report.records += s.recs.len() as u64;
        c.report.target_records += d.recs.len() as u64;
        let mut copies: HashMap<u64, usize> = HashMap::with_capacity(d.recs.len());
        let mut prev: Option<i64> = None;
        let mut high = -1i64;
        let mut truth = Vec::with_capacity(d.recs.len());
        for r in &d.recs {
            let Some(occ) = r.id.and_then(|id| occurrences.get(&id)) else {
                c.report.foreign += 1;
                continue;
            };
            let id = r.id.unwrap_or_default();
            let k = copies.entry(id).or_insert(0);
            let (pos, ts) = occ[(*k).min(occ.len() - 1)];
            if *k >= occ.len() {
                c.report.duplicated += 1;
                c.duplicates.push((p as i32, r.offset));
            }
            *k += 1;
            if !r.intact || r.timestamp != ts {
                c.report.corrupt += 1;
            }
            if prev.is_some_and(|q| pos < q) {
                c.report.out_of_order += 1;
            }
            prev = Some(pos);
            high = high.max(pos);
            truth.push((r.offset, high));
        }
        for (id, occ) in &occurrences {
            let n = copies.get(id).copied().unwrap_or(0);
            c.report.lost += occ.len().saturating_sub(n) as u64;
        }
        c.truth.push(truth);
        c.ends.push(d.end);
    }
    c
}

/// Checks the checkpoints of one target topic: (checked, ahead, exact).
/// The truth for upstream offset n is the target offset of the first
/// target record that came from source offset n or later, else the end of
/// the target partition.
fn check_checkpoints(cps: &[Checkpoint], topic: &str, c: &TopicCheck) -> (u64, u64, u64) {
    let (mut checked, mut ahead, mut exact) = (0, 0, 0);
    for cp in cps.iter().filter(|cp| cp.topic == topic) {
        let p = cp.partition as usize;
        let (Some(truth), Some(end)) = (c.truth.get(p), c.ends.get(p)) else {
            continue;
        };
        let i = truth.partition_point(|(_, high)| *high < cp.upstream_offset);
        let t = truth.get(i).map_or(*end, |(o, _)| *o);
        checked += 1;
        if cp.downstream_offset > t {
            ahead += 1;
        } else if cp.downstream_offset == t {
            exact += 1;
        }
    }
    (checked, ahead, exact)
}

/// ERROR lines of the kmirror logs: how many, and up to 8 distinct
/// messages (numbers masked, so that ports and offsets do not make them
/// distinct), kmirror's own before librdkafka's (`facility=`), which are
/// mostly connection refusals while a broker is down.
fn error_lines(procs: &[Proc]) -> (u64, Vec<String>) {
    let mut n = 0;
    let mut seen: HashSet<String> = HashSet::new();
    let mut own: Vec<String> = Vec::new();
    let mut client: Vec<String> = Vec::new();
    for p in procs {
        let text = std::fs::read_to_string(&p.log).unwrap_or_default();
        for l in text.lines().filter(|l| l.contains(" ERROR ")) {
            n += 1;
            let msg = l.split_once(" ERROR ").map_or(l, |(_, m)| m).trim();
            let mut shape = String::new();
            for ch in msg.chars() {
                if !ch.is_ascii_digit() {
                    shape.push(ch);
                } else if !shape.ends_with('#') {
                    shape.push('#');
                }
            }
            if !seen.insert(shape) {
                continue;
            }
            let line = format!("{}: {}", p.name, msg.chars().take(300).collect::<String>());
            if msg.contains("facility=") || msg.starts_with("librdkafka") {
                client.push(line);
            } else {
                own.push(line);
            }
        }
    }
    own.extend(client);
    own.truncate(8);
    (n, own)
}

/// Runs the whole soak: set-up, faults, drain, checks. `Err` when the
/// harness itself cannot go on (a broker that does not start, kmirror that
/// never mirrors anything, a topic that cannot be read); broken guarantees
/// are in the [`Report`] ([`Report::violations`]).
pub fn run(opts: Options) -> Result<Report, String> {
    nisshi_bin()?;
    if !opts.kmirror.is_file() {
        return Err(format!(
            "{} not found: build it with `cargo build --release --bins`",
            opts.kmirror.display()
        ));
    }
    if opts.partitions < 1 || opts.processes < 1 {
        return Err("partitions and processes must be at least 1".into());
    }
    let start = Instant::now();
    let dir = match &opts.keep {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "kmirror-chaos-{}-{}",
            std::process::id(),
            opts.seed
        )),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    eprintln!(
        "chaos: seed {} (rerun with --seed {}), work dir {}",
        opts.seed,
        opts.seed,
        dir.display()
    );
    let mut rng = StdRng::seed_from_u64(opts.seed);

    let source = Nisshi::start(
        "chaos-source",
        0,
        Storage::Sqlite(dir.join("source.db")),
        &dir.join("source.log"),
    )?;
    let target = Nisshi::start(
        "chaos-target",
        0,
        Storage::Sqlite(dir.join("target.db")),
        &dir.join("target.log"),
    )?;
    for t in TOPICS {
        source.create_topic(t, opts.partitions, &[("retention.ms", "-1")])?;
    }
    for (t, policy) in TARGET_INTERNAL {
        target.create_topic(t, 1, &[("cleanup.policy", policy), ("retention.ms", "-1")])?;
    }
    let config = [dir.join("kmirror.toml"), dir.join("kmirror-extra.toml")];
    write_config(&config[0], &source.bootstrap(), &target.bootstrap(), false)?;
    write_config(&config[1], &source.bootstrap(), &target.bootstrap(), true)?;

    let load = Load::start(LoadPlan {
        bootstrap: source.bootstrap(),
        partitions: opts.partitions,
        rate: opts.rate,
        burst_records: opts.burst_records,
        burst_every: opts.burst_every,
        seed: rng.random(),
    })?;
    let threads_stop = Arc::new(AtomicBool::new(false));
    let _stop_guard = StopOnDrop(threads_stop.clone());
    let reader_read = Arc::new(AtomicU64::new(0));
    let reader = {
        let (b, s, r) = (
            source.bootstrap(),
            threads_stop.clone(),
            reader_read.clone(),
        );
        std::thread::Builder::new()
            .name("chaos-reader".into())
            .spawn(move || reader_loop(b, s, r))
            .map_err(|e| e.to_string())?
    };
    let follow = Arc::new(Follow::default());
    let follower = {
        let (b, s, f) = (target.bootstrap(), threads_stop.clone(), follow.clone());
        std::thread::Builder::new()
            .name("chaos-follow".into())
            .spawn(move || follow_loop(b, s, f))
            .map_err(|e| e.to_string())?
    };
    let target_meta = plain_consumer(&target.bootstrap())?;
    let target_topics: Vec<String> = TOPICS.iter().map(|t| target_topic(t)).collect();
    let mut h = Harness {
        procs: (1..=opts.processes)
            .map(|i| Proc {
                name: format!("kmirror-{i}"),
                child: None,
                log: dir.join(format!("kmirror-{i}.log")),
            })
            .collect(),
        rng,
        start,
        faults_start: Instant::now(),
        config,
        extra_added: false,
        errors: Vec::new(),
        notes: Vec::new(),
        events: Vec::new(),
        snaps: Vec::new(),
        last_status: Instant::now(),
        follow,
        load,
        source,
        target,
        target_meta,
        target_topics,
        opts,
    };
    for i in 0..h.procs.len() {
        h.start_proc(i)?;
    }
    h.say(&format!(
        "{} kmirror processes started; source {}, target {}",
        h.procs.len(),
        h.source.bootstrap(),
        h.target.bootstrap()
    ));
    // kmirror must be mirroring both flows before the faults start.
    let deadline = Instant::now() + Duration::from_secs(120);
    while h.follow.seen[0].load(Ordering::Relaxed) == 0
        || h.follow.seen[1].load(Ordering::Relaxed) == 0
    {
        h.check_procs()?;
        if Instant::now() > deadline {
            let logs: Vec<String> = h
                .procs
                .iter()
                .map(|p| format!("{}:\n{}", p.name, tail(&p.log, 20)))
                .collect();
            return Err(format!(
                "kmirror mirrored nothing of {ALO_TOPIC} and {EOS_TOPIC} within 120 s\n{}",
                logs.join("\n")
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    h.say("both flows are mirroring; faults start");

    h.faults()?;
    let minutes = h.elapsed() / 60.0;
    h.say(&format!(
        "faults done ({} in {:.1} min); stopping the load",
        h.events.len(),
        minutes
    ));
    h.load.stop();
    let acked = h.load.acked();
    let mut src = Vec::new();
    for t in TOPICS {
        src.push(read_copy(&h.source.bootstrap(), t, t, h.opts.partitions)?);
    }
    h.say("source topics read; draining");
    h.drain(&src)?;
    let current = h.checkpoints_current(&src)?;

    // Stop kmirror: every process gets SIGTERM and must exit 0 in time.
    for i in 0..h.procs.len() {
        if let Some(pid) = h.procs[i].pid() {
            let _ = signal(pid, "TERM");
        }
    }
    let stop_deadline = Instant::now() + SHUTDOWN_TIMEOUT + EXIT_GRACE;
    for i in 0..h.procs.len() {
        if h.procs[i].pid().is_none() {
            continue;
        }
        let left = stop_deadline.saturating_duration_since(Instant::now());
        match h.procs[i].wait_exit(left) {
            Some(st) if st.success() => {}
            Some(st) => {
                let msg = format!(
                    "{} exited with {st} after the final SIGTERM; log tail:\n{}",
                    h.procs[i].name,
                    tail(&h.procs[i].log, 15)
                );
                h.errors.push(msg);
            }
            None => {
                let msg = format!(
                    "{} still running {} after the final SIGTERM; killed; log tail:\n{}",
                    h.procs[i].name,
                    secs(SHUTDOWN_TIMEOUT + EXIT_GRACE),
                    tail(&h.procs[i].log, 15)
                );
                h.errors.push(msg);
                h.procs[i].kill9();
            }
        }
    }
    h.say("kmirror stopped; checking");
    threads_stop.store(true, Ordering::Relaxed);
    let _ = follower.join();
    let _ = reader.join();

    // Checks, from the topics alone.
    let mut cps = Vec::new();
    let mut undecodable = 0u64;
    read_all(&h.target.bootstrap(), CHECKPOINTS_TOPIC, |m| {
        match (m.key(), m.payload()) {
            (Some(k), Some(v)) => match Checkpoint::decode(k, v) {
                Ok(cp) => cps.push(cp),
                Err(_) => undecodable += 1,
            },
            _ => undecodable += 1,
        }
    })?;
    if undecodable > 0 {
        h.errors.push(format!(
            "{undecodable} record(s) in {CHECKPOINTS_TOPIC} do not decode as checkpoints"
        ));
    }
    let latency = *h
        .follow
        .max_latency_ms
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let mut alo = FlowReport::default();
    let mut eos = FlowReport::default();
    let mut topics = Vec::new();
    let mut dups_before = (0u64, 0u64);
    let mut dups_before_by_partition: BTreeMap<String, u64> = BTreeMap::new();
    let checked = h.checked_topics();
    for &i in &checked {
        let dst = read_copy(
            &h.target.bootstrap(),
            &h.target_topics[i],
            TOPICS[i],
            h.opts.partitions,
        )?;
        let c = check_topic(&src[i], &dst);
        let mut r = c.report.clone();
        let (n, ahead, exact) = check_checkpoints(&cps, &h.target_topics[i], &c);
        r.checkpoints_checked = n;
        r.checkpoints_ahead = ahead;
        r.checkpoints_exact = exact;
        if let Some((n, of)) = current.get(&i) {
            r.checkpoints_current = *n;
            r.checkpoint_partitions = *of;
        }
        r.max_latency_secs = latency[i].max(0) as f64 / 1000.0;
        if c.source_repeats > 0 || c.source_bad > 0 {
            h.notes.push(format!(
                "{}: the source itself holds {} repeated and {} unexpected record(s) (producer retries across a source restart); checked against the source as it is",
                TOPICS[i], c.source_repeats, c.source_bad
            ));
        }
        // Attribute each extra copy to the last fault before it landed.
        let is_eos = TOPICS[i] == EOS_TOPIC;
        for (p, o) in &c.duplicates {
            let n = h
                .snaps
                .partition_point(|s| s.get(&(i, *p)).copied().unwrap_or(0) <= *o);
            let (slot, by_partition) = match n.checked_sub(1).and_then(|k| h.events.get_mut(k)) {
                Some(e) if is_eos => (&mut e.eos_duplicates, &mut e.duplicates_by_partition),
                Some(e) => (&mut e.alo_duplicates, &mut e.duplicates_by_partition),
                None if is_eos => (&mut dups_before.1, &mut dups_before_by_partition),
                None => (&mut dups_before.0, &mut dups_before_by_partition),
            };
            *slot += 1;
            *by_partition
                .entry(format!("{}/{p}", TOPICS[i]))
                .or_insert(0) += 1;
        }
        if is_eos {
            eos.add(&r);
        } else if TOPICS[i] == EXTRA_TOPIC {
            // Its records wait for the flow to be added: their latency is
            // not the flow's.
            alo.add(&FlowReport {
                max_latency_secs: 0.0,
                ..r.clone()
            });
        } else {
            alo.add(&r);
        }
        topics.push((TOPICS[i].to_string(), r));
    }
    let source_total: u64 = checked
        .iter()
        .map(|&i| src[i].iter().map(|p| p.recs.len() as u64).sum::<u64>())
        .sum::<u64>()
        + if h.extra_added {
            0
        } else {
            src[2].iter().map(|p| p.recs.len() as u64).sum::<u64>()
        };
    if acked > source_total {
        h.notes.push(format!(
            "the source acknowledged {acked} records but holds {source_total}: the source broker lost acknowledged records (test-bed, not kmirror)"
        ));
    }
    let full = h.load.stats.queue_full.load(Ordering::Relaxed);
    if full > 0 {
        h.notes.push(format!(
            "the steady load skipped {full} tick(s) while the source producers' queues were full (source down)"
        ));
    }
    let restarts = h.load.stats.producer_restarts.load(Ordering::Relaxed);
    if restarts > 0 {
        h.notes.push(format!(
            "{restarts} source producer(s) replaced after a fatal error"
        ));
    }
    let mut faults: BTreeMap<FaultKind, u32> = FaultKind::ALL.iter().map(|k| (*k, 0)).collect();
    for e in &h.events {
        *faults.entry(e.kind).or_insert(0) += 1;
    }
    let report = Report {
        seed: h.opts.seed,
        minutes,
        total_secs: start.elapsed().as_secs_f64(),
        partitions: h.opts.partitions,
        processes: h.procs.len(),
        faults,
        events: h.events.clone(),
        duplicates_before_faults: dups_before,
        duplicates_before_faults_by_partition: dups_before_by_partition,
        alo,
        eos,
        topics,
        extra_flow_added: h.extra_added,
        acked,
        produce_failures: h.load.stats.failed.load(Ordering::Relaxed),
        bursts: h.load.stats.bursts.load(Ordering::Relaxed),
        reader_records: reader_read.load(Ordering::Relaxed),
        errors: h.errors.clone(),
        notes: h.notes.clone(),
        kmirror_error_lines: error_lines(&h.procs),
        work_dir: dir.clone(),
    };
    let keep = h.opts.keep.is_some();
    drop(h);
    if !keep && report.violations().is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_records_parse_back() {
        let id = id_text("chaos-alo", 7, 2, 123_456);
        let v = make_value(&id, 123_456);
        assert!((100..500).contains(&v.len()), "{}", v.len());
        assert_eq!(parse_id(&v), Some(("chaos-alo", 7, 2, 123_456)));
        assert_eq!(parse_id(b"chaos-alo:7:9:1|x"), None, "no producer 9");
        assert_eq!(parse_id(b"no id here"), None);
        assert_ne!(packed(0, 5), packed(1, 5));
    }

    fn data(ids: &[u64]) -> PartitionData {
        PartitionData {
            recs: ids
                .iter()
                .enumerate()
                .map(|(o, id)| Got {
                    offset: o as i64,
                    id: Some(*id),
                    timestamp: *id as i64,
                    intact: true,
                })
                .collect(),
            end: ids.len() as i64,
        }
    }

    #[test]
    fn check_counts_lost_duplicates_and_order() {
        let src = [data(&[10, 11, 12, 13, 14])];
        // 12 lost; 11 repeated after 13 (a re-delivery).
        let dst = [data(&[10, 11, 13, 11, 14])];
        let c = check_topic(&src, &dst);
        assert_eq!(c.report.records, 5);
        assert_eq!(c.report.target_records, 5);
        assert_eq!(c.report.lost, 1);
        assert_eq!(c.report.duplicated, 1);
        assert_eq!(c.report.out_of_order, 1);
        assert_eq!(c.duplicates, vec![(0, 3)]);
        assert_eq!(c.report.foreign, 0);
        assert_eq!(c.report.corrupt, 0);
        // An exact copy.
        let c = check_topic(&src, &src);
        assert_eq!(
            (c.report.lost, c.report.duplicated, c.report.out_of_order),
            (0, 0, 0)
        );
    }

    #[test]
    fn source_repeats_are_not_duplicates() {
        let src = [data(&[1, 2, 2, 3])];
        let c = check_topic(&src, &src);
        assert_eq!(c.source_repeats, 1);
        assert_eq!((c.report.lost, c.report.duplicated), (0, 0));
        let c = check_topic(&src, &[data(&[1, 2, 3])]);
        assert_eq!(c.report.lost, 1);
    }

    #[test]
    fn checkpoint_truth_is_the_first_record_at_or_after_upstream() {
        // Target: source offsets 0 1 2 3 1 2 3 4 (a re-delivery from 1).
        let src = [data(&[0, 1, 2, 3, 4])];
        let dst = [data(&[0, 1, 2, 3, 1, 2, 3, 4])];
        let c = check_topic(&src, &dst);
        let cp = |up: i64, down: i64| Checkpoint {
            group: READER_GROUP.into(),
            topic: "t".into(),
            partition: 0,
            upstream_offset: up,
            downstream_offset: down,
            metadata: String::new(),
        };
        let cps = [
            cp(2, 2), // exact: the first copy of 2 is at 2
            cp(2, 1), // behind: fine
            cp(4, 7), // exact
            cp(4, 8), // ahead of 7
            cp(5, 8), // past everything: the end, exact
            cp(5, 9), // ahead of the end
            cp(2, 5), // ahead of the first copy
        ];
        assert_eq!(check_checkpoints(&cps, "t", &c), (7, 3, 3));
        assert_eq!(check_checkpoints(&cps, "other", &c), (0, 0, 0));
        // A lost record: the truth is the next record's first copy.
        let c = check_topic(&src, &[data(&[0, 1, 3, 4])]);
        assert_eq!(check_checkpoints(&[cp(2, 2)], "t", &c), (1, 0, 1));
        assert_eq!(check_checkpoints(&[cp(2, 3)], "t", &c), (1, 1, 0));
    }
}
