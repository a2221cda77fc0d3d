//! The per-partition ledger: the one place that decides which source
//! position may be committed and which offset-sync points may be written.
//!
//! The invariants, each enforced here and checked by the tests below:
//!
//! 1. **Reports arrive in send order.** The idempotent producer reports
//!    the records of a partition in the order they were sent, and only one
//!    thread serves reports. A report for an offset at or before the last
//!    one reported breaks that promise: the partition is blocked (nothing
//!    after it committed) instead of trusting it.
//! 2. **The acknowledged prefix is contiguous.** It grows only while every
//!    report so far was an acknowledgement. After the first record that was
//!    not written (refused by the target, purged, failed with a fatal
//!    producer error, or never sent because kmirror was stopping), the
//!    partition is *blocked*: later acknowledgements (records of later
//!    batches the target did take) are counted but move nothing.
//! 3. **The commit position never passes the prefix**, nor the first
//!    blocked record, nor the last record whose offset-sync point the
//!    target acknowledged (so that a restart never starts after a stretch
//!    of records that no point describes and translation stays exact).
//! 4. **Offset-sync points describe only records of the prefix.** An
//!    acknowledgement after the block writes no point and neither does an
//!    idle point, so an exactly-once resume (which starts after the last
//!    point and matches target records against source records) can never
//!    start after a record the target does not hold.
//!
//! The consume loop owns one number of its own per partition, the count of
//! records handed to the producer (`sent`); what is in flight is `sent`
//! minus the reports counted here. Everything else lives in this struct,
//! behind one lock that the delivery callback takes once per report.

use rdkafka::types::RDKafkaErrorCode;

/// Why a partition is blocked at a source offset.
#[derive(Debug, Clone, PartialEq)]
pub enum Cause {
    /// The target refused the record (a permanent produce error).
    Refused {
        /// The error, as text (never holds a secret).
        error: String,
        /// The error code, when librdkafka gave one.
        code: Option<RDKafkaErrorCode>,
        /// Size of the record (key + value + headers).
        bytes: usize,
    },
    /// The record was not written and may be sent again by a fresh
    /// producer: purged (a drain that timed out) or failed with a fatal
    /// producer error.
    NotWritten(String),
    /// The record was never handed to the producer (kmirror was stopping
    /// or the partition moved while it waited for room).
    Unsent,
    /// A report arrived out of send order.
    OutOfOrder {
        /// The offset reported before it.
        previous: i64,
    },
}

/// The first record a partition could not write, and what came after.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    /// Source offset of the first record not written: nothing from here on
    /// is committed or described by a point.
    pub at: i64,
    /// Why.
    pub cause: Cause,
    /// Every refused record, (source offset, bytes, error code): the broker
    /// refuses a whole batch for one bad record.
    pub refused: Vec<(i64, usize, Option<RDKafkaErrorCode>)>,
    /// Records acknowledged after the block (later batches): the target
    /// holds them, but they are not committed, so they will be written
    /// again when the partition resumes.
    pub acked_after: u64,
    /// True once the flow has reported the block (ERROR, metric).
    pub reported: bool,
}

/// When points are written: where the offset delta changes, every `every`
/// records, and at least every `interval_ms` while records flow.
#[derive(Debug, Clone, Copy)]
pub struct PointRule {
    /// Records between two points at most.
    pub every: u64,
    /// Milliseconds between two points at most (also the idle point's
    /// pace).
    pub interval_ms: i64,
}

/// What an acknowledgement changed.
#[derive(Debug, Default, PartialEq)]
pub struct Acked {
    /// The record joined the acknowledged prefix.
    pub counted: bool,
    /// Offset-sync points to write, (source, target), in order.
    pub points: Vec<(i64, i64)>,
    /// The target offset jumped by more than one between two consecutive
    /// source records: another producer wrote in between.
    pub foreign: bool,
}

/// One partition's ledger (see the module docs).
#[derive(Debug, Clone)]
pub struct Ledger {
    reported: u64,
    last_reported: i64,
    /// Next source offset after the acknowledged prefix (-1: none yet).
    prefix_end: i64,
    /// (source, target) of the prefix's last record.
    last_pair: Option<(i64, i64)>,
    block: Option<Block>,
    /// Offset after the last record passed over without sending
    /// (provenance: it came from the target); -1 when none.
    skip_to: i64,
    /// Source offset of the last point handed out.
    emitted: i64,
    /// Next source offset after the last record whose point the target
    /// acknowledged.
    persisted_to: i64,
    /// Points handed out and not yet acknowledged or failed.
    points_pending: u64,
    since_point: u64,
    point_ms: i64,
}

impl Default for Ledger {
    fn default() -> Self {
        Self {
            reported: 0,
            last_reported: -1,
            prefix_end: -1,
            last_pair: None,
            block: None,
            skip_to: -1,
            emitted: -1,
            persisted_to: -1,
            points_pending: 0,
            since_point: 0,
            point_ms: 0,
        }
    }
}

impl Ledger {
    /// Records reported so far (acknowledged, refused or failed).
    pub fn reported(&self) -> u64 {
        self.reported
    }

    /// The block, if the partition is blocked.
    pub fn block(&self) -> Option<&Block> {
        self.block.as_ref()
    }

    /// Mutable access to the block (to mark it reported).
    pub fn block_mut(&mut self) -> Option<&mut Block> {
        self.block.as_mut()
    }

    /// (source, target) of the last record of the acknowledged prefix.
    pub fn last_pair(&self) -> Option<(i64, i64)> {
        self.last_pair
    }

    /// Points handed out and not acknowledged yet.
    pub fn points_pending(&self) -> u64 {
        self.points_pending
    }

    /// Takes the next report in order; false (and the partition blocked)
    /// when it is out of order.
    fn take_report(&mut self, src: i64) -> bool {
        self.reported += 1;
        if src <= self.last_reported {
            let previous = self.last_reported;
            self.block_at(src, Cause::OutOfOrder { previous });
            return false;
        }
        self.last_reported = src;
        true
    }

    fn block_at(&mut self, at: i64, cause: Cause) {
        match &mut self.block {
            Some(b) => {
                if at < b.at {
                    b.at = at;
                }
            }
            None => {
                self.block = Some(Block {
                    at,
                    cause,
                    refused: Vec::new(),
                    acked_after: 0,
                    reported: false,
                })
            }
        }
    }

    /// The target acknowledged source record `src` at target offset `tgt`.
    pub fn ack(&mut self, src: i64, tgt: i64, now_ms: i64, rule: PointRule) -> Acked {
        let mut out = Acked::default();
        if !self.take_report(src) {
            return out;
        }
        if let Some(b) = &mut self.block {
            b.acked_after += 1;
            return out;
        }
        out.counted = true;
        let prev = self.last_pair.replace((src, tgt));
        self.prefix_end = src + 1;
        if let Some((ps, pt)) = prev {
            out.foreign = src == ps + 1 && tgt > pt + 1;
        }
        // Points: where the delta changes, the last record of the old run
        // and the first of the new one (translation then knows that no
        // record lies between them); every `every` records; and at least
        // every `interval_ms`, so that commits (which wait for a point)
        // keep moving.
        self.since_point += 1;
        let changed = prev.is_none_or(|(ps, pt)| pt - ps != tgt - src);
        let due = now_ms - self.point_ms >= rule.interval_ms;
        if changed || self.since_point >= rule.every || due {
            if changed {
                if let Some((ps, pt)) = prev {
                    if self.emitted != ps {
                        out.points.push((ps, pt));
                    }
                }
            }
            out.points.push((src, tgt));
            self.handed_out(src, now_ms, out.points.len() as u64);
        }
        out
    }

    fn handed_out(&mut self, src: i64, now_ms: i64, n: u64) {
        self.emitted = src;
        self.point_ms = now_ms;
        self.since_point = 0;
        self.points_pending += n;
    }

    /// The target refused source record `src` (a delivery report).
    pub fn refuse(
        &mut self,
        src: i64,
        error: String,
        code: Option<RDKafkaErrorCode>,
        bytes: usize,
    ) {
        self.take_report(src);
        self.add_refusal(src, error, code, bytes);
    }

    /// The producer refused to take source record `src` at all (it was
    /// never sent, so it is not a report).
    pub fn refuse_unsent(
        &mut self,
        src: i64,
        error: String,
        code: Option<RDKafkaErrorCode>,
        bytes: usize,
    ) {
        self.add_refusal(src, error, code, bytes);
    }

    fn add_refusal(
        &mut self,
        src: i64,
        error: String,
        code: Option<RDKafkaErrorCode>,
        bytes: usize,
    ) {
        self.block_at(src, Cause::Refused { error, code, bytes });
        if let Some(b) = &mut self.block {
            b.refused.push((src, bytes, code));
        }
    }

    /// Source record `src` was reported as not written (purged, fatal
    /// producer error): not a refusal, the record can be sent again by a
    /// fresh producer after a restart of the flow.
    pub fn not_written(&mut self, src: i64, why: String) {
        self.take_report(src);
        self.block_at(src, Cause::NotWritten(why));
    }

    /// The consume loop gave up on source record `src` before handing it to
    /// the producer: nothing at or after it is committed.
    pub fn unsent(&mut self, src: i64) {
        self.block_at(src, Cause::Unsent);
    }

    /// Records before `to` were passed over on purpose (provenance).
    pub fn skipped(&mut self, to: i64) {
        self.skip_to = self.skip_to.max(to);
    }

    /// The target acknowledged the point of source record `src`.
    pub fn point_persisted(&mut self, src: i64) {
        self.persisted_to = self.persisted_to.max(src + 1);
        self.points_pending = self.points_pending.saturating_sub(1);
    }

    /// The point of `src` could not be written: the next idle point
    /// describes the prefix's end again (commits wait meanwhile).
    pub fn point_failed(&mut self, src: i64) {
        self.points_pending = self.points_pending.saturating_sub(1);
        if self.emitted == src {
            self.emitted = self.persisted_to - 1;
        }
    }

    /// The idle point: with nothing in flight, the prefix's last record
    /// becomes a point (at most every `interval_ms` unless `force`), so that
    /// a group that read everything translates exactly and the commit
    /// position can reach the end.
    pub fn idle_point(
        &mut self,
        inflight: u64,
        now_ms: i64,
        force: bool,
        rule: PointRule,
    ) -> Option<(i64, i64)> {
        let (src, tgt) = self.last_pair?;
        if inflight != 0 || src <= self.emitted {
            return None;
        }
        if !force && now_ms - self.point_ms < rule.interval_ms {
            return None;
        }
        self.handed_out(src, now_ms, 1);
        Some((src, tgt))
    }

    /// The source offset that may be committed (the next one to read), or
    /// `None` when nothing may be committed yet. `inflight` is the number
    /// of records sent and not reported.
    pub fn commit_position(&self, inflight: u64) -> Option<i64> {
        let mut pos = self.prefix_end;
        // Records passed over after the prefix count as done once nothing
        // is in flight (a record sent after them would be in flight).
        if inflight == 0 && self.block.is_none() {
            pos = pos.max(self.skip_to);
        }
        // Never after the last record whose point is persisted, unless the
        // prefix has no record after that point (then every acknowledged
        // record is described).
        let described = self.last_pair.is_none_or(|(s, _)| s < self.persisted_to);
        if !described {
            pos = pos.min(self.persisted_to);
        }
        if let Some(b) = &self.block {
            pos = pos.min(b.at);
        }
        (pos >= 0).then_some(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const RULE: PointRule = PointRule {
        every: 1000,
        interval_ms: 1000,
    };

    #[test]
    fn prefix_moves_with_acknowledgements_and_waits_for_points() {
        let mut l = Ledger::default();
        assert_eq!(l.commit_position(0), None);
        let a = l.ack(10, 0, 5000, RULE);
        assert!(a.counted);
        assert_eq!(a.points, vec![(10, 0)]);
        // Point not yet persisted: the commit waits for it.
        assert_eq!(l.commit_position(0), None);
        l.point_persisted(10);
        assert_eq!(l.commit_position(0), Some(11));
        // 11 acked, no point yet (same delta, not due): commit stays at the
        // last described record.
        let a = l.ack(11, 1, 5001, RULE);
        assert!(a.points.is_empty());
        assert_eq!(l.commit_position(0), Some(11));
        assert_eq!(l.idle_point(0, 5002, true, RULE), Some((11, 1)));
        l.point_persisted(11);
        assert_eq!(l.commit_position(0), Some(12));
    }

    #[test]
    fn a_refusal_blocks_commits_and_points_after_it() {
        let mut l = Ledger::default();
        l.ack(0, 0, 0, RULE);
        l.point_persisted(0);
        l.refuse(1, "too large".into(), None, 3_000_000);
        let later = l.ack(2, 1, 5000, RULE);
        assert!(!later.counted);
        assert!(later.points.is_empty(), "no point after a refusal");
        assert_eq!(l.idle_point(0, 9000, true, RULE), None);
        assert_eq!(l.commit_position(0), Some(1));
        let b = l.block().unwrap();
        assert_eq!((b.at, b.acked_after, b.refused.len()), (1, 1, 1));
    }

    #[test]
    fn an_unsent_record_stops_the_commit_before_it() {
        let mut l = Ledger::default();
        l.ack(5, 5, 0, RULE);
        l.point_persisted(5);
        l.unsent(6);
        l.skipped(100);
        assert_eq!(l.commit_position(0), Some(6));
    }

    #[test]
    fn an_out_of_order_report_blocks() {
        let mut l = Ledger::default();
        l.ack(5, 5, 0, RULE);
        l.point_persisted(5);
        let a = l.ack(4, 6, 0, RULE);
        assert!(!a.counted);
        assert!(matches!(
            l.block().unwrap().cause,
            Cause::OutOfOrder { previous: 5 }
        ));
        assert_eq!(l.commit_position(0), Some(4));
    }

    #[test]
    fn delta_change_writes_both_ends_and_foreign_writes_are_seen() {
        let mut l = Ledger::default();
        assert_eq!(l.ack(0, 0, 0, RULE).points, vec![(0, 0)]);
        assert!(l.ack(1, 1, 1, RULE).points.is_empty());
        let a = l.ack(2, 7, 2, RULE);
        assert!(a.foreign);
        assert_eq!(a.points, vec![(1, 1), (2, 7)]);
        // A gap in source offsets (compaction) with the same jump is not
        // foreign.
        let a = l.ack(5, 8, 3, RULE);
        assert!(!a.foreign);
        assert_eq!(a.points, vec![(5, 8)]);
    }

    #[test]
    fn skipped_records_count_only_with_nothing_in_flight() {
        let mut l = Ledger::default();
        l.skipped(10);
        assert_eq!(l.commit_position(1), None);
        assert_eq!(l.commit_position(0), Some(10));
    }

    /// Property test: random sends (with offset gaps), reports in send
    /// order (acks, refusals, purges), points acknowledged at random, idle
    /// points and stops; after every step the commit position and every
    /// point handed out are checked against a model of what the target
    /// really holds.
    #[test]
    fn random_histories_never_commit_or_describe_what_is_not_written() {
        for seed in 0..2000u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut l = Ledger::default();
            let mut next_offset: i64 = rng.random_range(0..5);
            let mut next_target: i64 = 0;
            // Sent, not yet reported: source offsets in order.
            let mut inflight: std::collections::VecDeque<i64> = Default::default();
            // Every record sent or given up, with whether the target holds
            // it at the expected place (`Some(target offset)`).
            let mut written: std::collections::BTreeMap<i64, Option<i64>> = Default::default();
            let mut points: Vec<(i64, i64)> = Vec::new();
            let mut unacked_points: Vec<i64> = Vec::new();
            let mut stopped = false;
            let mut now = 0i64;
            for _ in 0..rng.random_range(1..200) {
                now += rng.random_range(0..400);
                match rng.random_range(0..10) {
                    0..=3 if !stopped => {
                        let o = next_offset;
                        next_offset += rng.random_range(1..3);
                        if rng.random_bool(0.02) {
                            l.unsent(o);
                            written.insert(o, None);
                            stopped = true;
                        } else if rng.random_bool(0.02) {
                            l.skipped(o + 1);
                        } else {
                            inflight.push_back(o);
                        }
                    }
                    4..=6 => {
                        if let Some(o) = inflight.pop_front() {
                            match rng.random_range(0..40) {
                                0 => {
                                    l.refuse(o, "refused".into(), None, 1);
                                    written.insert(o, None);
                                }
                                1 => {
                                    l.not_written(o, "purged".into());
                                    written.insert(o, None);
                                }
                                _ => {
                                    if rng.random_bool(0.05) {
                                        next_target += rng.random_range(1..4);
                                    }
                                    let t = next_target;
                                    next_target += 1;
                                    written.insert(o, Some(t));
                                    let a = l.ack(o, t, now, RULE);
                                    for p in &a.points {
                                        unacked_points.push(p.0);
                                    }
                                    points.extend(a.points);
                                }
                            }
                        }
                    }
                    7 if !unacked_points.is_empty() => {
                        let i = rng.random_range(0..unacked_points.len());
                        l.point_persisted(unacked_points.remove(i));
                    }
                    8 => {
                        let p =
                            l.idle_point(inflight.len() as u64, now, rng.random_bool(0.3), RULE);
                        if let Some(p) = p {
                            unacked_points.push(p.0);
                            points.push(p);
                        }
                    }
                    _ => {}
                }
                // Invariant 3: every record before the commit position that
                // was sent is written.
                if let Some(c) = l.commit_position(inflight.len() as u64) {
                    for (o, w) in written.range(..c) {
                        assert!(w.is_some(), "seed {seed}: commit {c} passes unwritten {o}");
                    }
                    for o in &inflight {
                        assert!(*o >= c, "seed {seed}: commit {c} passes in-flight {o}");
                    }
                }
                // Invariant 4: every point describes a written record at
                // its real target offset, and all records before it that
                // were sent are written.
                for (s, t) in &points {
                    assert_eq!(
                        written.get(s),
                        Some(&Some(*t)),
                        "seed {seed}: point ({s},{t})"
                    );
                    for (o, w) in written.range(..s) {
                        assert!(w.is_some(), "seed {seed}: point at {s} after unwritten {o}");
                    }
                }
            }
        }
    }
}
