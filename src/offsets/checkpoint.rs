//! The checkpoint loop and the failover commands.
//!
//! Every `checkpoint_interval`, per flow: follow the offset-sync topic on
//! the target into an [`OffsetSyncStore`] (loaded completely before the
//! first checkpoint), list the source consumer groups the flow selects,
//! fetch their committed offsets for the mirrored topics, translate them,
//! and write one MM2 Checkpoint record per (group, target topic, partition)
//! to `<source>.checkpoints.internal` on the target, only when it changed.
//! With `sync_group_offsets`, the translated offsets are also committed to
//! the same group on the target while it has no active members there, and
//! never moved backwards.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::codec::{Checkpoint, OffsetSync};
use super::offset_syncs_topic;
use super::store::OffsetSyncStore;
use crate::config::{ClusterConfig, FlowConfig};
use crate::discovery::MirrorSet;
use crate::kafka::{self, reader, Follower, KContext, Role};
use crate::metrics::Metrics;
use crate::policy::NameFilter;

/// Name of the checkpoints topic on the target.
pub fn checkpoints_topic(source_alias: &str) -> String {
    format!("{source_alias}.checkpoints.internal")
}

/// Offset-sync points kept per partition in memory.
pub const MAX_POINTS_PER_PARTITION: usize = 10_000;

const TIMEOUT: Duration = Duration::from_secs(10);

/// A consumer bound to group `group` that never joins it: for reading and
/// committing that group's offsets.
pub fn group_client(c: &ClusterConfig, group: &str) -> Result<BaseConsumer<KContext>, String> {
    let mut cfg = kafka::client_config(c, Role::Admin, "kmirror-offsets");
    cfg.set("group.id", group);
    cfg.set("enable.auto.commit", "false");
    kafka::create(&cfg, KContext::default()).map_err(|e| e.to_string())
}

/// Loads every offset-sync point persisted on the target into a store.
/// MM2's rule for a group committed where nothing was mirrored before its
/// offset: the committed offset is at or before the source partition's
/// start (an empty partition, a commit at the source's start, or records
/// removed by retention), so nothing the group skipped can be in the
/// target: it resumes at the target partition's start. Never ahead: every
/// record of the target partition comes from the source partition. `None`
/// when the offset is after the source's start or a watermark is unknown.
fn before_everything(
    src: &BaseConsumer<KContext>,
    dst: &BaseConsumer<KContext>,
    topic: &str,
    target: &str,
    partition: i32,
    committed: i64,
) -> Option<i64> {
    let (slo, _) = src.fetch_watermarks(topic, partition, TIMEOUT).ok()?;
    if committed > slo {
        return None;
    }
    let (tlo, _) = dst.fetch_watermarks(target, partition, TIMEOUT).ok()?;
    Some(tlo)
}

fn feed(store: &mut OffsetSyncStore, recs: &[rdkafka::message::OwnedMessage]) {
    for m in recs {
        if let (Some(k), Some(v)) = (m.key(), m.payload()) {
            if let Ok(s) = OffsetSync::decode(k, v) {
                store.add(
                    &s.topic,
                    s.partition,
                    s.upstream_offset,
                    s.downstream_offset,
                );
            }
        }
    }
}

/// Whether a group has active members (by its state and member list).
pub fn group_active(c: &BaseConsumer<KContext>, group: &str) -> Result<bool, String> {
    let list = c
        .fetch_group_list(Some(group), TIMEOUT)
        .map_err(|e| format!("cannot describe group {group}: {e}"))?;
    Ok(list.groups().iter().any(|g| {
        g.name() == group
            && (!g.members().is_empty() || !matches!(g.state(), "" | "Empty" | "Dead" | "Unknown"))
    }))
}

/// Committed offsets of `group` for the given partitions.
pub fn committed(
    c: &BaseConsumer<KContext>,
    parts: &[(String, i32)],
) -> Result<BTreeMap<(String, i32), i64>, String> {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in parts {
        tpl.add_partition(t, *p);
    }
    let got = c
        .committed_offsets(tpl, TIMEOUT)
        .map_err(|e| e.to_string())?;
    Ok(got
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
            _ => None,
        })
        .collect())
}

/// Commits offsets for a group that has no active members.
pub fn commit(
    c: &BaseConsumer<KContext>,
    offsets: &BTreeMap<(String, i32), i64>,
) -> Result<(), String> {
    let mut tpl = TopicPartitionList::new();
    for ((t, p), o) in offsets {
        tpl.add_partition_offset(t, *p, Offset::Offset(*o))
            .map_err(|e| e.to_string())?;
    }
    c.commit(&tpl, CommitMode::Sync).map_err(|e| e.to_string())
}

/// One flow's checkpoint loop.
pub struct Checkpointer {
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
    /// Checkpoints and group offsets are written only while this process
    /// leads (asked before each write).
    pub leader: crate::leader::Leader,
}

struct State {
    store: OffsetSyncStore,
    syncs: Follower,
    written: HashMap<(String, String, i32), (i64, i64)>,
    warned: HashSet<String>,
    /// The flow's mirrored topics at the last run.
    mirrored: HashSet<String>,
}

impl Checkpointer {
    /// Runs until `shutdown`. Each run is blocking work on its own thread.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let groups = NameFilter::new(&self.flow.groups, &self.flow.groups_exclude)
            .map_err(|e| anyhow::anyhow!("flow {}: {e}", self.flow.name))?;
        let me = Arc::new(self);
        let state = State {
            store: OffsetSyncStore::new(MAX_POINTS_PER_PARTITION),
            syncs: Follower::tail(
                offset_syncs_topic(&me.source.alias),
                super::SYNC_READ_WINDOW,
            ),
            written: HashMap::new(),
            warned: HashSet::new(),
            mirrored: HashSet::new(),
        };
        let mut tick = tokio::time::interval(me.flow.checkpoint_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let flow_name = me.flow.name.clone();
        let clients = {
            let me = me.clone();
            tokio::task::spawn_blocking(move || -> Result<_, String> {
                let src = reader(&me.source, "kmirror-checkpoints").map_err(|e| e.to_string())?;
                let dst = reader(&me.target, "kmirror-checkpoints").map_err(|e| e.to_string())?;
                let mut pcfg =
                    kafka::client_config(&me.target, Role::Producer, "kmirror-checkpoints");
                pcfg.set("enable.idempotence", "true");
                pcfg.set("message.timeout.ms", "30000");
                let p = kafka::Polled::create(&pcfg, DefaultProducerContext)
                    .map_err(|e| e.to_string())?;
                Ok((src, dst, p))
            })
            .await?
            .map_err(|e| anyhow::anyhow!("checkpoints of flow {flow_name}: {e}"))?
        };
        let mut clients = Arc::new(clients);
        let groups = Arc::new(groups);
        let mut st = Some(state);
        // The error of the run that failed last, until a run succeeds: the
        // warning is logged once per failure, not every interval.
        let mut failing: Option<String> = None;
        // When this process last became the leader.
        let mut leading_since: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            if !me.leader.is_leader() {
                leading_since = None;
                continue;
            }
            // A new leader writes nothing for one interval: the previous
            // one may have written the same checkpoints just before it let
            // go, and two writers never share an interval.
            let since = *leading_since.get_or_insert_with(Instant::now);
            if since.elapsed() < me.flow.checkpoint_interval {
                continue;
            }
            let set = me.mirror.borrow().clone();
            let (me2, cl, gr) = (me.clone(), clients.clone(), groups.clone());
            let mut s = st.take().expect("state");
            let started = Instant::now();
            debug!(flow = %me.flow.name, "checkpoint tick");
            let (s, r) = tokio::task::spawn_blocking(move || {
                let r = me2.once(&cl.0, &cl.1, &cl.2, &gr, &set, &mut s);
                (s, r)
            })
            .await?;
            st = Some(s);
            me.metrics
                .checkpoint_latency
                .with_label_values(&[&me.flow.name])
                .observe(started.elapsed().as_secs_f64());
            match r {
                Err(e) => {
                    me.metrics
                        .errors
                        .with_label_values(&[&me.flow.name, "checkpoint"])
                        .inc();
                    if failing.is_none() {
                        warn!(flow = %me.flow.name, error = %e, "checkpoint run failed; retrying every interval with fresh readers (logged again when it recovers)");
                    }
                    failing = Some(e);
                    // A reader that saw its broker go away can stay stuck
                    // on AllBrokersDown after the broker is back: the next
                    // run reads with new ones.
                    let me2 = me.clone();
                    let fresh = tokio::task::spawn_blocking(move || -> Result<_, String> {
                        let src = reader(&me2.source, "kmirror-checkpoints")
                            .map_err(|e| e.to_string())?;
                        let dst = reader(&me2.target, "kmirror-checkpoints")
                            .map_err(|e| e.to_string())?;
                        Ok((src, dst))
                    })
                    .await?;
                    if let Ok((src, dst)) = fresh {
                        clients = Arc::new((src, dst, clients.2.clone()));
                    }
                }
                Ok(()) => {
                    me.metrics
                        .checkpoint_last_success
                        .with_label_values(&[&me.flow.name])
                        .set(crate::flow::now_ms() as f64 / 1000.0);
                    if let Some(e) = failing.take() {
                        info!(flow = %me.flow.name, last_error = %e, "checkpoint runs succeed again");
                    }
                }
            }
        }
    }

    /// Counts a failed step of one group's checkpoint run (in
    /// `kmirror_errors_total{stage="checkpoint"}`); true the first time
    /// it fails this way, so that it is logged once, not every interval.
    fn failed_once(&self, st: &mut State, what: String) -> bool {
        self.metrics
            .errors
            .with_label_values(&[&self.flow.name, "checkpoint"])
            .inc();
        st.warned.insert(what)
    }

    fn once(
        &self,
        src: &BaseConsumer<KContext>,
        dst: &BaseConsumer<KContext>,
        producer: &kafka::Polled<DefaultProducerContext>,
        groups: &NameFilter,
        set: &MirrorSet,
        st: &mut State,
    ) -> Result<(), String> {
        let store = &mut st.store;
        let read = st
            .syncs
            .poll_chunks(dst, 50_000, |recs| feed(store, &recs))?;
        debug!(flow = %self.flow.name, new_points = read, stored = st.store.len(), topics = set.len(), "checkpoint run");
        // Topics that left the mirror set (deleted, no longer selected):
        // their points and the checkpoints remembered as written go. Only
        // topics seen mirrored before: the first runs may come before
        // discovery's first pass (an empty set), and the points read then
        // are not read again.
        let gone: HashSet<String> = st
            .mirrored
            .iter()
            .filter(|t| !set.contains_key(*t))
            .cloned()
            .collect();
        if !gone.is_empty() {
            let dropped = st.store.retain_topics(|t| !gone.contains(t));
            let targets: HashSet<&str> = set.values().map(|m| m.target.as_str()).collect();
            st.written
                .retain(|(_, t, _), _| targets.contains(t.as_str()));
            debug!(flow = %self.flow.name, topics = dropped, "offset-sync points of topics no longer mirrored released");
        }
        st.mirrored = set.keys().cloned().collect();
        if set.is_empty() {
            return Ok(());
        }
        let own = format!("kmirror.{}.{}.", self.source.alias, self.target.alias);
        let list = src
            .fetch_group_list(None, TIMEOUT)
            .map_err(|e| format!("cannot list source groups: {e}"))?;
        debug!(
            flow = %self.flow.name,
            groups = ?list.groups().iter().map(|g| (g.name(), g.state())).collect::<Vec<_>>(),
            "source groups"
        );
        let cp_topic = checkpoints_topic(&self.source.alias);
        let mut queued = Vec::new();
        for g in list.groups() {
            let group = g.name();
            if group.starts_with(&own) || !groups.matches(group) {
                continue;
            }
            // One group's failure is counted and named; the others go on.
            // One request per group through this flow's own source client
            // (no consumer bound to each group, no client per tick), for
            // what the group committed (filtered by the mirror set below).
            let fetched =
                crate::kafka::group_offsets::list_group_offsets(src.client(), group, TIMEOUT);
            let offsets = match fetched {
                Ok(o) => o,
                Err(e) => {
                    if self.failed_once(st, format!("fetch/{group}/{e}")) {
                        warn!(flow = %self.flow.name, group, error = %e, "cannot read the committed offsets of this group on the source; retrying every interval");
                    }
                    continue;
                }
            };
            let mut translated: BTreeMap<(String, i32), i64> = BTreeMap::new();
            for ((topic, p), c) in &offsets {
                let Some(m) = set.get(topic).filter(|m| *p < m.partitions) else {
                    continue;
                };
                let down = st
                    .store
                    .translate(topic, *p, *c)
                    .or_else(|| before_everything(src, dst, topic, &m.target, *p, *c));
                match down {
                    Some(down) => {
                        translated.insert((m.target.clone(), *p), down);
                        let key = (group.to_string(), m.target.clone(), *p);
                        if st.written.get(&key) == Some(&(*c, down)) {
                            continue;
                        }
                        let cp = Checkpoint {
                            group: group.to_string(),
                            topic: m.target.clone(),
                            partition: *p,
                            upstream_offset: *c,
                            downstream_offset: down,
                            metadata: String::new(),
                        };
                        if !self.leader.is_leader() {
                            // The role moved: the new leader writes it.
                            continue;
                        }
                        let (k, v) = (cp.key(), cp.value());
                        let rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&cp_topic)
                            .partition(0)
                            .key(&k[..])
                            .payload(&v[..]);
                        producer
                            .send(rec)
                            .map_err(|(e, _)| format!("cannot queue a checkpoint: {e}"))?;
                        // Written (and counted) once acknowledged, after
                        // the flush.
                        queued.push((key, (*c, down)));
                        debug!(flow = %self.flow.name, group, topic = %topic, partition = p, upstream = c, downstream = down, "checkpoint");
                    }
                    None => {
                        self.metrics
                            .translation_misses
                            .with_label_values(&[&self.flow.name])
                            .inc();
                    }
                }
            }
            if self.flow.sync_group_offsets && !translated.is_empty() && self.leader.is_leader() {
                if let Err(e) = self.sync_group(group, &translated, st) {
                    if self.failed_once(st, format!("sync/{group}/{e}")) {
                        warn!(flow = %self.flow.name, group, error = %e, "group offset sync failed; retrying every interval");
                    }
                }
            }
        }
        producer
            .flush(TIMEOUT)
            .map_err(|e| format!("checkpoints not acknowledged: {e}"))?;
        // Acknowledged: counted, and not written again while unchanged. (A
        // failed flush leaves them out, so the next run writes them again.)
        for ((group, _, _), _) in &queued {
            self.metrics
                .checkpoints
                .with_label_values(&[&self.flow.name, group])
                .inc();
        }
        st.written.extend(queued);
        Ok(())
    }

    /// Writes translated offsets into the group on the target while it is
    /// idle there, never moving a partition backwards.
    fn sync_group(
        &self,
        group: &str,
        translated: &BTreeMap<(String, i32), i64>,
        st: &mut State,
    ) -> Result<(), String> {
        let tc = group_client(&self.target, group)?;
        let skipped = |why: &str| {
            self.metrics
                .group_offset_syncs
                .with_label_values(&[&self.flow.name, why])
                .inc();
        };
        if group_active(&tc, group)? {
            skipped("skipped_active");
            if st.warned.insert(format!("active/{group}")) {
                info!(flow = %self.flow.name, group, "group has active members on the target; its offsets are not synced while it is active");
            }
            return Ok(());
        }
        st.warned.remove(&format!("active/{group}"));
        let parts: Vec<(String, i32)> = translated.keys().cloned().collect();
        let current = committed(&tc, &parts)?;
        let forward: BTreeMap<(String, i32), i64> = translated
            .iter()
            .filter(|(k, o)| current.get(*k).is_none_or(|c| **o > *c))
            .map(|(k, o)| (k.clone(), *o))
            .collect();
        if forward.is_empty() {
            return Ok(());
        }
        match commit(&tc, &forward) {
            Ok(()) => {
                skipped("ok");
                Ok(())
            }
            Err(e) => {
                skipped("error");
                Err(format!(
                    "cannot commit offsets of group {group} on the target: {e}"
                ))
            }
        }
    }
}

/// The latest checkpoint per (target topic, partition) of `group`, read
/// from the checkpoints topic on the target.
pub fn latest_checkpoints(
    target: &ClusterConfig,
    source_alias: &str,
    group: &str,
) -> Result<BTreeMap<(String, i32), Checkpoint>, String> {
    let c = reader(target, "kmirror-offsets").map_err(|e| e.to_string())?;
    let mut f = Follower::new(checkpoints_topic(source_alias));
    let mut out = BTreeMap::new();
    for m in f.poll(&c)? {
        if let (Some(k), Some(v)) = (m.key(), m.payload()) {
            if let Ok(cp) = Checkpoint::decode(k, v) {
                if cp.group == group {
                    out.insert((cp.topic.clone(), cp.partition), cp);
                }
            }
        }
    }
    Ok(out)
}
