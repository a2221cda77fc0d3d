//! The replication flow: one source consumer (the flow's consumer group)
//! and two idempotent target producers per flow (records; offset-sync
//! points, see [`Producers`]), driven from one thread.
//!
//! - **Order and fidelity**: each record goes to the same partition number
//!   of the target topic with its key, value (null stays null), headers in
//!   order and timestamp.
//! - **The ledger** ([`ledger`]): per partition, the one place that decides
//!   what may be committed and which offset-sync points may be written,
//!   from the contiguous prefix of acknowledged records. Commits and points
//!   never pass a record that was not written.
//! - **At-least-once**: a source offset is stored for commit only when its
//!   ledger says every record before it is acknowledged and described by a
//!   persisted point; commits go out every `[runtime] commit_interval`.
//! - **Refusals**: a record the target refuses permanently stops its
//!   partition (paused, nothing from it on committed), with an ERROR and
//!   `kmirror_partitions_paused{reason="stopped"}`; the others go on.
//! - **Backpressure**: the producer queue is bounded
//!   (`producer_queue_kbytes`); when it is full, every partition is paused
//!   and the consumer is still polled (rebalances are served, the member
//!   stays in its group) until half of the queue has drained.
//! - **Restarts**: a fatal producer error, or a revoke whose drain timed out
//!   (the producer is then purged), restarts the flow with fresh clients;
//!   it resumes from what the target acknowledged (the commit, or in
//!   exactly-once the target itself).
//! - **Exactly-once**: see [`eos`]; a partition whose resume position
//!   cannot be derived is held, never resumed from the group's commit.

mod delivery;
pub mod eos;
pub mod ledger;
mod rebalance;
pub mod slots;
pub mod throttle;
pub(crate) mod watchdog;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use prometheus::IntGauge;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, Producer, PurgeConfig};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use self::delivery::{record_size, DeliveryCtx};
use self::ledger::{Cause, PointRule};
use self::rebalance::{Assigned, FlowConsumerCtx};
use self::slots::{CachedSlot, Slot, SlotCache, SlotTable};
use crate::config::{ClusterConfig, Delivery, FlowConfig, RuntimeConfig};
use crate::discovery::MirrorSet;
use crate::kafka::{self, Role};
use crate::metrics::{Health, Metrics};
use crate::offsets::codec::OffsetSync;

/// The header that names the cluster a record was mirrored from.
pub const PROVENANCE_HEADER: &str = "kmirror-source";

/// An offset-sync point is written at least every this many records per
/// partition, so that an exactly-once resume reads a short tail.
pub const SYNC_EVERY: u64 = 1000;

/// A backpressure wait longer than this pauses every partition and polls
/// the consumer (well inside any `max.poll.interval.ms`).
const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// Opaque flag of offset-sync records; the rest holds slot and offset.
const SYNC_FLAG: usize = 1 << 63;
/// Slot index of a point that no slot waits for.
const NO_SLOT: usize = slots::MAX_SLOTS;
/// How long a partition must have been away before its per-partition
/// series are removed.
const SERIES_GRACE: Duration = Duration::from_secs(60);
const OFFSET_BITS: u32 = 48;
const OFFSET_MASK: usize = (1 << OFFSET_BITS) - 1;

use crate::offsets::offset_syncs_topic;

/// Milliseconds since the Unix epoch (the precise clock: the latency
/// histograms' first buckets are 1 and 2.5 ms, finer than the coarse
/// clock's tick).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A monotonic time from the kernel's coarse clock, for the consume loop's
/// freeze check around every `poll`: a read of the vDSO's data page, where
/// the precise clock also reads the TSC (see the README's benchmark
/// section for what two precise reads per record cost). Its resolution,
/// one scheduler tick (1–4 ms), is far finer than the check's threshold of
/// seconds.
pub(crate) fn mono_coarse() -> Duration {
    #[cfg(target_os = "linux")]
    {
        coarse(libc::CLOCK_MONOTONIC_COARSE)
    }
    #[cfg(not(target_os = "linux"))]
    {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        START.get_or_init(Instant::now).elapsed()
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn coarse(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec the call writes into; the coarse
    // clocks exist on every Linux since 2.6.32.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Repeated warnings (a cluster down for minutes) are logged at most once
/// per [`LogThrottle::EVERY`] per kind, with the number suppressed meanwhile;
/// the error metrics still count every one.
#[derive(Default)]
struct LogThrottle {
    last: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl LogThrottle {
    const EVERY: Duration = Duration::from_secs(30);

    /// `Some(suppressed since the last log)` when this one may be logged.
    fn allow(&self, kind: &'static str) -> Option<u64> {
        let mut m = self.last.lock().ok()?;
        let now = Instant::now();
        match m.get_mut(kind) {
            Some((at, n)) if now.duration_since(*at) < Self::EVERY => {
                *n += 1;
                None
            }
            Some((at, n)) => {
                let s = *n;
                *at = now;
                *n = 0;
                Some(s)
            }
            None => {
                m.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

/// State shared between the consume loop, the rebalance callback and the
/// delivery callback.
pub(crate) struct Shared {
    flow: String,
    source_alias: String,
    delivery: Delivery,
    metrics: Arc<Metrics>,
    slots: RwLock<SlotTable>,
    /// Points to write, with the slot waiting for each (or [`NO_SLOT`]).
    pending_syncs: Mutex<VecDeque<(usize, OffsetSync)>>,
    /// Latest known sync point per (source topic, partition).
    last_syncs: Mutex<HashMap<(String, i32), (i64, i64)>>,
    mirror: Mutex<Arc<MirrorSet>>,
    queue: IntGauge,
    /// Bumped on every assignment change (invalidates [`SlotCache`]s).
    generation: AtomicU64,
    throttle: LogThrottle,
    rule: PointRule,
    /// Why the flow must restart with fresh clients: (metric reason, text).
    restart: Mutex<Option<(&'static str, String)>>,
    /// Set with `restart` (and before a purge): nothing more is handed to
    /// the producer.
    halted: AtomicBool,
    /// Exactly-once: every hand-over to the producer is checked against
    /// the freeze watchdog (see [`watchdog`]).
    guard: Option<watchdog::FreezeGuard>,
    /// Set by the delivery callback when a record was not written (timed
    /// out, fatal): the producer's polling thread purges its queue at once,
    /// so that nothing queued behind that record lands after it (a gap).
    purge_now: Arc<AtomicBool>,
}

impl Shared {
    fn new(
        flow: &str,
        source_alias: &str,
        delivery: Delivery,
        metrics: Arc<Metrics>,
        interval_ms: i64,
        freeze_limit: Duration,
    ) -> Self {
        Self {
            purge_now: Arc::new(AtomicBool::new(false)),
            guard: (delivery == Delivery::ExactlyOnce)
                .then(|| watchdog::FreezeGuard::new(freeze_limit)),
            flow: flow.to_string(),
            source_alias: source_alias.to_string(),
            delivery,
            queue: metrics.producer_queue.with_label_values(&[flow]),
            metrics,
            slots: RwLock::new(SlotTable::default()),
            pending_syncs: Mutex::new(VecDeque::new()),
            last_syncs: Mutex::new(HashMap::new()),
            mirror: Mutex::new(Arc::new(MirrorSet::new())),
            throttle: LogThrottle::default(),
            generation: AtomicU64::new(0),
            rule: PointRule {
                every: SYNC_EVERY,
                interval_ms,
            },
            restart: Mutex::new(None),
            halted: AtomicBool::new(false),
        }
    }

    fn slot(&self, idx: usize) -> Option<Arc<Slot>> {
        self.slots.read().ok().and_then(|t| t.get(idx))
    }

    fn slot_for(&self, topic: &str, partition: i32) -> Option<(usize, Arc<Slot>)> {
        self.slots.read().ok()?.find(topic, partition)
    }

    /// Like [`Shared::slot_for`], remembering the last answer: records
    /// arrive in runs of one partition.
    fn slot_cached<'c>(
        &self,
        cache: &'c mut SlotCache,
        topic: &str,
        partition: i32,
    ) -> Option<&'c CachedSlot> {
        let generation = self.generation.load(Ordering::Acquire);
        let hit = matches!(cache, Some(c)
            if c.generation == generation && c.slot.partition == partition && c.slot.topic == topic);
        if !hit {
            *cache = self
                .slot_for(topic, partition)
                .map(|(i, s)| CachedSlot::new(generation, i, s, |s| &s.age));
        }
        cache.as_ref()
    }

    /// Like [`Shared::slot`], remembering the last answer (the delivery
    /// callback's reports come in runs of one partition).
    fn slot_at_cached<'c>(&self, cache: &'c mut SlotCache, idx: usize) -> Option<&'c CachedSlot> {
        let generation = self.generation.load(Ordering::Acquire);
        let hit = matches!(cache, Some(c) if c.generation == generation && c.idx == idx);
        if !hit {
            *cache = self
                .slot(idx)
                .map(|s| CachedSlot::new(generation, idx, s, |s| &s.latency));
        }
        cache.as_ref()
    }

    /// Creates the slot of a newly assigned partition.
    fn assign(
        &self,
        topic: &str,
        partition: i32,
        target: &str,
    ) -> Result<(usize, Arc<Slot>), String> {
        let m = &self.metrics;
        let p = m.partition_label(partition);
        let t = m.topic_label(topic);
        let labels = [self.flow.as_str(), t, p.as_str()];
        let slot = Arc::new(Slot::new(
            topic,
            partition,
            target,
            [
                m.records.with_label_values(&labels),
                m.bytes.with_label_values(&labels),
            ],
            [
                m.replication_latency.with_label_values(&[&self.flow, t]),
                m.record_age.with_label_values(&[&self.flow, t]),
            ],
        ));
        let idx = {
            let mut t = self.slots.write().map_err(|e| e.to_string())?;
            t.insert(slot.clone())?
        };
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok((idx, slot))
    }

    fn unassign(&self, topic: &str, partition: i32) {
        if let Ok(mut t) = self.slots.write() {
            t.remove(topic, partition);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        let p = partition.to_string();
        // (Coarser levels aggregate: the next statistics recompute them.)
        if self.metrics.per_partition() {
            let labels = [self.flow.as_str(), topic, p.as_str()];
            let _ = self.metrics.lag.remove_label_values(&labels);
            let _ = self.metrics.lag_seconds.remove_label_values(&labels);
        }
    }

    /// The assigned partitions' slots, with their indexes.
    fn assigned(&self) -> Vec<(usize, Arc<Slot>)> {
        self.slots.read().map(|t| t.assigned()).unwrap_or_default()
    }

    fn mirror_set(&self) -> Arc<MirrorSet> {
        self.mirror.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Queues points of slot `idx` for writing (called with its ledger
    /// locked, which counted them as pending).
    fn queue_points(&self, idx: usize, slot: &Slot, points: &[(i64, i64)]) {
        if let Ok(mut p) = self.pending_syncs.lock() {
            for &(s, t) in points {
                p.push_back((
                    idx,
                    OffsetSync {
                        topic: slot.topic.clone(),
                        partition: slot.partition,
                        upstream_offset: s,
                        downstream_offset: t,
                    },
                ));
            }
        }
    }

    /// Idle points of `slots` (see [`ledger::Ledger::idle_point`]).
    fn idle_points(&self, slots: &[Arc<Slot>], force: bool) {
        let now = now_ms();
        let table = self.slots.read();
        for slot in slots {
            let mut l = slot.ledger();
            let inflight = slot.inflight_with(&l);
            if let Some(p) = l.idle_point(inflight, now, force, self.rule) {
                let idx = table
                    .as_ref()
                    .ok()
                    .and_then(|t| t.find(&slot.topic, slot.partition))
                    .filter(|(_, s)| Arc::ptr_eq(s, slot))
                    .map_or(NO_SLOT, |(i, _)| i);
                if idx == NO_SLOT {
                    // A retired slot: nothing may wait for its points.
                    l.point_failed(p.0);
                    continue;
                }
                self.queue_points(idx, slot, &[p]);
            }
        }
    }

    /// Asks the flow to restart with fresh clients (the first reason wins).
    fn request_restart(&self, reason: &'static str, why: String) {
        self.halt();
        if let Ok(mut r) = self.restart.lock() {
            r.get_or_insert((reason, why));
        }
    }

    /// Nothing more is handed to the producer (call before a purge).
    fn halt(&self) {
        self.halted.store(true, Ordering::Release);
    }

    /// Exactly-once: false (and the flow halts and restarts) when the
    /// process was frozen for so long that its partitions may have moved
    /// to another member. Asked before each hand-over to the producer.
    fn may_hand_over(&self) -> bool {
        let Some(g) = &self.guard else {
            return true;
        };
        match g.check() {
            Ok(()) => true,
            Err(gap) => {
                if self.restart_requested().is_none() {
                    error!(flow = %self.flow, frozen = ?gap, "this process was frozen for longer than half the session timeout: its partitions may belong to another member now, so nothing more is handed to the producer, and the flow restarts with fresh clients (exactly-once resumes from the target)");
                }
                self.request_restart("frozen", format!("the process was frozen for {gap:?}"));
                false
            }
        }
    }

    /// Exactly-once, right after a hand-over: when the process froze
    /// between [`Shared::may_hand_over`] and the hand-over, the producer's
    /// queue is purged at once (before its `linger.ms` sends it).
    fn handed_over(&self, producer: &kafka::Polled<DeliveryCtx>) {
        if self.guard.is_some() && !self.may_hand_over() {
            producer.purge(PurgeConfig::default().queue());
        }
    }

    fn restart_requested(&self) -> Option<(&'static str, String)> {
        self.restart.lock().ok().and_then(|r| r.clone())
    }
}

/// Hands the pending offset-sync points to the producer. When its queue
/// stays full until `deadline`, the points left are kept for the next call
/// (commits wait for them; nothing is dropped, nothing spins for ever).
fn produce_syncs(sh: &Shared, producer: &kafka::Polled<DeliveryCtx>, deadline: Instant) {
    let topic = offset_syncs_topic(&sh.source_alias);
    loop {
        if !sh.may_hand_over() {
            // Frozen: the points wait (a restart follows).
            return;
        }
        let Some((idx, s)) = sh.pending_syncs.lock().ok().and_then(|mut p| p.pop_front()) else {
            return;
        };
        let (k, v) = (s.key(), s.value());
        let opaque = SYNC_FLAG
            | (idx.min(NO_SLOT) << OFFSET_BITS)
            | (s.upstream_offset as usize & OFFSET_MASK);
        let mut rec: BaseRecord<'_, [u8], [u8], usize> = BaseRecord::with_opaque_to(&topic, opaque)
            .partition(0)
            .key(&k[..])
            .payload(&v[..]);
        loop {
            match producer.send(rec) {
                Ok(()) => {
                    sh.handed_over(producer);
                    if let Ok(mut m) = sh.last_syncs.lock() {
                        m.insert(
                            (s.topic.clone(), s.partition),
                            (s.upstream_offset, s.downstream_offset),
                        );
                    }
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    if Instant::now() >= deadline {
                        if let Ok(mut p) = sh.pending_syncs.lock() {
                            p.push_front((idx, s));
                        }
                        return;
                    }
                    rec = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, _)) => {
                    if let Some(slot) = (idx < NO_SLOT).then(|| sh.slot(idx)).flatten() {
                        slot.ledger().point_failed(s.upstream_offset);
                    }
                    sh.metrics
                        .errors
                        .with_label_values(&[&sh.flow, "offset_sync"])
                        .inc();
                    warn!(flow = %sh.flow, error = %e, "cannot queue an offset-sync point; commits wait for the next one");
                    break;
                }
            }
        }
    }
}

/// The source consumer's session timeout (`session.timeout.ms` of
/// `[source.properties]`, else kmirror's default, 45 s).
fn session_timeout(source: &ClusterConfig) -> Duration {
    source
        .ms_property("session.timeout.ms", 45_000)
        .max(Duration::from_secs(1))
}

/// The source consumer's heartbeat interval (`heartbeat.interval.ms` of
/// `[source.properties]`, else librdkafka's default, 3 s).
fn heartbeat_interval(source: &ClusterConfig) -> Duration {
    source.ms_property("heartbeat.interval.ms", 3_000)
}

/// How a run of the flow ended.
#[derive(Debug)]
enum Exit {
    /// Shutdown was requested.
    Stopped,
    /// Restart with fresh clients: (metric reason, why).
    Restart(&'static str, String),
}

/// Everything one flow's replicator needs.
#[derive(Clone)]
pub struct Replicator {
    /// The flow.
    pub flow: FlowConfig,
    /// Source cluster.
    pub source: ClusterConfig,
    /// Target cluster.
    pub target: ClusterConfig,
    /// Process settings.
    pub runtime: RuntimeConfig,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Health.
    pub health: Arc<Health>,
    /// The flow's mirror set, published by discovery.
    pub mirror: watch::Receiver<Arc<MirrorSet>>,
    /// The process-wide bandwidth limit (`[runtime] max_bytes_per_second`),
    /// shared by every flow.
    pub process_limit: Option<Arc<Mutex<throttle::TokenBucket>>>,
}

impl Replicator {
    /// Runs the flow on the calling thread until `shutdown` is cancelled,
    /// then drains, commits and returns. A run that must restart (fatal
    /// producer error, purged producer) or fails is started again with
    /// fresh clients after a backoff (1 s, doubling to 30 s).
    pub fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let flow = self.flow.name.clone();
        self.metrics.init_flow(&flow);
        let mut backoff = Duration::from_secs(1);
        // Test hook (see `kafka::fault`): in the first run only.
        let mut fatal_after = std::env::var("KMIRROR_TEST_FATAL_AFTER")
            .ok()
            .and_then(|v| v.parse::<u64>().ok());
        loop {
            let started = Instant::now();
            let (reason, why) = match self.clone().run_once(&shutdown, fatal_after.take()) {
                Ok(Exit::Stopped) => return Ok(()),
                Ok(Exit::Restart(reason, why)) => (reason, why),
                Err(e) => ("error", format!("{e:#}")),
            };
            self.metrics
                .flow_restarts
                .with_label_values(&[&flow, reason])
                .inc();
            // A run that lasted is not a crash loop: start the backoff over.
            if started.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_secs(1);
            }
            error!(flow = %flow, reason, error = %why, retry_in = ?backoff, "flow restarts with fresh clients");
            let until = Instant::now() + backoff;
            while Instant::now() < until {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    fn run_once(
        self,
        shutdown: &CancellationToken,
        fatal_after: Option<u64>,
    ) -> anyhow::Result<Exit> {
        let flow = self.flow.name.clone();
        let m = self.metrics.clone();
        let interval_ms = self.runtime.commit_interval.as_millis().max(1) as i64;
        let session = session_timeout(&self.source);
        let shared = Arc::new(Shared::new(
            &flow,
            &self.source.alias,
            self.flow.delivery,
            m.clone(),
            interval_ms,
            session / 2,
        ));
        let group = self.flow.group_id(&self.source.alias, &self.target.alias);
        let client_id = format!("kmirror-{}-{}", flow, std::process::id());

        let mut pcfg = kafka::client_config(&self.target, Role::Producer, &client_id);
        pcfg.set("statistics.interval.ms", "5000");
        // Statistics hold what kmirror reads and no more: no per-topic
        // histograms (22 KB per topic), offsets only per partition (see
        // vendor/README.md).
        pcfg.set("statistics.topic.histograms", "false");
        pcfg.set("statistics.topics.brief", "true");
        kafka::apply_producer_owned(
            &mut pcfg,
            self.flow.compression.as_librdkafka(),
            &self.runtime,
        );
        if self.flow.delivery == Delivery::ExactlyOnce {
            // Records queued before a freeze that outlasted the session
            // must expire rather than land after the partitions moved (see
            // `watchdog`); a smaller value of the user's is kept.
            let bound = watchdog::eos_message_timeout(session, heartbeat_interval(&self.source));
            let user = ["message.timeout.ms", "delivery.timeout.ms"]
                .iter()
                .filter_map(|k| pcfg.get(k).and_then(|v| v.trim().parse::<u64>().ok()))
                .min();
            let ms = user.map_or(bound.as_millis() as u64, |u| {
                u.min(bound.as_millis() as u64)
            });
            pcfg.remove("delivery.timeout.ms");
            pcfg.set("message.timeout.ms", ms.to_string());
            // A record that times out stops the producer (a fatal error)
            // instead of letting librdkafka bump its epoch and send what
            // was queued behind it, which would leave a gap: a property of
            // kmirror's librdkafka (see vendor/README.md). The flow then
            // restarts with a fresh producer and resumes from the target.
            pcfg.set("enable.gapless.timeouts", "true");
        }
        // The points producer: same target settings, no statistics (the
        // flow's producer metrics are the data producer's), and a point
        // that times out is only a failed point (commits wait for the
        // next), so it need not stop the producer. Points wait up to
        // POINTS_LINGER to go in batches: a commit or checkpoint waits that
        // much more, and the target gets a few requests per second for
        // them instead of one per `linger.ms`.
        let mut points_cfg = pcfg.clone();
        points_cfg.set("statistics.interval.ms", "0");
        points_cfg.set("enable.gapless.timeouts", "false");
        points_cfg.set("linger.ms", POINTS_LINGER.as_millis().to_string());
        let producer = kafka::Polled::create_with_purge(
            &pcfg,
            DeliveryCtx {
                shared: shared.clone(),
                cache: Mutex::new(None),
            },
            shared.purge_now.clone(),
        )?;
        let points = kafka::Polled::create(
            &points_cfg,
            DeliveryCtx {
                shared: shared.clone(),
                cache: Mutex::new(None),
            },
        )?;
        let producers = Producers {
            data: producer,
            points,
        };

        let eos = if self.flow.delivery == Delivery::ExactlyOnce {
            let mut r = eos::Resolver::new(
                &self.source,
                &self.target,
                self.flow
                    .provenance_header
                    .then(|| self.target.alias.clone()),
            )?;
            // A target that does not answer now (an outage longer than the
            // producer's timeout restarts the flow) does not keep the flow
            // out of its group: its partitions are held until their
            // positions can be derived, which reads the points again.
            match r.load_syncs(&offset_syncs_topic(&self.source.alias)) {
                Ok(loaded) => {
                    if let Ok(mut m) = shared.last_syncs.lock() {
                        *m = loaded;
                    }
                }
                Err(e) => {
                    warn!(flow = %flow, error = format!("{e:#}"), "exactly-once: the offset-sync points cannot be read yet; partitions are held until they can");
                }
            }
            Some(Mutex::new(r))
        } else {
            None
        };

        let mut ccfg = kafka::client_config(&self.source, Role::Consumer, &client_id);
        kafka::apply_consumer_owned(&mut ccfg, &group, &self.runtime);
        ccfg.set("statistics.interval.ms", "5000");
        ccfg.set("statistics.topic.histograms", "false");
        ccfg.set("statistics.topics.brief", "true");
        let consumer: BaseConsumer<FlowConsumerCtx> = kafka::create(
            &ccfg,
            FlowConsumerCtx {
                shared: shared.clone(),
                producer: Mutex::new(Some(producers.clone())),
                eos,
                drain_timeout: self.runtime.shutdown_timeout,
                newly_assigned: Mutex::new(Vec::new()),
                has_new: AtomicBool::new(false),
                backpressured: AtomicBool::new(false),
                callbacks: AtomicU64::new(0),
                start_from: self.flow.start_from,
                lag_series: Mutex::new(HashSet::new()),
            },
        )?;
        info!(flow = %flow, group = %group, delivery = %self.flow.delivery, "flow started");

        let mut mirror = self.mirror.clone();
        mirror.mark_changed();
        let mut l = FlowLoop {
            sh: shared,
            consumer,
            producers,
            mirror,
            health: self.health.clone(),
            shutdown: shutdown.clone(),
            runtime: self.runtime.clone(),
            provenance_skip: self
                .flow
                .provenance_header
                .then(|| self.target.alias.clone()),
            provenance_add: self
                .flow
                .provenance_header
                .then(|| self.source.alias.clone()),
            subscribed: BTreeSet::new(),
            holds: BTreeMap::new(),
            stopped: BTreeSet::new(),
            pending: VecDeque::new(),
            resume_at: 0,
            paused_all: false,
            backoff: Duration::from_millis(1),
            waited: Duration::ZERO,
            cache: None,
            last_house: Instant::now(),
            last_hold_check: Instant::now(),
            forwarded: 0,
            exported: BTreeSet::new(),
            gone: BTreeMap::new(),
            series_generation: u64::MAX,
            owned_generation: u64::MAX,
            series_grace: std::env::var("KMIRROR_TEST_SERIES_GRACE_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or(SERIES_GRACE, Duration::from_millis),
            limiter: throttle::Limiter::new(
                Some(self.flow.max_bytes_per_second),
                self.process_limit.clone(),
            ),
            fatal_after,
            freeze_after: session / 2,
        };
        let exit = l.run();
        l.finish(&exit);
        Ok(exit)
    }
}

/// Why a partition is held (paused by the flow, not by an error).
struct Hold {
    /// The target topic does not have the partition yet.
    target_missing: bool,
    /// Exactly-once: the resume position is still to be derived (the last
    /// error, "" before the first try).
    unresolved: Option<String>,
    next_try: Instant,
    backoff: Duration,
}

impl Hold {
    fn new(target_missing: bool, unresolved: Option<String>) -> Self {
        // A partition never tried (its target partition was missing) is
        // tried at once; one that failed, after a second.
        let first = if unresolved.as_deref().is_some_and(|e| !e.is_empty()) && !target_missing {
            Duration::from_secs(1)
        } else {
            Duration::ZERO
        };
        Self {
            target_missing,
            unresolved,
            next_try: Instant::now() + first,
            backoff: Duration::from_secs(2),
        }
    }
}

/// What [`forward`] did with a record.
enum Forwarded {
    /// Sent, skipped, or passed over (held, blocked, unassigned).
    Done,
    /// The producer queue is full: the record was not sent.
    Full(Arc<Slot>),
}

/// How long the points producer lets offset-sync points gather.
const POINTS_LINGER: Duration = Duration::from_millis(200);

/// A flow's two target producers. Records go through `data`; offset-sync
/// points through `points`, on their own connection, so that a point never
/// waits behind the data backlog: librdkafka serves a producer's partitions
/// in turn, one request each, so with 10,000 partitions holding records
/// the offset-sync partition's next request waited for all of them (and
/// commits and checkpoints with it). A point is queued only after the
/// records it describes were acknowledged, so nothing orders the two.
#[derive(Clone)]
pub(crate) struct Producers {
    pub(crate) data: kafka::Polled<DeliveryCtx>,
    pub(crate) points: kafka::Polled<DeliveryCtx>,
}

impl Producers {
    /// Removes what is queued and in flight in both (see [`purge`]).
    fn purge_all(&self) {
        self.data.purge(PurgeConfig::default().queue().inflight());
        self.points.purge(PurgeConfig::default().queue().inflight());
    }

    /// The fatal error of either producer.
    fn fatal_error(&self) -> Option<String> {
        kafka::fault::fatal_error(&*self.data).or_else(|| kafka::fault::fatal_error(&*self.points))
    }
}

/// One run of a flow: the consume loop and its state.
struct FlowLoop {
    sh: Arc<Shared>,
    consumer: BaseConsumer<FlowConsumerCtx>,
    /// The data producer and the points producer.
    producers: Producers,
    mirror: watch::Receiver<Arc<MirrorSet>>,
    health: Arc<Health>,
    shutdown: CancellationToken,
    runtime: RuntimeConfig,
    provenance_skip: Option<String>,
    provenance_add: Option<String>,
    subscribed: BTreeSet<String>,
    holds: BTreeMap<(String, i32), Hold>,
    /// Partitions stopped by a refused record.
    stopped: BTreeSet<(String, i32)>,
    /// Records taken from the consumer and not yet handed to the producer
    /// (its queue was full), in consume order; non-empty = backpressure.
    pending: VecDeque<(Arc<Slot>, OwnedMessage)>,
    /// Backpressure: records are handed over again once the producer
    /// queue holds at most this many.
    resume_at: i32,
    /// Every partition paused by a long backpressure wait.
    paused_all: bool,
    backoff: Duration,
    waited: Duration,
    cache: SlotCache,
    last_house: Instant,
    last_hold_check: Instant,
    forwarded: u64,
    /// Bandwidth limits (see [`throttle`]).
    limiter: throttle::Limiter,
    /// Partitions whose per-partition series this process exported.
    exported: BTreeSet<(String, i32)>,
    /// Exported partitions no longer owned, since when.
    gone: BTreeMap<(String, i32), Instant>,
    /// The slot generation `exported` was compared at.
    series_generation: u64,
    /// The slot generation holds and stops were last pruned at.
    owned_generation: u64,
    /// [`SERIES_GRACE`], or `KMIRROR_TEST_SERIES_GRACE_MS` (tests).
    series_grace: Duration,
    fatal_after: Option<u64>,
    /// A `poll` that returns this much later than asked (callbacks not
    /// counted) means the process was frozen: half the session timeout.
    freeze_after: Duration,
}

impl FlowLoop {
    fn flow(&self) -> &str {
        &self.sh.flow
    }

    /// Consumes and forwards until a stop or a restart is asked for.
    fn run(&mut self) -> Exit {
        // The stop request, the topic set and new assignments are looked
        // at after an empty poll and every 64 records (the token's check
        // takes a lock; not for every record).
        let mut since_check = 0u32;
        loop {
            if since_check == 0 {
                if let Some(exit) = self.exit_requested() {
                    return exit;
                }
                self.follow_mirror_set();
                self.take_assignments();
                if self.last_hold_check.elapsed() >= Duration::from_millis(500) {
                    self.last_hold_check = Instant::now();
                    self.retry_holds();
                }
                if self.last_house.elapsed() >= Duration::from_millis(100) {
                    self.housekeeping();
                }
            }
            since_check = (since_check + 1) % 64;
            if !self.pending.is_empty() {
                self.wait_for_room();
                since_check = 0;
                continue;
            }
            if let Some(wait) = self.limiter.wait() {
                self.throttled(wait);
                since_check = 0;
                continue;
            }
            let polled_at = mono_coarse();
            let callbacks = self.consumer.context().callback_time();
            let got = self.consumer.poll(Duration::from_millis(100));
            if self.frozen(polled_at, callbacks) {
                // Nothing fetched before the freeze is handed over: it
                // waits, and is dropped unsent when the flow restarts.
                if let Some(Ok(msg)) = got {
                    if let Some((_, slot)) = self.sh.slot_for(msg.topic(), msg.partition()) {
                        self.pending.push_back((slot, msg.detach()));
                    }
                }
                continue;
            }
            let full = match got {
                None => {
                    since_check = 0;
                    continue;
                }
                Some(Err(e)) => {
                    self.sh
                        .metrics
                        .errors
                        .with_label_values(&[&self.sh.flow, "consume"])
                        .inc();
                    if let Some(suppressed) = self.sh.throttle.allow("consume") {
                        warn!(flow = %self.sh.flow, error = %e, suppressed, "consume error");
                    }
                    continue;
                }
                Some(Ok(msg)) => match forward(
                    &self.sh,
                    &mut self.cache,
                    &self.producers.data,
                    &msg,
                    true,
                    self.provenance_skip.as_deref(),
                    self.provenance_add.as_deref(),
                ) {
                    Forwarded::Done => {
                        self.limiter.debit(delivery::record_size(&msg));
                        None
                    }
                    Forwarded::Full(slot) => Some((slot, msg.detach())),
                },
            };
            if let Some(p) = full {
                self.pending.push_back(p);
                self.enter_backpressure();
            } else {
                self.forwarded += 1;
                if self.fatal_after == Some(self.forwarded) {
                    warn!(flow = %self.sh.flow, "KMIRROR_TEST_FATAL_AFTER: raising a fatal producer error (test hook)");
                    kafka::fault::raise_fatal(&*self.producers.data);
                }
            }
        }
    }

    /// True when a `poll` started at `at` came back far later than its
    /// 100 ms (rebalance callbacks, whose time the context counts, aside):
    /// the process was frozen (SIGSTOP, a stalled VM) or starved, maybe
    /// past its session timeout, and its partitions may belong to another
    /// member already. The producer is then halted (nothing more is handed
    /// to it) and the flow restarts. (What librdkafka had queued before the
    /// freeze can still go out when it wakes, before the group reports the
    /// partitions lost and the flow purges: see the README.)
    fn frozen(&self, at: Duration, callbacks_before: Duration) -> bool {
        let took = mono_coarse().saturating_sub(at);
        let callbacks = self
            .consumer
            .context()
            .callback_time()
            .saturating_sub(callbacks_before);
        let gap = took.saturating_sub(callbacks);
        if gap < self.freeze_after {
            return false;
        }
        if self.sh.restart_requested().is_none() {
            error!(flow = %self.sh.flow, stalled = ?gap, "the consume loop stalled for longer than half the session timeout (process frozen or starved): nothing more is sent, and the flow restarts with fresh clients so that partitions that moved meanwhile are not written");
        }
        self.sh
            .request_restart("frozen", format!("the consume loop stalled for {gap:?}"));
        true
    }

    fn exit_requested(&self) -> Option<Exit> {
        if self.shutdown.is_cancelled() {
            return Some(Exit::Stopped);
        }
        self.sh
            .restart_requested()
            .map(|(reason, why)| Exit::Restart(reason, why))
    }

    /// Subscribes to the mirror set's topics; ends holds whose target
    /// partition exists now.
    fn follow_mirror_set(&mut self) {
        if !self.mirror.has_changed().unwrap_or(false) {
            return;
        }
        let set = self.mirror.borrow_and_update().clone();
        if let Ok(mut cur) = self.sh.mirror.lock() {
            *cur = set.clone();
        }
        let want: BTreeSet<String> = set.keys().cloned().collect();
        if want != self.subscribed {
            let topics: Vec<&str> = want.iter().map(String::as_str).collect();
            if topics.is_empty() {
                self.consumer.unsubscribe();
            } else if let Err(e) = self.consumer.subscribe(&topics) {
                error!(flow = %self.flow(), error = %e, "cannot subscribe");
            }
            let added: Vec<String> = want
                .difference(&self.subscribed)
                .map(|t| format!("{t} -> {}", set[t].target))
                .collect();
            if added.len() <= 20 {
                for a in &added {
                    info!(flow = %self.flow(), topic = %a, "mirroring topic");
                }
            } else {
                info!(flow = %self.flow(), topics = added.len(), which = %crate::kafka::summary(&added, 5), "mirroring topics");
            }
            for t in self.subscribed.difference(&want) {
                info!(flow = %self.flow(), topic = %t, "topic no longer selected; stopped mirroring it (records already mirrored stay)");
                // Its per-topic series go (per-partition ones go when the
                // partitions are released, see `housekeeping`).
                let m = &self.sh.metrics;
                if !m.topic_label(t).is_empty() {
                    let _ = m.replication_latency.remove_label_values(&[self.flow(), t]);
                    let _ = m.record_age.remove_label_values(&[self.flow(), t]);
                    if !m.per_partition() {
                        for name in [&m.records, &m.bytes] {
                            let _ = name.remove_label_values(&[self.flow(), t, ""]);
                        }
                        let _ = m.lag.remove_label_values(&[self.flow(), t, ""]);
                        let _ = m.lag_seconds.remove_label_values(&[self.flow(), t, ""]);
                    }
                }
            }
            self.subscribed = want;
        }
        let mut ready = Vec::new();
        let mut now_there = Vec::new();
        for ((t, p), h) in self.holds.iter_mut() {
            if h.target_missing && set.get(t).is_some_and(|m| *p < m.target_partitions) {
                h.target_missing = false;
                h.next_try = Instant::now();
                debug!(flow = %self.sh.flow, topic = %t, partition = p, "target partition exists now");
                now_there.push(format!("{t}/{p}"));
                if h.unresolved.is_none() {
                    ready.push((t.clone(), *p));
                }
            }
        }
        if !now_there.is_empty() {
            info!(flow = %self.sh.flow, partitions = now_there.len(), which = %crate::kafka::summary(&now_there, 5), "held partitions whose target partition exists now");
        }
        let ready: Vec<(String, i32, Option<i64>)> =
            ready.into_iter().map(|(t, p)| (t, p, None)).collect();
        self.release_many(ready);
    }

    /// Partitions assigned inside the last polls: their holds.
    fn take_assignments(&mut self) {
        let ctx = self.consumer.context();
        if !(ctx.has_new.load(Ordering::Relaxed) && ctx.has_new.swap(false, Ordering::AcqRel)) {
            return;
        }
        let newly: Vec<Assigned> = ctx
            .newly_assigned
            .lock()
            .map(|mut n| std::mem::take(&mut *n))
            .unwrap_or_default();
        let mut missing = Vec::new();
        for mut a in newly {
            let key = (a.topic.clone(), a.partition);
            self.stopped.remove(&key);
            if !(a.target_missing || a.unresolved.is_some()) {
                self.holds.remove(&key);
                continue;
            }
            let tp = self
                .sh
                .mirror_set()
                .get(&a.topic)
                .map_or(0, |m| m.target_partitions);
            if a.target_missing && a.partition < tp {
                // The mirror set learnt of the target partition after the
                // assignment (and before this look).
                a.target_missing = false;
                if a.unresolved.is_none() {
                    self.holds.remove(&key);
                    self.release(&a.topic, a.partition, None);
                    continue;
                }
            }
            if a.target_missing {
                if tp > 0 {
                    self.sh
                        .metrics
                        .errors
                        .with_label_values(&[&self.sh.flow, "partition_mismatch"])
                        .inc();
                }
                debug!(flow = %self.sh.flow, topic = %a.topic, partition = a.partition, target_partitions = tp, "partition held: the target topic does not have it yet");
                missing.push(format!("{}/{}", a.topic, a.partition));
            }
            self.holds
                .insert(key, Hold::new(a.target_missing, a.unresolved));
        }
        // One line for many (5,000 new topics are 10,000 partitions).
        if !missing.is_empty() {
            warn!(flow = %self.sh.flow, partitions = missing.len(), which = %crate::kafka::summary(&missing, 5), "partitions held: their target topics do not have them yet (config sync creates them; they are released as soon as discovery sees them)");
        }
    }

    /// Exactly-once: tries again to derive the resume position of held
    /// partitions (1 s, doubling to 30 s); a derived one is resumed there.
    fn retry_holds(&mut self) {
        let now = Instant::now();
        let due: Vec<(String, i32)> = self
            .holds
            .iter()
            .filter(|(_, h)| !h.target_missing && h.unresolved.is_some() && h.next_try <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let started = Instant::now();
        for (t, p) in due {
            // A pass ends after a few seconds; the rest wait for the next
            // (the loop polls its consumer in between).
            if started.elapsed() > Duration::from_secs(5) {
                break;
            }
            let Some((_, slot)) = self.sh.slot_for(&t, p) else {
                self.holds.remove(&(t, p));
                continue;
            };
            let target = self
                .sh
                .mirror_set()
                .get(&t)
                .map(|m| m.target.clone())
                .unwrap_or_else(|| slot.target.clone());
            match self.consumer.context().resolve(&t, &target, p) {
                Ok(pos) => {
                    info!(flow = %self.sh.flow, topic = %t, partition = p, "exactly-once: resume position derived; the partition is no longer held");
                    if let Some(h) = self.holds.get_mut(&(t.clone(), p)) {
                        h.unresolved = None;
                    }
                    self.release(&t, p, pos);
                }
                Err(e) => {
                    // The others would most likely fail the same way: one
                    // failure ends the pass, so that a pass never keeps
                    // the consume loop (and its group membership) waiting
                    // for long.
                    let backoff = self
                        .holds
                        .get(&(t.clone(), p))
                        .map_or(Duration::from_secs(2), |h| h.backoff);
                    for h in self.holds.values_mut() {
                        h.next_try = h.next_try.max(Instant::now() + backoff);
                    }
                    self.sh
                        .metrics
                        .errors
                        .with_label_values(&[&self.sh.flow, "eos_resume"])
                        .inc();
                    if let Some(h) = self.holds.get_mut(&(t.clone(), p)) {
                        if h.unresolved.as_deref() != Some(e.as_str()) {
                            error!(flow = %self.sh.flow, topic = %t, partition = p, error = %e, "exactly-once: still cannot derive the resume position; the partition stays held");
                        }
                        h.unresolved = Some(e);
                        h.next_try = Instant::now() + h.backoff;
                        h.backoff = (h.backoff * 2).min(Duration::from_secs(30));
                    }
                    break;
                }
            }
        }
    }

    /// Ends a hold: seeks to `to` (or back to the first record passed over
    /// while held) and resumes.
    fn release(&mut self, topic: &str, partition: i32, to: Option<i64>) {
        self.release_many(vec![(topic.to_string(), partition, to)]);
    }

    /// [`FlowLoop::release`] for many partitions: the seeks one by one (only
    /// where records were passed over), the resume in one call.
    fn release_many(&mut self, parts: Vec<(String, i32, Option<i64>)>) {
        let mut resume = TopicPartitionList::new();
        for (topic, partition, to) in parts {
            if self.release_one(&topic, partition, to) && !self.paused_all {
                resume.add_partition(&topic, partition);
            }
        }
        // (While every partition is paused for backpressure, leaving it
        // resumes these.)
        if resume.count() > 0 {
            let _ = self.consumer.resume(&resume);
        }
    }

    /// Ends one hold (seeking back if needed); true when it may resume.
    fn release_one(&mut self, topic: &str, partition: i32, to: Option<i64>) -> bool {
        if self
            .holds
            .get(&(topic.to_string(), partition))
            .is_some_and(|h| h.target_missing || h.unresolved.is_some())
        {
            return false;
        }
        self.holds.remove(&(topic.to_string(), partition));
        let Some((_, slot)) = self.sh.slot_for(topic, partition) else {
            return false;
        };
        let passed = slot.passed_from.load(Ordering::Acquire);
        let seek = to.or((passed >= 0).then_some(passed));
        if let Some(o) = seek {
            if let Err(e) =
                self.consumer
                    .seek(topic, partition, Offset::Offset(o), Duration::from_secs(10))
            {
                // Without the seek the partition would skip records: keep
                // it held and try again.
                error!(flow = %self.sh.flow, topic = %topic, partition, offset = o, error = %e, "cannot seek a held partition; it stays held");
                self.holds.insert(
                    (topic.to_string(), partition),
                    Hold {
                        target_missing: false,
                        unresolved: Some(format!("seek failed: {e}")),
                        next_try: Instant::now() + Duration::from_secs(1),
                        backoff: Duration::from_secs(2),
                    },
                );
                return false;
            }
        }
        slot.passed_from.store(-1, Ordering::Release);
        slot.held.store(false, Ordering::Release);
        true
    }

    /// The producer queue is full. The loop waits until half of it has
    /// drained (so that it refills in bursts of full batches); a wait that
    /// lasts (a slow or down target) pauses every partition and polls the
    /// consumer meanwhile, so that the member stays in its group and
    /// rebalances are served.
    fn enter_backpressure(&mut self) {
        self.resume_at = self.producers.data.in_flight_count() / 2;
        self.backoff = Duration::from_millis(1);
        self.waited = Duration::ZERO;
        self.sh
            .metrics
            .partitions_paused
            .with_label_values(&[&self.sh.flow, "backpressure"])
            .set(1);
    }

    /// After [`PAUSE_AFTER`] of waiting: every partition paused, and the
    /// consumer polled from then on. (Pausing drops what the consumer
    /// fetched ahead, which it fetches again on resume: not worth it for
    /// the short waits of a busy pipe.)
    fn pause_all(&mut self) {
        self.paused_all = true;
        self.consumer
            .context()
            .backpressured
            .store(true, Ordering::Release);
        if let Ok(a) = self.consumer.assignment() {
            let _ = self.consumer.pause(&a);
        }
    }

    fn leave_backpressure(&mut self) {
        self.sh
            .metrics
            .partitions_paused
            .with_label_values(&[&self.sh.flow, "backpressure"])
            .set(0);
        if !std::mem::take(&mut self.paused_all) {
            return;
        }
        self.consumer
            .context()
            .backpressured
            .store(false, Ordering::Release);
        let mut tpl = TopicPartitionList::new();
        for (_, s) in self.sh.assigned() {
            let key = (s.topic.clone(), s.partition);
            if !self.holds.contains_key(&key) && !self.stopped.contains(&key) && !s.is_blocked() {
                tpl.add_partition(&s.topic, s.partition);
            }
        }
        if tpl.count() > 0 {
            let _ = self.consumer.resume(&tpl);
        }
    }

    /// Backpressure: hands the held-back records over once there is room;
    /// meanwhile polls the consumer (rebalances) and keeps house.
    fn wait_for_room(&mut self) {
        if self.producers.data.in_flight_count() <= self.resume_at {
            while let Some((slot, msg)) = self.pending.front() {
                if slot.revoked.load(Ordering::Acquire) || slot.is_blocked() {
                    // Never sent, so never committed: the next owner (or
                    // the restart) reads it again.
                    self.pending.pop_front();
                    continue;
                }
                match forward(
                    &self.sh,
                    &mut self.cache,
                    &self.producers.data,
                    msg,
                    false,
                    self.provenance_skip.as_deref(),
                    self.provenance_add.as_deref(),
                ) {
                    Forwarded::Done => {
                        self.limiter.debit(delivery::record_size(msg));
                        self.pending.pop_front();
                    }
                    Forwarded::Full(_) => {
                        self.resume_at = self.producers.data.in_flight_count() / 2;
                        break;
                    }
                }
            }
            if self.pending.is_empty() {
                self.leave_backpressure();
                return;
            }
        }
        if self.shutdown.is_cancelled() || self.sh.restart_requested().is_some() {
            self.abandon_pending();
            return;
        }
        if self.waited >= PAUSE_AFTER && !self.paused_all {
            self.pause_all();
        }
        // 1 ms steps while the pipe is merely busy; after 100 ms of waiting
        // (a slow or down target) the steps grow to 50 ms.
        let (at, callbacks) = (mono_coarse(), self.consumer.context().callback_time());
        if self.paused_all {
            if let Some(Ok(msg)) = self.consumer.poll(self.backoff) {
                // Fetched before the pause applied: queued behind the others.
                if let Some((_, slot)) = self.sh.slot_for(msg.topic(), msg.partition()) {
                    self.pending.push_back((slot, msg.detach()));
                }
            }
        } else {
            std::thread::sleep(self.backoff);
        }
        // (A freeze here halts the producer: the next try sends nothing.)
        let _ = self.frozen(at, callbacks);
        self.waited += self.backoff;
        if self.waited > Duration::from_millis(100) {
            self.backoff = (self.backoff * 2).min(Duration::from_millis(50));
        }
        self.take_assignments();
        if self.last_house.elapsed() >= Duration::from_millis(100) {
            self.housekeeping();
        }
    }

    /// Partitions this process no longer owns lose their per-partition
    /// series (records, bytes) once they have been away for
    /// [`SERIES_GRACE`]: long enough that a rebalance which gives them
    /// back (an eager rebalance revokes everything) does not reset them.
    fn release_series(&mut self, slots: &[Arc<Slot>]) {
        if !self.sh.metrics.per_partition() {
            return;
        }
        let now = Instant::now();
        // The assignment changed (the generation moves on every assign
        // and unassign): compare the exported partitions with the owned.
        let generation = self.sh.generation.load(Ordering::Acquire);
        if generation != self.series_generation {
            self.series_generation = generation;
            let owned: BTreeSet<(String, i32)> = slots
                .iter()
                .map(|s| (s.topic.clone(), s.partition))
                .collect();
            for k in &owned {
                self.gone.remove(k);
            }
            for k in self.exported.difference(&owned) {
                self.gone.entry(k.clone()).or_insert(now);
            }
            self.exported.extend(owned);
        }
        if self.gone.is_empty() {
            return;
        }
        let expired: Vec<(String, i32)> = self
            .gone
            .iter()
            .filter(|(_, at)| now.duration_since(**at) >= self.series_grace)
            .map(|(k, _)| k.clone())
            .collect();
        for (t, p) in expired {
            let part = p.to_string();
            let labels = [self.sh.flow.as_str(), t.as_str(), part.as_str()];
            let m = &self.sh.metrics;
            let _ = m.records.remove_label_values(&labels);
            let _ = m.bytes.remove_label_values(&labels);
            debug!(flow = %self.sh.flow, topic = %t, partition = p, "series of a partition this process no longer owns released");
            self.gone.remove(&(t.clone(), p));
            self.exported.remove(&(t, p));
        }
    }

    /// Bandwidth limit: waits (at most 50 ms at a time, so that stops,
    /// assignments and housekeeping are looked at) before the next record
    /// is taken from the consumer.
    fn throttled(&mut self, wait: Duration) {
        let step = wait.min(Duration::from_millis(50));
        std::thread::sleep(step);
        self.sh
            .metrics
            .throttled
            .with_label_values(&[&self.sh.flow])
            .inc_by(step.as_secs_f64());
    }

    /// Stopping with records held back: none of them is sent, and the
    /// ledger of each partition is blocked at the first, so that no commit
    /// or point passes it.
    fn abandon_pending(&mut self) {
        for (slot, msg) in self.pending.drain(..) {
            slot.ledger().unsent(msg.offset());
            slot.set_blocked();
        }
    }

    /// Every 100 ms: stores commit positions, reports stopped partitions,
    /// writes points, frees drained slots, updates metrics and health.
    fn housekeeping(&mut self) {
        self.last_house = Instant::now();
        let sh = self.sh.clone();
        if let Some(c) = &self.cache {
            c.flush();
        }
        if let Some(c) = self
            .producers
            .data
            .context()
            .cache
            .lock()
            .ok()
            .as_deref()
            .and_then(Option::as_ref)
        {
            c.flush();
        }
        sh.queue.set(self.producers.data.in_flight_count() as i64);
        if let Some(why) = self.producers.fatal_error() {
            if sh.restart_requested().is_none() {
                error!(flow = %sh.flow, error = %why, "target producer: fatal error; the flow restarts with a new producer and resumes from what the target acknowledged");
            }
            sh.request_restart("fatal", format!("fatal producer error: {why}"));
        }
        let in_use = sh.slots.write().map(|mut t| {
            t.reap();
            t.in_use()
        });
        let slots: Vec<Arc<Slot>> = sh.assigned().into_iter().map(|(_, s)| s).collect();
        let mut store = TopicPartitionList::new();
        let mut stored = Vec::new();
        for slot in &slots {
            if let Some(pos) = slot.commit_position() {
                if pos > slot.stored.load(Ordering::Relaxed)
                    && store
                        .add_partition_offset(&slot.topic, slot.partition, Offset::Offset(pos))
                        .is_ok()
                {
                    stored.push((slot.clone(), pos));
                }
            }
        }
        if store.count() > 0 {
            match self.consumer.store_offsets(&store) {
                Ok(()) => {
                    for (slot, pos) in stored {
                        slot.stored.store(pos, Ordering::Relaxed);
                    }
                }
                Err(e) => debug!(flow = %sh.flow, error = %e, "cannot store offsets"),
            }
        }
        for slot in &slots {
            self.report_block(slot);
        }
        // Partitions that moved away are no longer this process's concern
        // (looked at when the assignment changed).
        let generation = sh.generation.load(Ordering::Acquire);
        if (!self.stopped.is_empty() || !self.holds.is_empty())
            && generation != self.owned_generation
        {
            self.owned_generation = generation;
            let owned: BTreeSet<(String, i32)> = slots
                .iter()
                .map(|s| (s.topic.clone(), s.partition))
                .collect();
            self.stopped.retain(|k| owned.contains(k));
            self.holds.retain(|k, _| owned.contains(k));
        }
        self.release_series(&slots);
        sh.idle_points(&slots, false);
        produce_syncs(
            &sh,
            &self.producers.points,
            Instant::now() + Duration::from_millis(50),
        );
        let unresolved = self
            .holds
            .values()
            .filter(|h| h.unresolved.is_some())
            .count();
        let held = self.holds.len() - unresolved;
        let m = &sh.metrics;
        m.partitions_paused
            .with_label_values(&[&sh.flow, "held"])
            .set(held as i64);
        m.partitions_paused
            .with_label_values(&[&sh.flow, "unresolved"])
            .set(unresolved as i64);
        m.partitions_assigned
            .with_label_values(&[&sh.flow])
            .set(slots.len() as i64);
        self.health
            .set_flow(&sh.flow, !slots.is_empty(), self.stopped.len());
        self.health.set_unresolved(&sh.flow, unresolved);
        if let Ok(n) = in_use {
            if n > slots.len() + 1000 {
                debug!(flow = %sh.flow, slots = n, assigned = slots.len(), "slots draining");
            }
        }
    }

    /// A blocked partition, once nothing of it is in flight: paused, and a
    /// refusal is reported (ERROR, metric, /readyz).
    fn report_block(&mut self, slot: &Arc<Slot>) {
        if !slot.is_blocked() {
            return;
        }
        let b = {
            let mut l = slot.ledger();
            let inflight = slot.inflight_with(&l);
            match l.block_mut() {
                Some(b) if !b.reported && inflight == 0 => {
                    b.reported = true;
                    b.clone()
                }
                _ => return,
            }
        };
        let sh = &self.sh;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&slot.topic, slot.partition);
        let _ = self.consumer.pause(&tpl);
        match &b.cause {
            // Purged or fatal: the flow restarts (and resumes from what was
            // written); never sent: the flow is stopping.
            Cause::NotWritten(_) | Cause::Unsent => {}
            Cause::OutOfOrder { previous } => {
                self.stopped.insert((slot.topic.clone(), slot.partition));
                sh.metrics
                    .errors
                    .with_label_values(&[&sh.flow, "produce"])
                    .inc();
                error!(flow = %sh.flow, topic = %slot.topic, partition = slot.partition, offset = b.at, previous, "delivery reports arrived out of order: partition stopped, nothing from offset {} on is committed; restart kmirror to resume", b.at);
            }
            Cause::Refused { error, .. } => {
                self.stopped.insert((slot.topic.clone(), slot.partition));
                sh.metrics
                    .errors
                    .with_label_values(&[&sh.flow, "produce"])
                    .inc();
                // The broker refuses a whole batch for one oversized record:
                // name the largest refused record as the one really refused.
                let too_large = b
                    .refused
                    .iter()
                    .filter(|(_, _, c)| *c == Some(RDKafkaErrorCode::MessageSizeTooLarge))
                    .max_by_key(|(_, size, _)| *size);
                let (offset, size) = match too_large {
                    Some((o, s, _)) => (*o, *s),
                    None => b
                        .refused
                        .iter()
                        .min_by_key(|(o, _, _)| *o)
                        .map(|(o, s, _)| (*o, *s))
                        .unwrap_or((b.at, 0)),
                };
                let again = if b.acked_after > 0 {
                    format!(
                        "; {} record(s) of later batches were written and will be written again when the partition resumes{}",
                        b.acked_after,
                        if sh.delivery == Delivery::ExactlyOnce { " (exactly-once cannot hold for them)" } else { "" }
                    )
                } else {
                    String::new()
                };
                error!(
                    flow = %sh.flow, topic = %slot.topic, partition = slot.partition, target = %slot.target,
                    offset, record_bytes = size, refused_in_batch = b.refused.len(), resume_offset = b.at,
                    acked_after = b.acked_after, reason = %error,
                    "the target refused a record: partition stopped, nothing from offset {} on is committed (the broker refuses the whole batch; `offset` names the largest record of it){again}; fix the cause (e.g. raise the target topic's max.message.bytes) and restart kmirror to resume",
                    b.at
                );
            }
        }
        sh.metrics
            .partitions_paused
            .with_label_values(&[&sh.flow, "stopped"])
            .set(self.stopped.len() as i64);
    }

    /// After the loop: hand nothing more over, drain what was sent (purge
    /// what the target does not take in time), write the last points,
    /// commit, and leave the group.
    fn finish(mut self, exit: &Exit) {
        let flow = self.sh.flow.clone();
        let sh = self.sh.clone();
        self.abandon_pending();
        // A restart means the target is failing (fatal producer, purge):
        // do not wait long for it.
        let timeout = match exit {
            // Leaves time, within the process's deadline, for the purge,
            // the commit and leaving the group.
            Exit::Stopped => self.runtime.shutdown_timeout.mul_f64(0.7),
            Exit::Restart(..) => Duration::from_secs(5),
        };
        info!(flow = %flow, "stopping: draining the producer and committing");
        let started = Instant::now();
        let slots: Vec<Arc<Slot>> = sh.assigned().into_iter().map(|(_, s)| s).collect();
        let frozen =
            matches!(exit, Exit::Restart("frozen", _)) && sh.delivery == Delivery::ExactlyOnce;
        // The drain can outlast `max.poll.interval.ms` (a target that is
        // down: the drain's timeout, then the purge's wait): the consumer
        // is polled meanwhile so that the member is not put out of its
        // group while it still holds records. A record such a poll returns
        // is dropped: not forwarded, and not committed (the positions come
        // from the ledgers), so it is read again.
        let consumer = &self.consumer;
        let mut polled = Instant::now();
        let mut keep_polling = || {
            if polled.elapsed() >= Duration::from_millis(500) {
                let _ = consumer.poll(Duration::ZERO);
                polled = Instant::now();
            }
        };
        if frozen {
            // The partitions may belong to another member already: nothing
            // queued may land now (see `watchdog`), and nothing is drained.
            purge(&sh, &self.producers, &slots, &mut keep_polling);
        } else if !drain_or_purge(
            &sh,
            &self.producers,
            &slots,
            timeout,
            Duration::from_secs(5),
            true,
            &mut keep_polling,
        ) {
            warn!(flow = %flow, "the target did not acknowledge everything before the deadline; the rest was purged and is not committed (it will be mirrored again)");
        }
        self.housekeeping();
        // The commit may wait for a rebalance to end: within the process's
        // deadline on a stop, a few seconds on a restart.
        let commit_by = match exit {
            Exit::Stopped => self.runtime.shutdown_timeout.mul_f64(0.85),
            Exit::Restart(..) => Duration::from_secs(8),
        };
        self.final_commit(started + commit_by);
        // Close: the revoke callback drains and commits again (quickly),
        // then the consumer leaves the group so that its partitions move at
        // once instead of after the session timeout.
        match self.consumer.close_queue() {
            Ok(()) => {
                let deadline = Instant::now() + self.runtime.shutdown_timeout;
                while !self.consumer.closed() && Instant::now() < deadline {
                    let _ = self.consumer.poll(Duration::from_millis(50));
                }
            }
            Err(e) => warn!(flow = %flow, error = %e, "cannot close the consumer cleanly"),
        }
        if let Ok(mut p) = self.consumer.context().producer.lock() {
            p.take();
        }
        self.health.set_flow(&flow, false, 0);
        self.health.set_unresolved(&flow, 0);
        info!(flow = %flow, "flow stopped");
    }

    /// Commits the stored positions before the consumer leaves the group.
    ///
    /// The group refuses a commit while it rebalances: the generation moved
    /// on (IllegalGeneration), or the group waits for its members' SyncGroup
    /// (RebalanceInProgress). A stop that lands in a rebalance (a member
    /// joining or leaving a moment earlier) would then leave the positions
    /// uncommitted, and the next owner would mirror again everything since
    /// the last periodic commit. So the consumer is polled, to take its part
    /// in the rebalance, and the commit is tried again with the new
    /// generation until `deadline`. The records those polls return are not
    /// forwarded and move nothing: the stored positions come from the
    /// ledgers alone, and librdkafka keeps them only for partitions still
    /// assigned, so a partition that moved meanwhile is not committed here.
    fn final_commit(&mut self, deadline: Instant) {
        let flow = self.sh.flow.clone();
        let mut retries = 0u32;
        loop {
            let err = match self.consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => {
                    if retries > 0 {
                        info!(flow = %flow, retries, "final commit made after the group's rebalance");
                    }
                    return;
                }
                Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {
                    if retries > 0 {
                        // Committed by the revoke callback meanwhile, or
                        // the partitions moved (a loss is logged by the
                        // callback itself).
                        debug!(flow = %flow, retries, "final commit: nothing left to commit after the group's rebalance");
                    }
                    return;
                }
                Err(e) => e,
            };
            let rebalancing = matches!(
                err,
                KafkaError::ConsumerCommit(
                    RDKafkaErrorCode::RebalanceInProgress | RDKafkaErrorCode::IllegalGeneration
                )
            );
            if !rebalancing || Instant::now() >= deadline {
                warn!(flow = %flow, error = %err, "final commit failed; the next owner of these partitions resumes from the last commit that succeeded (records after it are mirrored again)");
                return;
            }
            debug!(flow = %flow, error = %err, "final commit refused while the group rebalances; taking part in the rebalance and committing again");
            retries += 1;
            let until = (Instant::now() + Duration::from_millis(200)).min(deadline);
            while Instant::now() < until {
                let _ = self.consumer.poll(Duration::from_millis(50));
            }
        }
    }
}

/// Waits until `slots` have nothing in flight, records nor points (the
/// points are handed over meanwhile); false at the deadline. Reports are
/// served by the producers' own threads only (see [`delivery`]). `tick`
/// runs on every turn (the flow's own stop uses it to keep polling its
/// consumer, see [`FlowLoop::finish`]).
fn drain(
    sh: &Shared,
    producers: &Producers,
    slots: &[Arc<Slot>],
    deadline: Instant,
    every_point: bool,
    tick: &mut dyn FnMut(),
) -> bool {
    loop {
        tick();
        produce_syncs(sh, &producers.points, deadline);
        if slots.iter().all(|s| s.quiet())
            && (!every_point
                || sh
                    .pending_syncs
                    .lock()
                    .map(|p| p.is_empty())
                    .unwrap_or(true))
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A source record as the loop holds it: borrowed from the consumer, or
/// owned while it waits for room in the producer queue.
trait Forwardable: Message {
    /// A copy of its headers for the target record.
    fn owned_headers(&self) -> Option<OwnedHeaders>;
}

impl Forwardable for rdkafka::message::BorrowedMessage<'_> {
    fn owned_headers(&self) -> Option<OwnedHeaders> {
        self.headers().map(|h| h.detach())
    }
}

impl Forwardable for OwnedMessage {
    fn owned_headers(&self) -> Option<OwnedHeaders> {
        self.headers().cloned()
    }
}

/// Drains `slots` within `timeout`, then writes the point of each one's
/// last record and waits up to `points_wait` for it. When the target does
/// not acknowledge in time, the producer is purged (see [`purge`]). True
/// when everything was acknowledged.
fn drain_or_purge(
    sh: &Shared,
    producers: &Producers,
    slots: &[Arc<Slot>],
    timeout: Duration,
    points_wait: Duration,
    every_point: bool,
    tick: &mut dyn FnMut(),
) -> bool {
    let mut drained = drain(
        sh,
        producers,
        slots,
        Instant::now() + timeout,
        every_point,
        tick,
    );
    if drained {
        sh.idle_points(slots, true);
        drained = drain(
            sh,
            producers,
            slots,
            Instant::now() + points_wait,
            every_point,
            tick,
        );
    }
    if !drained {
        purge(sh, producers, slots, tick);
    }
    drained
}

/// Halts and purges the producer: nothing more is handed to it, and what it
/// queued can no longer land after the partitions move (a request already
/// on the wire can). Waits briefly for the purged records' reports, so that
/// `slots`' ledgers are blocked at the first of them.
fn purge(sh: &Shared, producers: &Producers, slots: &[Arc<Slot>], tick: &mut dyn FnMut()) {
    sh.halt();
    producers.purge_all();
    let _ = drain(
        sh,
        producers,
        slots,
        Instant::now() + Duration::from_secs(5),
        false,
        tick,
    );
}

/// Hands one source record to the producer, or says the queue is full (the
/// caller keeps the record and retries: nothing is dropped). `first` is
/// false for a retry.
fn forward<M: Forwardable>(
    sh: &Shared,
    cache: &mut SlotCache,
    producer: &kafka::Polled<DeliveryCtx>,
    msg: &M,
    first: bool,
    provenance_skip: Option<&str>,
    provenance_add: Option<&str>,
) -> Forwarded {
    let Some(cached) = sh.slot_cached(cache, msg.topic(), msg.partition()) else {
        debug!(flow = %sh.flow, topic = msg.topic(), partition = msg.partition(), "record of an unassigned partition ignored (not committed)");
        return Forwarded::Done;
    };
    let slot = &cached.slot;
    let offset = msg.offset();
    if slot.held.load(Ordering::Acquire) {
        // Fetched before the hold's pause applied: read again on release.
        if slot.passed_from.load(Ordering::Acquire) < 0 {
            slot.passed_from.store(offset, Ordering::Release);
        }
        return Forwarded::Done;
    }
    if slot.is_blocked() {
        return Forwarded::Done;
    }
    if sh.halted.load(Ordering::Relaxed) || !sh.may_hand_over() {
        // The producer was purged or failed, or the process was frozen:
        // nothing more is handed to it; the record waits (and is dropped
        // unsent) until the restart.
        return Forwarded::Full(slot.clone());
    }
    if offset < slot.next_offset.load(Ordering::Relaxed) {
        // Delivered again by the consumer (an offset reset moved its
        // position back): already handed over, and its report decides.
        debug!(flow = %sh.flow, topic = %slot.topic, partition = slot.partition, offset, "record delivered again by the consumer; already forwarded");
        return Forwarded::Done;
    }
    let ts = msg.timestamp().to_millis();
    if first {
        if let Some(ts) = ts {
            cached
                .hist
                .observe(((now_ms() - ts).max(0) as f64) / 1000.0);
        }
    }
    // (Headers are parsed only when provenance is on.)
    if let Some((skip, hs)) = provenance_skip.and_then(|s| Some((s, msg.headers()?))) {
        let from_target = hs
            .iter()
            .any(|h| h.key == PROVENANCE_HEADER && h.value == Some(skip.as_bytes()));
        if from_target {
            slot.ledger().skipped(offset + 1);
            slot.next_offset.store(offset + 1, Ordering::Relaxed);
            return Forwarded::Done;
        }
    }
    let mut headers: Option<OwnedHeaders> = msg.owned_headers();
    if let Some(src) = provenance_add {
        let hs = headers.take().unwrap_or_default();
        headers = Some(hs.insert(Header {
            key: PROVENANCE_HEADER,
            value: Some(src),
        }));
    }
    let opaque = (cached.idx << OFFSET_BITS) | (offset as usize & OFFSET_MASK);
    let mut rec: BaseRecord<'_, [u8], [u8], usize> =
        BaseRecord::with_opaque_to(&slot.target, opaque).partition(msg.partition());
    if let Some(k) = msg.key() {
        rec = rec.key(k);
    }
    if let Some(v) = msg.payload() {
        rec = rec.payload(v);
    }
    if let Some(ts) = ts {
        rec = rec.timestamp(ts);
    }
    if let Some(h) = headers {
        rec = rec.headers(h);
    }
    slot.will_send();
    match producer.send(rec) {
        Ok(()) => {
            sh.handed_over(producer);
            slot.next_offset.store(offset + 1, Ordering::Relaxed);
            Forwarded::Done
        }
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
            slot.not_sent();
            Forwarded::Full(slot.clone())
        }
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::UnknownPartition), _))
            if target_partition_may_exist(sh, producer, slot) =>
        {
            // Not the record's fault: kept back like a record that met a
            // full queue (the retry sends it).
            slot.not_sent();
            Forwarded::Full(slot.clone())
        }
        Err((e, _)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) => {
            // Not the record's fault: the producer is gone. Kept back like a
            // full queue; the loop sees the restart request and stops.
            slot.not_sent();
            sh.request_restart("fatal", format!("fatal producer error: {e}"));
            Forwarded::Full(slot.clone())
        }
        Err((e, _)) => {
            slot.not_sent();
            slot.ledger().refuse_unsent(
                offset,
                e.to_string(),
                e.rdkafka_error_code(),
                record_size(msg),
            );
            slot.set_blocked();
            Forwarded::Done
        }
    }
}

/// After the producer refused a record with a local UnknownPartition: asks
/// the target for the topic's metadata (which updates the producer's too)
/// and says whether the partition may exist soon. It does when the
/// producer's metadata was only older than discovery's (a held partition
/// released: librdkafka refreshes topic metadata every
/// `topic.metadata.refresh.interval.ms`), or when the topic is missing
/// (deleted; config sync recreates it with every partition). It does not
/// when the topic exists with fewer partitions (made again smaller by an
/// operator while the partition was mirrored): that record is refused, and
/// the partition stops, as for any record the target refuses.
fn target_partition_may_exist(
    sh: &Shared,
    producer: &kafka::Polled<DeliveryCtx>,
    slot: &Slot,
) -> bool {
    debug!(flow = %sh.flow, topic = %slot.target, partition = slot.partition, "target partition unknown to the producer; refreshing its metadata");
    match producer
        .client()
        .fetch_metadata(Some(&slot.target), Duration::from_secs(5))
    {
        Ok(md) => md
            .topics()
            .iter()
            .find(|t| t.name() == slot.target)
            .is_none_or(|t| t.error().is_some() || t.partitions().len() > slot.partition as usize),
        Err(e) => {
            debug!(flow = %sh.flow, topic = %slot.target, error = %e, "producer metadata refresh failed");
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `produce_syncs` with a producer queue that stays full (the target
    /// is unreachable) returns at its deadline and keeps the points it
    /// could not hand over, in order; it neither spins for ever nor drops
    /// them.
    #[test]
    fn produce_syncs_gives_up_at_its_deadline_and_keeps_the_points() {
        let sh = Arc::new(Shared::new(
            "f",
            "src",
            Delivery::AtLeastOnce,
            Arc::new(Metrics::new()),
            1000,
            Duration::from_secs(5),
        ));
        let mut cfg = rdkafka::ClientConfig::new();
        cfg.set("bootstrap.servers", "127.0.0.1:1")
            .set("queue.buffering.max.messages", "1")
            .set("log_level", "0");
        let producer = kafka::Polled::create(
            &cfg,
            DeliveryCtx {
                shared: sh.clone(),
                cache: Mutex::new(None),
            },
        )
        .unwrap();
        for up in 0..3 {
            sh.pending_syncs.lock().unwrap().push_back((
                NO_SLOT,
                OffsetSync {
                    topic: "t".into(),
                    partition: 0,
                    upstream_offset: up,
                    downstream_offset: up,
                },
            ));
        }
        let started = Instant::now();
        produce_syncs(&sh, &producer, Instant::now() + Duration::from_millis(200));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let left: Vec<i64> = sh
            .pending_syncs
            .lock()
            .unwrap()
            .iter()
            .map(|(_, s)| s.upstream_offset)
            .collect();
        assert_eq!(
            left,
            vec![1, 2],
            "the first is queued, the rest kept in order"
        );
        producer.purge(PurgeConfig::default().queue().inflight());
    }
}
