//! Slots: the state of each assigned source partition, shared by the
//! consume loop and the delivery callback, and the table that maps a
//! delivery report's slot index back to it.
//!
//! A report names its slot by index (the producer's opaque holds the index
//! and the source offset). An index is reused only once its old slot has
//! nothing in flight, records nor points, so a late report can never land
//! on another partition's slot; and the table never grows beyond the
//! partitions a process holds at once plus those still draining.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus::local::{LocalHistogram, LocalIntCounter};
use prometheus::{Histogram, IntCounter};

use super::ledger::Ledger;

/// Largest slot index (exclusive); 15 bits of the delivery opaque. The
/// last value marks a point that no slot waits for.
pub const MAX_SLOTS: usize = (1 << 15) - 1;

/// Aligned to (and padded to) 128 bytes: two cache lines, as adjacent-line
/// prefetch pairs them, so that the consume loop's and the delivery
/// callback's per-record writes do not share a line.
#[repr(align(128))]
pub struct Padded<T>(pub T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// State of one assigned source partition.
pub struct Slot {
    /// Source topic.
    pub topic: String,
    /// Partition (the same number on both sides).
    pub partition: i32,
    /// Target topic ("" when the mirror set has none yet).
    pub target: String,
    /// Records handed to the producer: written by the consume loop only.
    sent: Padded<AtomicI64>,
    /// What may be committed and pointed at (see [`Ledger`]).
    ledger: Padded<Mutex<Ledger>>,
    /// Set once the ledger is blocked: the consume loop's per-record check.
    pub blocked: AtomicBool,
    /// Set when the partition is revoked: records still held for it are
    /// dropped, never sent.
    pub revoked: AtomicBool,
    /// Paused by the flow (target partition missing, exactly-once
    /// position not derived yet): records returned for it anyway are not
    /// forwarded.
    pub held: AtomicBool,
    /// Offset of the first record passed over while held (-1: none); the
    /// flow seeks back to it when the hold ends.
    pub passed_from: AtomicI64,
    /// Offset after the last record handed to the producer (-1: none);
    /// consume loop only. A record at an earlier offset (the consumer
    /// delivering again after an offset reset) was handed over already.
    pub next_offset: AtomicI64,
    /// A foreign write was reported once.
    pub foreign_warned: AtomicBool,
    /// Last offset stored for commit (consume loop only).
    pub stored: AtomicI64,
    /// `kmirror_records_total` of this partition.
    pub records: IntCounter,
    /// `kmirror_bytes_total` of this partition.
    pub bytes: IntCounter,
    /// `kmirror_replication_latency_seconds` of the topic.
    pub latency: Histogram,
    /// `kmirror_record_age_seconds` of the topic.
    pub age: Histogram,
    /// Source timestamp (ms) of the last record acknowledged into the
    /// prefix (-1: none yet): delivery callback only.
    pub acked_ts: AtomicI64,
    /// Wall clock (ms) when the statistics last showed the partition
    /// caught up (-1: never).
    pub caught_up_ms: AtomicI64,
    /// Wall clock (ms) when the slot was made (assigned).
    pub assigned_ms: i64,
}

impl Slot {
    /// A fresh slot.
    pub fn new(
        topic: &str,
        partition: i32,
        target: &str,
        metrics: [IntCounter; 2],
        hist: [Histogram; 2],
    ) -> Self {
        let [records, bytes] = metrics;
        let [latency, age] = hist;
        Self {
            topic: topic.to_string(),
            partition,
            target: target.to_string(),
            sent: Padded(AtomicI64::new(0)),
            ledger: Padded(Mutex::new(Ledger::default())),
            blocked: AtomicBool::new(false),
            revoked: AtomicBool::new(false),
            held: AtomicBool::new(false),
            passed_from: AtomicI64::new(-1),
            next_offset: AtomicI64::new(-1),
            foreign_warned: AtomicBool::new(false),
            stored: AtomicI64::new(-1),
            records,
            bytes,
            latency,
            age,
            acked_ts: AtomicI64::new(-1),
            caught_up_ms: AtomicI64::new(-1),
            assigned_ms: super::now_ms(),
        }
    }

    /// Age in milliseconds of the oldest record not yet mirrored, for a
    /// partition `lag` records behind at wall clock `now` (0 when caught
    /// up; records the time). The first record not mirrored is newer
    /// than the last one acknowledged and was appended after the last time
    /// the partition was seen caught up, so the smaller of those two ages
    /// bounds it from above: exact to within the spacing of two records
    /// while records flow, and small for a trickle. Before anything was
    /// acknowledged or seen caught up: the time since the assignment.
    pub fn lag_age_ms(&self, lag: i64, now: i64) -> i64 {
        if lag <= 0 {
            self.caught_up_ms.store(now, Ordering::Relaxed);
            return 0;
        }
        let bounds = [
            self.acked_ts.load(Ordering::Relaxed),
            self.caught_up_ms.load(Ordering::Relaxed),
        ];
        let age = bounds
            .iter()
            .filter(|t| **t >= 0)
            .map(|t| now - t)
            .min()
            .unwrap_or(now - self.assigned_ms);
        age.max(0)
    }

    /// The ledger (a poisoned lock still holds a consistent ledger: every
    /// method leaves it whole).
    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        match self.ledger.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Counts a record handed to the producer; call before `send`, so that
    /// its report can never be counted first.
    pub fn will_send(&self) {
        // One writer (the consume loop): no locked instruction.
        self.sent
            .store(self.sent.load(Ordering::Relaxed) + 1, Ordering::Release);
    }

    /// Takes back [`Slot::will_send`] for a record the producer did not
    /// take.
    pub fn not_sent(&self) {
        self.sent
            .store(self.sent.load(Ordering::Relaxed) - 1, Ordering::Release);
    }

    /// Records handed to the producer, not reported yet, given the ledger.
    pub fn inflight_with(&self, ledger: &Ledger) -> u64 {
        (self.sent.load(Ordering::Acquire) - ledger.reported() as i64).max(0) as u64
    }

    /// Records handed to the producer and not reported yet.
    pub fn inflight(&self) -> u64 {
        let l = self.ledger();
        self.inflight_with(&l)
    }

    /// Nothing of this slot is in flight: no record, no point.
    pub fn quiet(&self) -> bool {
        let l = self.ledger();
        self.inflight_with(&l) == 0 && l.points_pending() == 0
    }

    /// The commit position (see [`Ledger::commit_position`]).
    pub fn commit_position(&self) -> Option<i64> {
        let l = self.ledger();
        l.commit_position(self.inflight_with(&l))
    }

    /// Marks the slot blocked (its ledger is).
    pub fn set_blocked(&self) {
        self.blocked.store(true, Ordering::Release);
    }

    /// True once the ledger is blocked.
    pub fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::Acquire)
    }
}

/// The slots of a flow: index → slot, (topic, partition) → index.
#[derive(Default)]
pub struct SlotTable {
    slots: Vec<Option<Arc<Slot>>>,
    free: Vec<usize>,
    index: HashMap<String, HashMap<i32, usize>>,
    /// Revoked slots that may still get reports.
    retired: Vec<usize>,
}

impl SlotTable {
    /// The slot at `idx` (assigned or retired).
    pub fn get(&self, idx: usize) -> Option<Arc<Slot>> {
        self.slots.get(idx).and_then(|s| s.clone())
    }

    /// The assigned slot of a partition, with its index.
    pub fn find(&self, topic: &str, partition: i32) -> Option<(usize, Arc<Slot>)> {
        let idx = *self.index.get(topic)?.get(&partition)?;
        self.get(idx).map(|s| (idx, s))
    }

    /// Adds the slot of a newly assigned partition (retiring a slot the
    /// partition still had); its index, or an error when the table is full.
    pub fn insert(&mut self, slot: Arc<Slot>) -> Result<usize, String> {
        self.remove(&slot.topic, slot.partition);
        let idx = match self.free.pop() {
            Some(i) => i,
            None if self.slots.len() < MAX_SLOTS => {
                self.slots.push(None);
                self.slots.len() - 1
            }
            None => {
                return Err(format!(
                    "more than {MAX_SLOTS} partitions assigned or draining in one flow of one process; run more processes"
                ))
            }
        };
        self.index
            .entry(slot.topic.clone())
            .or_default()
            .insert(slot.partition, idx);
        self.slots[idx] = Some(slot);
        Ok(idx)
    }

    /// Unassigns a partition: its slot is marked revoked and retired until
    /// nothing of it is in flight.
    pub fn remove(&mut self, topic: &str, partition: i32) -> Option<Arc<Slot>> {
        let parts = self.index.get_mut(topic)?;
        let idx = parts.remove(&partition)?;
        if parts.is_empty() {
            self.index.remove(topic);
        }
        let slot = self.get(idx)?;
        slot.revoked.store(true, Ordering::Release);
        self.retired.push(idx);
        Some(slot)
    }

    /// Frees the retired slots that have nothing in flight; returns how
    /// many are still draining.
    pub fn reap(&mut self) -> usize {
        let slots = &mut self.slots;
        let free = &mut self.free;
        self.retired.retain(|&i| {
            let quiet = slots[i].as_ref().is_none_or(|s| s.quiet());
            if quiet {
                slots[i] = None;
                free.push(i);
            }
            !quiet
        });
        self.retired.len()
    }

    /// The assigned slots, with their indexes.
    pub fn assigned(&self) -> Vec<(usize, Arc<Slot>)> {
        self.index
            .values()
            .flat_map(|ps| ps.values())
            .filter_map(|&i| self.get(i).map(|s| (i, s)))
            .collect()
    }

    /// Slots in use (assigned and retired).
    pub fn in_use(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

/// A thread's memo of the slot it used last (records and reports come in
/// runs of one partition), with the metric updates for it that the thread
/// has not published yet: they are published when the slot changes and on
/// every housekeeping pass (at least every 100 ms), instead of touching
/// the shared metrics for every record.
pub struct CachedSlot {
    /// Table generation the memo is valid for.
    pub generation: u64,
    /// Slot index.
    pub idx: usize,
    /// The slot.
    pub slot: Arc<Slot>,
    /// `slot.age` (consume loop) or `slot.latency` (delivery callback).
    pub hist: LocalHistogram,
    /// Buffered `records`.
    pub records: LocalIntCounter,
    /// Buffered `bytes`.
    pub bytes: LocalIntCounter,
}

impl CachedSlot {
    /// A memo of `slot`; `pick` chooses the histogram this thread feeds.
    pub fn new(
        generation: u64,
        idx: usize,
        slot: Arc<Slot>,
        pick: fn(&Slot) -> &Histogram,
    ) -> Self {
        Self {
            generation,
            idx,
            hist: pick(&slot).local(),
            records: slot.records.local(),
            bytes: slot.bytes.local(),
            slot,
        }
    }

    /// Publishes the buffered metric updates.
    pub fn flush(&self) {
        self.hist.flush();
        self.records.flush();
        self.bytes.flush();
    }
}

impl Drop for CachedSlot {
    fn drop(&mut self) {
        self.flush();
    }
}

/// A thread's memo, if any.
pub type SlotCache = Option<CachedSlot>;

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::HistogramOpts;

    fn slot(topic: &str, p: i32) -> Arc<Slot> {
        let c = || IntCounter::new("c", "c").unwrap();
        let h = || Histogram::with_opts(HistogramOpts::new("h", "h")).unwrap();
        Arc::new(Slot::new(topic, p, "t", [c(), c()], [h(), h()]))
    }

    #[test]
    fn rebalances_reuse_indexes_once_drained() {
        let mut t = SlotTable::default();
        for round in 0..50_000 {
            for p in 0..4 {
                t.insert(slot("a", p)).unwrap();
            }
            for p in 0..4 {
                t.remove("a", p).unwrap();
            }
            t.reap();
            assert!(t.in_use() <= 4, "round {round}: {} slots", t.in_use());
        }
    }

    #[test]
    fn a_slot_with_records_in_flight_is_not_reused() {
        let mut t = SlotTable::default();
        let s = slot("a", 0);
        let i = t.insert(s.clone()).unwrap();
        s.will_send();
        t.remove("a", 0);
        assert_eq!(t.reap(), 1);
        let j = t.insert(slot("a", 0)).unwrap();
        assert_ne!(i, j, "an index with a report pending must not be reused");
        assert!(t.get(i).is_some_and(|x| Arc::ptr_eq(&x, &s)));
        // Its report arrives: now it is freed.
        s.ledger().ack(
            0,
            0,
            0,
            crate::flow::ledger::PointRule {
                every: 1,
                interval_ms: 1,
            },
        );
        s.ledger().point_persisted(0);
        assert_eq!(t.reap(), 0);
        assert!(t.get(i).is_none());
        assert!(s.revoked.load(Ordering::Acquire));
    }
}
