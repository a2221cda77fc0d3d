//! The source consumer's context: what happens when partitions move.
//!
//! - **Assign**: a fresh slot per partition; a partition whose target
//!   partition does not exist yet, or (exactly-once) whose resume position
//!   cannot be derived from the target right now, is *held*: paused inside
//!   the callback, before any of its records can be returned, and marked so
//!   that a record fetched anyway is passed over (the flow seeks back to it
//!   when the hold ends). Exactly-once never falls back to the group's
//!   commit.
//! - **Revoke**: the revoked partitions' records are drained (acknowledged
//!   or refused), their points written, their positions committed, and only
//!   then are they released. A drain that times out purges the producer
//!   (queued records can then never land after the partition moved) and
//!   asks the flow to restart with fresh clients.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use tracing::{debug, error, info, warn};

use super::slots::Slot;
use super::{drain_or_purge, eos, purge, Producers, Shared, NO_SLOT};
use crate::config::StartFrom;
use crate::kafka::{self, log_librdkafka};
use crate::offsets::codec::OffsetSync;

/// A partition the group gave this process, as the loop learns of it.
pub(crate) struct Assigned {
    pub topic: String,
    pub partition: i32,
    /// Held until the target topic has the partition.
    pub target_missing: bool,
    /// Held until the exactly-once resume position is derived (the error
    /// of the last try; empty when it was not tried yet).
    pub unresolved: Option<String>,
}

/// Consumer context of a flow.
pub(crate) struct FlowConsumerCtx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) producer: Mutex<Option<Producers>>,
    pub(crate) eos: Option<Mutex<eos::Resolver>>,
    pub(crate) drain_timeout: Duration,
    /// Partitions assigned since the loop last looked.
    pub(crate) newly_assigned: Mutex<Vec<Assigned>>,
    /// Set with `newly_assigned` (the loop checks this flag, not the lock).
    pub(crate) has_new: AtomicBool,
    /// Set while the loop waits for room in the producer queue with every
    /// partition paused: partitions assigned meanwhile are paused too.
    pub(crate) backpressured: AtomicBool,
    /// Time spent in rebalance callbacks so far (a long callback is not a
    /// frozen process).
    /// (Nanoseconds: read around every `poll`, so an atomic, not a lock.)
    pub(crate) callbacks: AtomicU64,
    /// Where partitions with no committed offset start.
    pub(crate) start_from: StartFrom,
    /// The lag series set at the last statistics (flow and topic levels).
    pub(crate) lag_series: Mutex<HashSet<(String, String)>>,
}

impl ClientContext for FlowConsumerCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        log_librdkafka(level, fac, msg)
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.shared
            .metrics
            .errors
            .with_label_values(&[&self.shared.flow, "source_client"])
            .inc();
        if let Some(suppressed) = self.shared.throttle.allow("source_client") {
            warn!(flow = %self.shared.flow, %error, suppressed, "source consumer: {reason}");
        }
    }
    fn stats_raw(&self, json: &[u8]) {
        crate::metrics::record_client_stats(
            &self.shared.metrics,
            &self.shared.flow,
            "source_consumer",
            json,
        );
        self.lag_from_stats(json);
    }
}

impl FlowConsumerCtx {
    /// Time spent in rebalance callbacks so far.
    pub(crate) fn callback_time(&self) -> Duration {
        Duration::from_nanos(self.callbacks.load(Ordering::Relaxed))
    }

    fn producer(&self) -> Option<Producers> {
        self.producer.lock().ok().and_then(|p| p.clone())
    }

    /// `kmirror_lag_records` from librdkafka's statistics: high watermark
    /// minus the commit position (or the group's commit before any).
    fn lag_from_stats(&self, json: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Stats {
            #[serde(default)]
            topics: HashMap<String, TopicStats>,
        }
        #[derive(serde::Deserialize)]
        struct TopicStats {
            #[serde(default)]
            partitions: HashMap<String, PartStats>,
        }
        #[derive(serde::Deserialize)]
        struct PartStats {
            #[serde(default = "minus_one")]
            hi_offset: i64,
            #[serde(default = "minus_one")]
            committed_offset: i64,
        }
        fn minus_one() -> i64 {
            -1
        }
        let Ok(stats) = serde_json::from_slice::<Stats>(json) else {
            return;
        };
        let sh = &self.shared;
        let m = &sh.metrics;
        let now = super::now_ms();
        // Per series at the configured level: (sum of lags, oldest age).
        let mut agg: HashMap<(String, String), (i64, i64)> = HashMap::new();
        for (topic, ts) in stats.topics {
            for (p, ps) in ts.partitions {
                let Ok(p) = p.parse::<i32>() else { continue };
                if p < 0 || ps.hi_offset < 0 {
                    continue;
                }
                if let Some((_, slot)) = sh.slot_for(&topic, p) {
                    let pos = slot.commit_position().unwrap_or(ps.committed_offset);
                    if pos >= 0 {
                        let lag = (ps.hi_offset - pos).max(0);
                        let age = slot.lag_age_ms(lag, now);
                        let e = agg
                            .entry((m.topic_label(&topic).to_string(), m.partition_label(p)))
                            .or_insert((0, 0));
                        e.0 += lag;
                        e.1 = e.1.max(age);
                    }
                }
            }
        }
        // Created on the first statistics, so that a lag of 0 always means
        // "measured and caught up"; at the flow and topic levels, series of
        // what this process no longer has go.
        let keys: HashSet<(String, String)> = agg.keys().cloned().collect();
        if !m.per_partition() {
            if let Ok(mut prev) = self.lag_series.lock() {
                for (t, p) in prev.difference(&keys) {
                    let labels = [sh.flow.as_str(), t.as_str(), p.as_str()];
                    let _ = m.lag.remove_label_values(&labels);
                    let _ = m.lag_seconds.remove_label_values(&labels);
                }
                *prev = keys;
            }
        }
        for ((t, p), (lag, age)) in agg {
            let labels = [sh.flow.as_str(), t.as_str(), p.as_str()];
            m.lag.with_label_values(&labels).set(lag);
            m.lag_seconds
                .with_label_values(&labels)
                .set(age as f64 / 1000.0);
        }
    }

    /// Exactly-once: the source offset to resume a partition from, derived
    /// from the target (`None`: the target holds nothing of it yet, start
    /// from the group's commit). The points of the records found in the
    /// target are queued for writing.
    pub(crate) fn resolve(
        &self,
        topic: &str,
        target: &str,
        partition: i32,
    ) -> Result<Option<i64>, String> {
        let Some(eos) = &self.eos else {
            return Ok(None);
        };
        let sh = &self.shared;
        let last = sh
            .last_syncs
            .lock()
            .ok()
            .and_then(|m| m.get(&(topic.to_string(), partition)).copied());
        let resolved = match eos.lock() {
            Ok(mut r) => r.resume(topic, target, partition, last),
            Err(p) => p.into_inner().resume(topic, target, partition, last),
        }?;
        match resolved {
            Some((pos, points)) => {
                info!(flow = %sh.flow, topic = %topic, partition, offset = pos, points = points.len(), "exactly-once: resuming after the last record found in the target");
                // Points for the records found: a process killed before it
                // wrote them leaves them untranslatable.
                if let Ok(mut pending) = sh.pending_syncs.lock() {
                    pending.extend(points.into_iter().map(|(up, down)| {
                        (
                            NO_SLOT,
                            OffsetSync {
                                topic: topic.to_string(),
                                partition,
                                upstream_offset: up,
                                downstream_offset: down,
                            },
                        )
                    }));
                }
                Ok(Some(pos))
            }
            None => {
                debug!(flow = %sh.flow, topic = %topic, partition, "exactly-once: target holds nothing of this partition yet; starting from the committed offset");
                Ok(None)
            }
        }
    }

    fn on_assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let sh = &self.shared;
        let mirror = sh.mirror_set();
        let parts: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let backpressured = self.backpressured.load(Ordering::Acquire);
        // `start_from` for the partitions the group has no commit for; a
        // failed look-up holds every partition and restarts the flow
        // (starting anywhere else could copy too much or skip records).
        let starts = match self.start_from {
            StartFrom::Earliest => Ok(HashMap::new()),
            from => start_positions(consumer, tpl, from),
        };
        if let Err(e) = &starts {
            error!(flow = %sh.flow, start_from = %self.start_from, error = %e, "cannot find where the new partitions start (committed offsets, offsets by time); they are held and the flow restarts");
            sh.request_restart("error", format!("start_from look-up failed: {e}"));
        }
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        let mut out = Vec::new();
        let mut target_down: Option<String> = None;
        for (topic, p) in parts {
            debug!(flow = %sh.flow, topic = %topic, partition = p, "partition assigned");
            let m = mirror.get(&topic);
            let target = m.map(|m| m.target.clone()).unwrap_or_default();
            let target_missing = m.is_none_or(|m| p >= m.target_partitions);
            let slot = match sh.assign(&topic, p, &target) {
                Ok((_, s)) => s,
                Err(e) => {
                    error!(flow = %sh.flow, topic = %topic, partition = p, error = %e, "partition not mirrored by this process");
                    pause.add_partition(&topic, p);
                    continue;
                }
            };
            let mut unresolved = None;
            let mut resumed = false;
            if self.eos.is_some() {
                if target_missing {
                    unresolved = Some(String::new());
                } else if let Some(e) = &target_down {
                    // One failure is enough: do not wait out the read
                    // timeouts of every partition inside the callback.
                    unresolved = Some(e.clone());
                } else {
                    match self.resolve(&topic, &target, p) {
                        Ok(Some(pos)) => {
                            let _ = tpl.set_partition_offset(&topic, p, Offset::Offset(pos));
                            resumed = true;
                        }
                        Ok(None) => {}
                        Err(e) => {
                            sh.metrics
                                .errors
                                .with_label_values(&[&sh.flow, "eos_resume"])
                                .inc();
                            error!(flow = %sh.flow, topic = %topic, partition = p, error = %e, "exactly-once: cannot derive the resume position from the target; the partition is held (not consumed) and the flow retries");
                            target_down = Some(e.clone());
                            unresolved = Some(e);
                        }
                    }
                }
            }
            // Exactly-once: what the target holds wins over `start_from`.
            if !resumed {
                if let Ok(Some(o)) = starts.as_ref().map(|m| m.get(&(topic.clone(), p))) {
                    info!(flow = %sh.flow, topic = %topic, partition = p, start_from = %self.start_from, offset = ?o, "no committed offset for this partition: starting from start_from");
                    let _ = tpl.set_partition_offset(&topic, p, *o);
                }
            }
            let hold = target_missing || unresolved.is_some() || starts.is_err();
            if hold {
                slot.held.store(true, Ordering::Release);
            }
            if hold || backpressured {
                pause.add_partition(&topic, p);
            } else {
                resume.add_partition(&topic, p);
            }
            out.push(Assigned {
                topic,
                partition: p,
                target_missing,
                unresolved,
            });
        }
        let r = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
            _ => consumer.assign(tpl),
        };
        if let Err(e) = r {
            error!(flow = %sh.flow, error = %e, "cannot take the assigned partitions");
        }
        // Paused at once, inside the callback: no record of a held
        // partition is fetched for the loop (one fetched anyway is passed
        // over, see `Slot::held`).
        if pause.count() > 0 {
            if let Err(e) = consumer.pause(&pause) {
                warn!(flow = %sh.flow, error = %e, "cannot pause the held partitions");
            }
        }
        // librdkafka keeps an application pause across unassign and assign:
        // a partition paused when it was revoked (stopped, held,
        // backpressure) would come back paused for ever.
        if resume.count() > 0 {
            let _ = consumer.resume(&resume);
        }
        if let Ok(mut n) = self.newly_assigned.lock() {
            n.extend(out);
        }
        self.has_new.store(true, Ordering::Release);
    }

    fn on_revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let sh = &self.shared;
        let slots: Vec<Arc<Slot>> = tpl
            .elements()
            .iter()
            .filter_map(|e| sh.slot_for(e.topic(), e.partition()).map(|(_, s)| s))
            .collect();
        // Lost, not revoked: the group gave these partitions to others
        // while this process did not answer (frozen, cut off) — another
        // owner may be writing them already. Nothing more may be written
        // or committed for them: purge at once and restart the flow.
        if consumer.assignment_lost() {
            if let Some(p) = self.producer() {
                purge(sh, &p, &slots, &mut || {});
            }
            error!(flow = %sh.flow, partitions = tpl.count(), "partitions lost: this process did not answer its group within the session timeout (frozen or cut off) and they moved to another member; queued records were purged, nothing more is committed for them, and the flow restarts with fresh clients");
            sh.request_restart(
                "purged",
                "partitions lost after a session timeout; queued records were purged".into(),
            );
            for e in tpl.elements() {
                sh.unassign(e.topic(), e.partition());
            }
            let _ = unassign(consumer, tpl);
            return;
        }
        // Drain: every record of these partitions handed to the producer is
        // acknowledged (or refused) before they move, a point describes the
        // last one, and the positions are committed, so the next owner
        // starts where this one stopped.
        if let Some(p) = self.producer() {
            // A record still queued could land after the next owner derived
            // its position: a drain that times out purges (every
            // partition's queue: librdkafka purges per producer), and the
            // flow restarts so that the partitions kept resume from what was
            // written.
            let wait = self.drain_timeout.min(Duration::from_secs(10));
            // (Inside `poll`: the consumer cannot be polled here.)
            if !drain_or_purge(sh, &p, &slots, self.drain_timeout, wait, false, &mut || {}) {
                error!(flow = %sh.flow, partitions = tpl.count(), timeout = ?self.drain_timeout, "revoke: the target did not acknowledge the revoked partitions' records in time; the producer's queue was purged (nothing not acknowledged is committed) and the flow restarts with fresh clients");
                sh.request_restart(
                    "purged",
                    "a revoke drain timed out; queued records were purged".into(),
                );
            }
        }
        let mut commit = TopicPartitionList::new();
        for s in &slots {
            if let Some(pos) = s.commit_position() {
                let _ = commit.add_partition_offset(&s.topic, s.partition, Offset::Offset(pos));
            }
        }
        if commit.count() > 0 {
            // Stored too: librdkafka commits the stored offsets itself when
            // the partitions are unassigned (auto commit), after this
            // commit; a stored offset older than this one would overwrite
            // it and the next owner would mirror the difference again.
            if let Err(e) = consumer.store_offsets(&commit) {
                debug!(flow = %sh.flow, error = %e, "revoke: cannot store offsets");
            }
            match consumer.commit(&commit, CommitMode::Sync) {
                Ok(()) => debug!(flow = %sh.flow, positions = ?commit, "revoke: committed"),
                Err(e) => warn!(flow = %sh.flow, error = %e, "revoke: commit failed"),
            }
        } else {
            debug!(flow = %sh.flow, "revoke: nothing to commit");
        }
        for e in tpl.elements() {
            debug!(flow = %sh.flow, topic = e.topic(), partition = e.partition(), "partition revoked");
            sh.unassign(e.topic(), e.partition());
        }
        if let Err(e) = unassign(consumer, tpl) {
            warn!(flow = %sh.flow, error = %e, "cannot release the revoked partitions");
        }
        info!(flow = %sh.flow, partitions = tpl.count(), "partitions revoked after draining");
    }
}

/// Where each partition of `tpl` that the group has no committed offset
/// for starts under `from` (latest: the end; a timestamp: the first record
/// at or after it, or the end when there is none).
fn start_positions<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tpl: &TopicPartitionList,
    from: StartFrom,
) -> Result<HashMap<(String, i32), Offset>, String> {
    const LOOKUP: Duration = Duration::from_secs(10);
    let committed = consumer
        .committed_offsets(tpl.clone(), LOOKUP)
        .map_err(|e| format!("committed offsets: {e}"))?;
    let fresh: Vec<(String, i32)> = committed
        .elements()
        .iter()
        .filter(|e| !matches!(e.offset(), Offset::Offset(o) if o >= 0))
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect();
    let mut out = HashMap::new();
    match from {
        StartFrom::Earliest => {}
        StartFrom::Latest => {
            out.extend(fresh.into_iter().map(|k| (k, Offset::End)));
        }
        StartFrom::Timestamp(ts) if !fresh.is_empty() => {
            let mut q = TopicPartitionList::new();
            for (t, p) in &fresh {
                q.add_partition_offset(t, *p, Offset::Offset(ts))
                    .map_err(|e| e.to_string())?;
            }
            for (k, o) in kafka::offsets_by_time(consumer, q, LOOKUP)? {
                out.insert(k, o.map_or(Offset::End, Offset::Offset));
            }
        }
        StartFrom::Timestamp(_) => {}
    }
    Ok(out)
}

/// Releases `tpl` the way the group's protocol wants.
fn unassign<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tpl: &TopicPartitionList,
) -> rdkafka::error::KafkaResult<()> {
    match consumer.rebalance_protocol() {
        RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
        _ => consumer.unassign(),
    }
}

impl ConsumerContext for FlowConsumerCtx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let started = Instant::now();
        self.rebalance_now(consumer, err, tpl);
        self.callbacks
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

impl FlowConsumerCtx {
    fn rebalance_now(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.on_assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.on_revoke(consumer, tpl),
            other => {
                // The group lost this member's assignment: drain and
                // commit what it holds, then let go of all of it.
                let code: RDKafkaErrorCode = other.into();
                error!(flow = %self.shared.flow, error = %code, "rebalance error; releasing every partition");
                match consumer.assignment() {
                    Ok(all) => self.on_revoke(consumer, &all),
                    Err(_) => {
                        let _ = consumer.unassign();
                    }
                }
            }
        }
    }
}
