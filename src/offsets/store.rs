//! The offset-sync store and offset translation.
//!
//! A *point* is one MM2 `OffsetSync`: (source topic, partition, upstream =
//! source offset, downstream = target offset) of a record that the target
//! acknowledged. The replicator writes points by these rules, per partition:
//!
//! - a point for the first acknowledged record;
//! - whenever the delta (downstream − upstream) changes, **two** points: the
//!   last record of the old delta and the first record of the new one. The
//!   delta changes when the source has a gap (compaction, deleted records,
//!   transaction markers) or when another producer wrote to the target
//!   between two mirrored records (target offsets of consecutive mirrored
//!   records are otherwise consecutive: one writer);
//! - every 1000 records, and when the partition goes idle (its last
//!   acknowledged record), with an unchanged delta.
//!
//! So between two consecutive points `(a, ta)` and `(b, tb)` of a partition:
//! if `tb − b == ta − a`, every source offset in `[a, b]` is a mirrored record
//! at target offset `s + (ta − a)`; otherwise `a` is the last record of its
//! run, `b` the first of the next, and no mirrored record has a source offset
//! strictly between them. [`translate`] relies on exactly this.
//!
//! **Memory bound.** [`OffsetSyncStore`] holds at most
//! `max_points_per_partition` points per partition. When a partition goes
//! over the bound, the store first drops the points that add no information
//! (a point whose two neighbours have the same delta as itself, with nothing
//! in between that says otherwise: the three lie on one run), then, if still
//! over, the **oldest** points (lowest source offsets). A committed offset
//! before the oldest kept point then translates to `None` (no checkpoint),
//! never to a wrong offset, and points at or below a dropped one are
//! ignored from then on. Redundant points are not dropped before the bound
//! is reached on purpose: points may be added in any order, and a point that
//! looks redundant now can be the end of a run once the points between its
//! neighbours arrive. The store remembers where it dropped such points and
//! answers `None` in a gap whose meaning they would have decided, so that
//! even then it never answers too far ahead.
//!
//! **Rewinds.** A later session that mirrors a source offset again
//! (at-least-once after a crash) writes points whose target offsets are
//! higher than older points at the same or higher source offsets. The
//! newer point wins (a consumer resuming there reads every record from that
//! source offset on); the older points it contradicts are removed, or
//! ignored when they arrive after it. Before the newer session's first
//! point, the older history still answers (the older copies come first in
//! the target); past the newer session's last point, the answer is `None`
//! while older copies exist further on. Exact when the points arrive in the
//! order they were written; in another order the store keeps only a summary
//! of the superseded points, so that with three or more overlapping
//! sessions, or when the bound already dropped points, it may answer `None`
//! or an older copy (behind: duplicates), never ahead.
//!
//! **The internal topic.** Points are persisted in
//! `kmirror-offset-syncs.<source>.internal` on the target (MM2's OffsetSync
//! key and value layout, see [`super::codec::OffsetSync`]). That topic must
//! NOT be compacted: MM2's key is topic + partition, so compaction would keep
//! only the last point of each partition and lose the history translation
//! needs (the delta-change pairs). kmirror creates it with
//! `cleanup.policy=delete`; its retention bounds how far back a restarted
//! store can translate, just as the in-memory bound does.

use std::collections::{BTreeMap, VecDeque};

/// What is known strictly between a point and its predecessor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gap {
    /// Nothing was dropped here: the point rules apply as they are.
    Exact,
    /// Points on the line `target = source + delta` were dropped here as
    /// redundant. If both ends lie on that line it is one run; otherwise the
    /// dropped points would decide where a run ends: unknown.
    Lossy(i64),
    /// The right end starts a newer session (a rewind): older points
    /// (superseded by it, all at or after its source offset) followed the
    /// left end. `(up, down)` is the oldest of them, i.e. the left end's
    /// successor in its own session, which decides the inside; `newest` is
    /// the highest target offset among them (a point added inside that is
    /// older than `newest` but newer than `down` leaves the right part
    /// unknown).
    Rewound { up: i64, down: i64, newest: i64 },
    /// Nothing is known strictly inside.
    Unknown,
}

#[derive(Debug, Clone, Copy)]
struct Point {
    up: i64,
    down: i64,
    /// The gap between the previous point and this one; for the first
    /// point, the region down to the last dropped point (what a point added
    /// there later splits).
    before: Gap,
}

impl Point {
    fn delta(&self) -> i64 {
        // Both are non-negative (checked in `add`): no overflow.
        self.down - self.up
    }
}

fn run_gap(g: Gap, delta: i64) -> bool {
    g == Gap::Exact || g == Gap::Lossy(delta)
}

/// `y` adds no information between `x` and `z`: all three on one run.
fn redundant(x: &Point, y: &Point, z: &Point) -> bool {
    let d = y.delta();
    x.delta() == d && z.delta() == d && run_gap(y.before, d) && run_gap(z.before, d)
}

/// The gap `g`, left of a point that starts a newer session, learns of
/// older points that followed its left end: the oldest is `(up, down)`,
/// the newest at `newest`.
fn with_older(g: Gap, up: i64, down: i64, newest: i64) -> Gap {
    match g {
        Gap::Exact => Gap::Rewound { up, down, newest },
        Gap::Rewound {
            up: u,
            down: d,
            newest: m,
        } => {
            let (up, down) = if down < d { (up, down) } else { (u, d) };
            Gap::Rewound {
                up,
                down,
                newest: newest.max(m),
            }
        }
        Gap::Lossy(_) | Gap::Unknown => Gap::Unknown,
    }
}

/// The states of the two halves of a gap `g` split by point `p`.
fn split(g: Gap, p: &Point) -> (Gap, Gap) {
    let Gap::Rewound { up, down, newest } = g else {
        return (g, g);
    };
    if p.down < down {
        // `p` is older than every older point noted: the left half is an
        // ordinary gap of `p`'s history.
        (Gap::Exact, g)
    } else if p.down > newest {
        // `p` is newer than all of them: it starts the newer session (or
        // one between), and they all follow the left end.
        (g, Gap::Exact)
    } else if p.down > down && p.down < newest {
        // Some are older than `p`, some newer: which of the newer ones
        // follows `p` is not kept.
        let left = Gap::Rewound {
            up,
            down,
            newest: p.down - 1,
        };
        (left, Gap::Unknown)
    } else {
        (Gap::Unknown, Gap::Unknown) // same target offset: corrupt
    }
}

#[derive(Debug, Clone, Default)]
struct Partition {
    /// Strictly increasing in both `up` and `down`.
    points: VecDeque<Point>,
    /// The last point dropped because of the bound.
    floor: Option<(i64, i64)>,
    /// The highest source offset of a point superseded by a newer session:
    /// up to there, older copies may be the only ones in the target.
    superseded_up: Option<i64>,
    /// Points inserted since the last full pass over redundant points.
    since_compaction: usize,
}

impl Partition {
    fn add(&mut self, up: i64, down: i64, bound: usize) {
        if let Some((fu, fd)) = self.floor {
            if up <= fu && down > fd {
                self.rewind_below_floor(down);
                return;
            }
            if up <= fu {
                return; // before what the store covers
            }
            if down <= fd {
                self.note_stale(up, down);
                return;
            }
        }
        let pts = &mut self.points;
        let le = pts.partition_point(|p| p.up <= up);
        if le > 0 {
            let q = pts[le - 1];
            if q.up == up && q.down == down {
                return; // duplicate
            }
            if q.down > down {
                // A point at or before this source offset was written after
                // this target offset: this one is older history.
                self.note_stale(up, down);
                return;
            }
            if q.down == down {
                return; // two source offsets at one target offset: corrupt
            }
        }
        let start = if le > 0 && pts[le - 1].up == up {
            le - 1
        } else {
            le
        };
        // Points at or after this source offset but before this target
        // offset: older history this point supersedes (a rewind).
        let mut end = start;
        while end < pts.len() && pts[end].down < down {
            end += 1;
        }
        if end < pts.len() && pts[end].down == down {
            return; // two source offsets at one target offset: corrupt
        }
        let mut p = Point {
            up,
            down,
            before: Gap::Exact,
        };
        if end > start {
            // Every removed point, and every older point noted between them,
            // followed the left end in some older session.
            let mut left = Gap::Exact;
            let mut lost = false;
            for r in pts.range(start..end) {
                left = with_older(left, r.up, r.down, r.down);
                match r.before {
                    Gap::Exact => {}
                    Gap::Rewound {
                        up: u,
                        down: d,
                        newest: m,
                    } => left = with_older(left, u, d, m),
                    Gap::Lossy(_) | Gap::Unknown => lost = true,
                }
            }
            let last_up = pts[end - 1].up;
            self.superseded_up = Some(self.superseded_up.map_or(last_up, |s| s.max(last_up)));
            pts.drain(start..end);
            if let Some(next) = pts.get_mut(start) {
                // What `next.before` noted splits at `p` like a gap does;
                // the removed gaps were older history.
                next.before = match next.before {
                    Gap::Exact => Gap::Exact,
                    Gap::Rewound {
                        up: u,
                        down: d,
                        newest: m,
                    } if m < down => {
                        left = with_older(left, u, d, m);
                        Gap::Exact
                    }
                    g @ Gap::Rewound { down: d, .. } if d > down => g,
                    Gap::Rewound { up: u, down: d, .. } if d < down => {
                        left = with_older(left, u, d, down - 1);
                        Gap::Unknown
                    }
                    _ => Gap::Unknown,
                };
            }
            p.before = if lost { Gap::Unknown } else { left };
        } else if let Some(next) = pts.get_mut(start) {
            let (left, right) = split(next.before, &p);
            p.before = left;
            next.before = right;
        }
        pts.insert(start, p);
        self.since_compaction += 1;
        if self.points.len() > bound {
            self.relieve(start, bound);
        }
    }

    /// A point below the floor but newer than it: a session that rewound
    /// into the dropped region. It supersedes every older point the store
    /// holds; the floor rises to its target offset so that older points
    /// added later are ignored.
    fn rewind_below_floor(&mut self, down: i64) {
        let k = self.points.partition_point(|p| p.down < down);
        if k > 0 {
            let last_up = self.points[k - 1].up;
            self.superseded_up = Some(self.superseded_up.map_or(last_up, |s| s.max(last_up)));
            self.points.drain(..k);
        }
        if let Some((fu, _)) = self.floor {
            self.floor = Some((fu, down));
        }
    }

    /// `(up, down)` is older history than the first point written after
    /// `down`, which therefore starts a newer session: without noting it,
    /// an older point added later would read as a delta-change pair with it.
    fn note_stale(&mut self, up: i64, down: i64) {
        self.superseded_up = Some(self.superseded_up.map_or(up, |s| s.max(up)));
        let pts = &mut self.points;
        let k = pts.partition_point(|p| p.down <= down);
        if k > 0 && pts[k - 1].down == down {
            return; // corrupt
        }
        if let Some(p) = pts.get_mut(k) {
            p.before = with_older(p.before, up, down, down);
        }
    }

    /// Brings the partition back within `bound`; `at` is the new point.
    fn relieve(&mut self, at: usize, bound: usize) {
        // Cheap local pass first: an in-order append makes the previous last
        // point redundant most of the time.
        self.prune_at(at + 1);
        self.prune_at(at);
        if at > 0 {
            self.prune_at(at - 1);
        }
        if self.points.len() > bound && self.since_compaction >= (bound / 8).max(1) {
            self.compact();
        }
        while self.points.len() > bound {
            if let Some(p) = self.points.pop_front() {
                self.floor = Some((p.up, p.down));
            }
        }
    }

    /// Drops the point at `i` if it is redundant.
    fn prune_at(&mut self, i: usize) {
        let pts = &mut self.points;
        if i == 0 || i + 1 >= pts.len() || !redundant(&pts[i - 1], &pts[i], &pts[i + 1]) {
            return;
        }
        let d = pts[i].delta();
        pts.remove(i);
        pts[i].before = Gap::Lossy(d);
    }

    /// Drops every redundant point, in one pass.
    fn compact(&mut self) {
        let old = std::mem::take(&mut self.points);
        let mut out: VecDeque<Point> = VecDeque::with_capacity(old.len());
        for mut z in old {
            while out.len() >= 2 {
                let (x, y) = (&out[out.len() - 2], &out[out.len() - 1]);
                if !redundant(x, y, &z) {
                    break;
                }
                z.before = Gap::Lossy(y.delta());
                out.pop_back();
            }
            out.push_back(z);
        }
        self.points = out;
        self.since_compaction = 0;
    }

    fn translate(&self, committed: i64) -> Option<i64> {
        let pts = &self.points;
        let (first, last) = (pts.front()?, pts.back()?);
        if committed < first.up {
            return None;
        }
        if committed >= last.up {
            if committed > last.up && self.superseded_up.is_some_and(|s| s >= committed) {
                // A newer session has not mirrored `committed` again yet:
                // the next record it writes is not the only copy.
                return None;
            }
            return translate(&[(last.up, last.down)], committed);
        }
        // first.up <= committed < last.up: a and b exist.
        let i = pts.partition_point(|p| p.up <= committed) - 1;
        let (a, b) = (&pts[i], &pts[i + 1]);
        if a.up == committed {
            return Some(a.down);
        }
        match b.before {
            Gap::Exact => translate(&[(a.up, a.down), (b.up, b.down)], committed),
            Gap::Lossy(d) if a.delta() == d && b.delta() == d => committed.checked_add(d),
            Gap::Lossy(_) | Gap::Unknown => None,
            // In the older history, `committed` lay in a run from `a` (its
            // older copy comes first) or just before that history's next
            // point, which can then only be `b`'s source offset: `b`'s copy.
            Gap::Rewound { down, .. } if down <= a.down => None,
            Gap::Rewound { up, down, .. } if down - up == a.delta() => {
                committed.checked_add(a.delta())
            }
            Gap::Rewound { .. } => Some(b.down),
        }
    }
}

/// Offset-sync points of every mirrored partition, bounded in memory, and
/// the translation of committed source offsets to target offsets.
///
/// Feed it the points read from `kmirror-offset-syncs.<source>.internal`
/// (before the first checkpoint) and then those the replicator writes.
/// Answers are exact once every point of a partition up to the committed
/// offset has been added; points of one partition should be added in the
/// order the replicator wrote them (the internal topic keeps that order), as
/// a gap whose points have not arrived yet reads like a run.
#[derive(Debug, Clone)]
pub struct OffsetSyncStore {
    max_points: usize,
    partitions: BTreeMap<String, BTreeMap<i32, Partition>>,
}

impl OffsetSyncStore {
    /// An empty store that keeps at most `max_points_per_partition` points
    /// per partition (at least 2: a bound below 2 is raised to 2).
    pub fn new(max_points_per_partition: usize) -> Self {
        Self {
            max_points: max_points_per_partition.max(2),
            partitions: BTreeMap::new(),
        }
    }

    /// Adds a point: source offset `upstream` of `topic`/`partition` was
    /// written at target offset `downstream`.
    ///
    /// Any order; duplicates are ignored, and so are negative offsets,
    /// points at or below the last point dropped by the bound, and points
    /// that older history contradicts (see the module documentation on
    /// rewinds). When the partition goes over the bound, redundant points
    /// are dropped first, then the oldest ones.
    pub fn add(&mut self, topic: &str, partition: i32, upstream: i64, downstream: i64) {
        if upstream < 0 || downstream < 0 {
            return;
        }
        let bound = self.max_points;
        if !self.partitions.contains_key(topic) {
            self.partitions.insert(topic.to_owned(), BTreeMap::new());
        }
        let Some(by_partition) = self.partitions.get_mut(topic) else {
            return;
        };
        let part = by_partition.entry(partition).or_default();
        part.add(upstream, downstream, bound);
        if part.points.is_empty() && part.floor.is_none() && part.superseded_up.is_none() {
            by_partition.remove(&partition);
        }
        if by_partition.is_empty() {
            self.partitions.remove(topic);
        }
    }

    /// Translates the committed source offset `committed` (the next offset
    /// the group would read) of `topic`/`partition` to the target offset to
    /// resume from, with the rules of [`translate`]; `None` when the store
    /// cannot tell (no point, before the oldest kept point, beyond the last
    /// point + 1, or in a gap whose points were dropped).
    pub fn translate(&self, topic: &str, partition: i32, committed: i64) -> Option<i64> {
        self.partitions
            .get(topic)?
            .get(&partition)?
            .translate(committed)
    }

    /// Drops the points of every topic `keep` says no to (a topic deleted
    /// or no longer mirrored): the store holds only what translation can
    /// still need. Returns how many topics were dropped.
    pub fn retain_topics(&mut self, keep: impl Fn(&str) -> bool) -> usize {
        let before = self.partitions.len();
        self.partitions.retain(|t, _| keep(t));
        before - self.partitions.len()
    }

    /// Number of points held, over all partitions.
    pub fn len(&self) -> usize {
        self.partitions
            .values()
            .flat_map(BTreeMap::values)
            .map(|p| p.points.len())
            .sum()
    }

    /// True when the store holds no point.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The (source topic, partition) pairs that hold points, sorted.
    pub fn partitions(&self) -> impl Iterator<Item = (&str, i32)> + '_ {
        self.partitions.iter().flat_map(|(t, m)| {
            m.iter()
                .filter(|(_, part)| !part.points.is_empty())
                .map(move |(&p, _)| (t.as_str(), p))
        })
    }
}

/// Translates the committed source offset `committed` (the next offset a
/// group would read) over one partition's points, sorted by strictly
/// increasing upstream offset, each an `(upstream, downstream)` pair written
/// by the point rules of this module.
///
/// Returns the target offset of the first mirrored record whose source
/// offset is `>= committed`:
/// - `committed` in a run `[a, b]` of constant delta `d` (ends included):
///   `committed + d`;
/// - strictly between `a` (end of a run) and `b` (start of the next, another
///   delta): `b`'s target offset;
/// - `committed` == first upstream: its downstream; before it: `None`;
/// - `committed` == last upstream + 1 (the group read everything mirrored up
///   to the last point): last downstream + 1, the target offset of the next
///   record mirrored; further on: `None` (it is unknown whether everything
///   before `committed` was mirrored).
///
/// Never ahead of the true answer where the points follow the rules; `None`
/// on empty, unsorted or overflowing input.
pub fn translate(points: &[(i64, i64)], committed: i64) -> Option<i64> {
    let (&(first_up, _), &(last_up, last_down)) = (points.first()?, points.last()?);
    if committed < first_up {
        return None;
    }
    if committed > last_up {
        return if Some(committed) == last_up.checked_add(1) {
            last_down.checked_add(1)
        } else {
            None
        };
    }
    let i = points
        .partition_point(|&(up, _)| up <= committed)
        .checked_sub(1)?;
    let (a, ta) = points[i];
    if a == committed {
        return Some(ta);
    }
    let &(b, tb) = points.get(i + 1)?;
    if b <= committed {
        return None; // not sorted
    }
    let (da, db) = (ta.checked_sub(a)?, tb.checked_sub(b)?);
    if da == db {
        committed.checked_add(da)
    } else {
        Some(tb)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn store_of(points: &[(i64, i64)]) -> OffsetSyncStore {
        let mut s = OffsetSyncStore::new(1000);
        for &(u, d) in points {
            s.add("t", 0, u, d);
        }
        s
    }

    /// Both the pure function and a store over `points` give `want` at `c`.
    fn check(points: &[(i64, i64)], c: i64, want: Option<i64>) {
        assert_eq!(translate(points, c), want, "pure, C = {c}, {points:?}");
        assert_eq!(
            store_of(points).translate("t", 0, c),
            want,
            "store, C = {c}, {points:?}"
        );
    }

    #[test]
    fn empty_translates_nothing() {
        assert_eq!(translate(&[], 0), None);
        let s = OffsetSyncStore::new(10);
        assert!(s.is_empty());
        assert_eq!(s.len(), 0);
        assert_eq!(s.translate("t", 0, 0), None);
    }

    #[test]
    fn inside_a_run_the_delta_applies_ends_included() {
        let pts = [(10, 110), (20, 120)];
        check(&pts, 10, Some(110));
        check(&pts, 15, Some(115));
        check(&pts, 20, Some(120));
    }

    #[test]
    fn source_gap_between_pair_goes_to_the_next_run() {
        // 0..=9 at 0..=9, source 10..=14 absent, 15..=20 at 10..=15.
        let pts = [(0, 0), (9, 9), (15, 10), (20, 15)];
        check(&pts, 9, Some(9));
        check(&pts, 10, Some(10));
        check(&pts, 12, Some(10));
        check(&pts, 14, Some(10));
        check(&pts, 15, Some(10));
        check(&pts, 17, Some(12));
    }

    #[test]
    fn foreign_target_records_between_pair_are_skipped() {
        // 0..=9 at 0..=9, foreign records at 10..=14, 10..=20 at 15..=25.
        let pts = [(0, 0), (9, 9), (10, 15), (20, 25)];
        check(&pts, 5, Some(5));
        check(&pts, 9, Some(9));
        check(&pts, 10, Some(15));
        check(&pts, 20, Some(25));
    }

    #[test]
    fn first_point_and_before_it() {
        // The target already held 100 records when mirroring began at 5.
        let pts = [(5, 100), (8, 103)];
        check(&pts, 4, None);
        check(&pts, 0, None);
        check(&pts, -1, None);
        check(&pts, 5, Some(100));
        check(&pts, 6, Some(101));
    }

    #[test]
    fn after_the_last_point() {
        let pts = [(5, 100), (8, 103)];
        check(&pts, 9, Some(104));
        check(&pts, 10, None);
        check(&pts, i64::MAX, None);
        // A single point.
        check(&[(7, 3)], 7, Some(3));
        check(&[(7, 3)], 8, Some(4));
        check(&[(7, 3)], 9, None);
        check(&[(7, 3)], 6, None);
    }

    #[test]
    fn last_point_ending_a_run_then_the_next_run_arrives() {
        // Only the first half of a delta-change pair is known yet: C just
        // after it maps to the slot right after it, which is not ahead of
        // the truth (the next mirrored record goes there or later).
        let mut s = store_of(&[(0, 0), (9, 9)]);
        assert_eq!(s.translate("t", 0, 10), Some(10));
        // The second half says a source gap and foreign records came first.
        s.add("t", 0, 15, 12);
        assert_eq!(s.translate("t", 0, 10), Some(12));
        assert_eq!(s.translate("t", 0, 16), Some(13));
        assert_eq!(s.translate("t", 0, 17), None);
    }

    #[test]
    fn pure_function_survives_bad_input() {
        // Unsorted: some answer or None, no panic.
        for c in -2..13 {
            let _ = translate(&[(10, 0), (5, 3), (7, 1)], c);
        }
        assert_eq!(translate(&[(10, 0), (5, 3)], 7), None);
        assert_eq!(translate(&[(i64::MAX, i64::MAX)], i64::MAX), Some(i64::MAX));
        assert_eq!(translate(&[(0, i64::MAX)], 1), None);
        assert_eq!(translate(&[(-5, i64::MAX), (i64::MAX, -5)], 0), None);
    }

    #[test]
    fn duplicates_partitions_len_and_listing() {
        let mut s = OffsetSyncStore::new(100);
        s.add("b", 1, 0, 10);
        s.add("b", 1, 0, 10);
        s.add("a", 2, 5, 5);
        s.add("a", 0, 1, 1);
        s.add("a", 0, -1, 1); // negative: ignored
        assert_eq!(s.len(), 3);
        assert!(!s.is_empty());
        let parts: Vec<_> = s.partitions().collect();
        assert_eq!(parts, vec![("a", 0), ("a", 2), ("b", 1)]);
        assert_eq!(s.translate("b", 1, 0), Some(10));
        assert_eq!(s.translate("a", 2, 5), Some(5));
        assert_eq!(s.translate("a", 1, 5), None);
        assert_eq!(s.translate("c", 0, 0), None);
    }

    #[test]
    fn redundant_points_go_first_when_the_bound_is_reached() {
        // One run, a point every 10 records: only the ends are needed.
        let mut s = OffsetSyncStore::new(4);
        for k in 0..=100 {
            s.add("t", 0, k * 10, k * 10 + 7);
            assert!(s.len() <= 4);
        }
        assert_eq!(s.translate("t", 0, 0), Some(7));
        assert_eq!(s.translate("t", 0, 555), Some(562));
        assert_eq!(s.translate("t", 0, 1001), Some(1008));
    }

    #[test]
    fn the_bound_drops_the_oldest_points() {
        // Every record changes the delta (a gap of one after each).
        let mut s = OffsetSyncStore::new(4);
        for k in 0..10 {
            s.add("t", 0, 2 * k, k);
        }
        assert_eq!(s.len(), 4);
        // Kept: source 12, 14, 16, 18.
        assert_eq!(s.translate("t", 0, 11), None);
        assert_eq!(s.translate("t", 0, 12), Some(6));
        assert_eq!(s.translate("t", 0, 13), Some(7));
        assert_eq!(s.translate("t", 0, 19), Some(10));
        // A late point below the dropped ones is ignored.
        s.add("t", 0, 3, 1);
        assert_eq!(s.len(), 4);
        assert_eq!(s.translate("t", 0, 3), None);
    }

    #[test]
    fn out_of_order_excursion_is_exact_without_the_bound() {
        // Run at delta 0 to 10, source gap 11..=14 with 9 foreign records
        // (delta +5) to 20, then a source gap of 5 (delta back to 0).
        let all = [(0, 0), (10, 10), (15, 20), (20, 25), (26, 26), (30, 30)];
        let mut s = OffsetSyncStore::new(100);
        for &i in &[0, 1, 4, 5, 2, 3] {
            s.add("t", 0, all[i].0, all[i].1);
        }
        for c in 0..=31 {
            assert_eq!(s.translate("t", 0, c), translate(&all, c), "C = {c}");
        }
        assert_eq!(s.translate("t", 0, 12), Some(20));
        assert_eq!(s.translate("t", 0, 23), Some(26));
    }

    #[test]
    fn out_of_order_under_pressure_is_never_ahead() {
        // (10, 10) is dropped as redundant between (0, 0) and (26, 26)
        // before the excursion arrives: the store must then say None, not
        // read (0, 0)..(15, 20) as a delta-change pair.
        let all = [(0, 0), (10, 10), (15, 20), (20, 25), (26, 26), (30, 30)];
        let mut s = OffsetSyncStore::new(2);
        for &i in &[0, 1, 4] {
            s.add("t", 0, all[i].0, all[i].1);
        }
        assert_eq!(s.len(), 2);
        let mut s = OffsetSyncStore::new(3);
        for &i in &[0, 1, 4, 2, 3, 5] {
            s.add("t", 0, all[i].0, all[i].1);
            assert!(s.len() <= 3);
        }
        for c in 0..=31 {
            if let Some(got) = s.translate("t", 0, c) {
                assert_eq!(Some(got), translate(&all, c), "C = {c}");
            }
        }
    }

    #[test]
    fn rewind_newer_session_wins() {
        // Session 1: source 0..=150 at 900..=1050. A crash, and session 2
        // (at-least-once) mirrors again from source 100, at 1051 on.
        let mut s = OffsetSyncStore::new(100);
        s.add("t", 0, 0, 900);
        s.add("t", 0, 150, 1050);
        s.add("t", 0, 100, 1051);
        s.add("t", 0, 200, 1151);
        assert_eq!(s.len(), 3);
        // Before the rewind, the old copies: the old run still holds.
        assert_eq!(s.translate("t", 0, 0), Some(900));
        assert_eq!(s.translate("t", 0, 50), Some(950));
        // From the rewind on, the new copies: nothing after is missed.
        assert_eq!(s.translate("t", 0, 100), Some(1051));
        assert_eq!(s.translate("t", 0, 151), Some(1102));
        assert_eq!(s.translate("t", 0, 201), Some(1152));
        // A late point of session 1 is ignored.
        s.add("t", 0, 120, 1020);
        assert_eq!(s.translate("t", 0, 120), Some(1071));
        // Same, in the other order.
        let mut s = OffsetSyncStore::new(100);
        for (u, d) in [(200, 1151), (100, 1051), (150, 1050), (0, 900), (120, 1020)] {
            s.add("t", 0, u, d);
        }
        assert_eq!(s.translate("t", 0, 50), Some(950));
        assert_eq!(s.translate("t", 0, 120), Some(1071));
        assert_eq!(s.translate("t", 0, 151), Some(1102));
    }

    #[test]
    fn no_tail_answer_while_a_rewound_session_catches_up() {
        // Session 1 mirrored 0..=150 at 900..=1050; session 2 rewound to 100
        // and has mirrored 100..=120 again so far.
        let mut s = OffsetSyncStore::new(100);
        for (u, d) in [(0, 900), (150, 1050), (100, 1051), (120, 1071)] {
            s.add("t", 0, u, d);
        }
        assert_eq!(s.translate("t", 0, 60), Some(960));
        assert_eq!(s.translate("t", 0, 120), Some(1071));
        // 121..=150 are only at 1021..=1050 yet: 1072 would skip them if
        // session 2 stopped now.
        assert_eq!(s.translate("t", 0, 121), None);
        s.add("t", 0, 150, 1101);
        assert_eq!(s.translate("t", 0, 151), Some(1102));
    }

    #[test]
    fn rewind_of_a_delta_change_pair_keeps_the_old_answer() {
        // Session 1: 0..=9 at 0..=9, 20..=30 at 10..=20. Session 2 rewinds
        // to 25 and writes it at 21.
        let mut s = OffsetSyncStore::new(100);
        for (u, d) in [(0, 0), (9, 9), (20, 10), (30, 20), (25, 21)] {
            s.add("t", 0, u, d);
        }
        assert_eq!(s.translate("t", 0, 9), Some(9));
        assert_eq!(s.translate("t", 0, 15), Some(10));
        // Before the rewind point, the old copies (source 22 at 12).
        assert_eq!(s.translate("t", 0, 22), Some(12));
        assert_eq!(s.translate("t", 0, 25), Some(21));
        // 26..=30 are only at 16..=20 until session 2 mirrors them again.
        assert_eq!(s.translate("t", 0, 26), None);
        s.add("t", 0, 30, 26);
        assert_eq!(s.translate("t", 0, 26), Some(22));
        assert_eq!(s.translate("t", 0, 31), Some(27));
    }

    #[test]
    fn equal_gap_and_foreign_records_hide_a_change() {
        // Known limit of the point rules: source 11..=14 absent and 4
        // foreign records at target 11..=14 leave the delta unchanged, so no
        // point marks it. C = 12 maps to 12 where the first record at or
        // after it (source 15) is at 15: behind, never ahead (the group
        // reads the 3 foreign records, no mirrored record twice).
        let pts = [(0, 0), (20, 20)];
        assert_eq!(translate(&pts, 12), Some(12));
        assert!(translate(&pts, 12) <= Some(15));
    }

    #[test]
    fn a_session_start_needs_the_previous_last_record() {
        // Session 1 mirrored 0..=1500 at 0..=1500; its last point was the
        // periodic (1000, 1000) when it crashed. While it was down another
        // producer wrote 10 records; session 2 resumes at 1501 → 1511.
        let without = [(0, 0), (1000, 1000), (1501, 1511)];
        // The rules read (1000, 1000)..(1501, 1511) as a delta-change pair:
        // 1200 maps to 1511 though source 1200 is at 1200 (ahead: loss).
        assert_eq!(translate(&without, 1200), Some(1511));
        // With the last record of session 1 written first, it is exact.
        let with = [(0, 0), (1000, 1000), (1500, 1500), (1501, 1511)];
        assert_eq!(translate(&with, 1200), Some(1200));
        assert_eq!(translate(&with, 1501), Some(1511));
    }

    /// A simulated mirrored partition.
    struct Sim {
        /// (source offset, target offset) of each mirrored record, in target
        /// order (a rewound session mirrors some source records again).
        map: Vec<(i64, i64)>,
        /// The points the replicator writes, in the order it writes them.
        points: Vec<(i64, i64)>,
        /// A later session mirrored again what an earlier one had.
        rewound: bool,
        /// Sessions (clean stop, then an at-least-once restart).
        sessions: usize,
    }

    /// Foreign records written to the target before a record whose source
    /// offset follows a gap of `gap`: never equal to a non-zero gap (that
    /// would hide the change, see `equal_gap_and_foreign_records_hide_a_change`).
    fn foreign(rng: &mut StdRng, p: f64, gap: i64) -> i64 {
        let mut f = if rng.random_bool(p) {
            rng.random_range(1..4)
        } else {
            0
        };
        if gap > 0 && f == gap {
            f += 1;
        }
        f
    }

    fn simulate(rng: &mut StdRng) -> Sim {
        const PROBS: [f64; 4] = [0.0, 0.01, 0.1, 0.5];
        let n = if rng.random_bool(0.1) {
            rng.random_range(1000..4000)
        } else {
            rng.random_range(1..300)
        };
        let p_gap = PROBS[rng.random_range(0..PROBS.len())];
        let p_foreign = PROBS[rng.random_range(0..PROBS.len())];
        let every = [1usize, 2, 7, 50, 1000][rng.random_range(0..5)];
        // Source offsets, with gaps.
        let mut src: Vec<i64> = Vec::with_capacity(n);
        let mut s: i64 = rng.random_range(0..100);
        for k in 0..n {
            if k > 0 && rng.random_bool(p_gap) {
                s += if rng.random_bool(0.1) {
                    rng.random_range(1..1000)
                } else {
                    rng.random_range(1..4)
                };
            }
            src.push(s);
            s += 1;
        }
        // One session, or up to three: each stops cleanly somewhere and the
        // next (at-least-once) resumes at or before where it stopped; the
        // last one mirrors to the end.
        let mut sessions: Vec<(usize, usize)> = Vec::new();
        let count = if n >= 2 && rng.random_bool(0.25) {
            rng.random_range(2..=3)
        } else {
            1
        };
        let mut from = 0;
        for k in 0..count {
            let to = if k + 1 == count {
                n
            } else {
                rng.random_range(from + 1..=n)
            };
            sessions.push((from, to));
            from = rng.random_range(0..=to.min(n - 1));
        }
        // Sometimes the target already holds foreign records.
        let mut next_t: i64 = if rng.random_bool(0.5) {
            0
        } else {
            rng.random_range(1..100)
        };
        let mut map: Vec<(i64, i64)> = Vec::new();
        let mut points = Vec::new();
        for &(from, to) in &sessions {
            let mut since = 0usize;
            for (k, &s) in src.iter().enumerate().take(to).skip(from) {
                // Negative after a rewind: no gap to hide.
                let gap = match map.last() {
                    Some(&(ps, _)) => s - ps - 1,
                    None => 0,
                };
                next_t += foreign(rng, p_foreign, gap);
                let cur = (s, next_t);
                next_t += 1;
                if k == from {
                    points.push(cur); // first acknowledged record
                } else {
                    let prev = *map.last().expect("not the first record");
                    if cur.1 - cur.0 != prev.1 - prev.0 {
                        points.push(prev);
                        points.push(cur);
                    }
                }
                map.push(cur);
                since += 1;
                if since % every == 0 {
                    points.push(cur);
                }
                if rng.random_bool(0.01) {
                    points.push(cur); // idle for a while
                }
            }
            points.push(*map.last().expect("a record")); // idle at the end
        }
        Sim {
            map,
            points,
            rewound: sessions.windows(2).any(|w| w[1].0 < w[0].1),
            sessions: sessions.len(),
        }
    }

    /// Brute force: the largest target offset from which a consumer reads
    /// every source record at or after `c` (with one copy of each, the
    /// target offset of the first one at or after `c`); after the last
    /// record, the slot after the last one only for last + 1.
    struct Truth {
        /// Source offsets, ascending, with the minimum over the latest
        /// copies of the records from there on.
        suffix_min: Vec<(i64, i64)>,
        last_t: i64,
    }

    impl Truth {
        fn new(map: &[(i64, i64)]) -> Self {
            let mut latest: BTreeMap<i64, i64> = BTreeMap::new();
            for &(s, t) in map {
                latest.insert(s, t);
            }
            let mut suffix_min: Vec<(i64, i64)> = latest.into_iter().collect();
            for k in (0..suffix_min.len().saturating_sub(1)).rev() {
                suffix_min[k].1 = suffix_min[k].1.min(suffix_min[k + 1].1);
            }
            let last_t = map.iter().map(|&(_, t)| t).max().unwrap_or(-1);
            Self { suffix_min, last_t }
        }

        fn at(&self, c: i64) -> Option<i64> {
            let i = self.suffix_min.partition_point(|&(s, _)| s < c);
            if let Some(&(_, t)) = self.suffix_min.get(i) {
                return Some(t);
            }
            let &(max_s, _) = self.suffix_min.last()?;
            (c == max_s + 1).then_some(self.last_t + 1)
        }
    }

    #[test]
    fn random_partitions_translate_exactly_or_not_at_all() {
        let seed: u64 = std::env::var("KMIRROR_TEST_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| rand::rng().random());
        let mut rng = StdRng::seed_from_u64(seed);
        const TOPICS: [&str; 2] = ["orders", "payments"];
        for case in 0..600 {
            let sims: Vec<Sim> = (0..rng.random_range(1..=3))
                .map(|_| simulate(&mut rng))
                .collect();
            let small = rng.random_bool(0.3);
            let bound = if small {
                rng.random_range(2..=12)
            } else {
                1_000_000
            };
            let shuffled = rng.random_bool(0.5);
            let mut feed: Vec<(usize, i64, i64)> = sims
                .iter()
                .enumerate()
                .flat_map(|(p, s)| s.points.iter().map(move |&(u, t)| (p, u, t)))
                .collect();
            if shuffled {
                feed.shuffle(&mut rng);
            }
            let mut store = OffsetSyncStore::new(bound);
            for &(p, u, t) in &feed {
                store.add(TOPICS[p % 2], p as i32, u, t);
                let part = &store.partitions[TOPICS[p % 2]][&(p as i32)];
                assert!(part.points.len() <= bound, "seed {seed} case {case}");
            }
            assert!(store.len() <= bound * sims.len());
            for (p, sim) in sims.iter().enumerate() {
                let (topic, partition) = (TOPICS[p % 2], p as i32);
                let ctx = format!(
                    "seed {seed} case {case} partition {p} bound {bound} shuffled {shuffled} rewound {}",
                    sim.rewound
                );
                let distinct: BTreeSet<(i64, i64)> = sim.points.iter().copied().collect();
                let sorted: Vec<(i64, i64)> = distinct.iter().copied().collect();
                let truncated = distinct.len() > bound;
                let first = sim.map[0].0;
                let last = sim.map.iter().map(|&(s, _)| s).max().expect("records");
                let kept_first = store.partitions[topic][&partition]
                    .points
                    .front()
                    .map_or(i64::MAX - 1, |p| p.up);
                let truth = Truth::new(&sim.map);
                let mut cs: Vec<i64> = Vec::new();
                if last - first <= 3000 {
                    cs.extend(first - 3..=last + 3);
                } else {
                    for &(u, _) in &sorted {
                        cs.extend([u - 1, u, u + 1]);
                    }
                    cs.extend((0..300).map(|_| rng.random_range(first - 3..=last + 3)));
                }
                cs.extend([kept_first - 1, kept_first, kept_first + 1]);
                for c in cs {
                    let want = truth.at(c);
                    let covered = first <= c && c <= last + 1;
                    if !sim.rewound {
                        // The pure function over all points: exact where
                        // covered.
                        let pure = translate(&sorted, c);
                        let expected = if covered { want } else { None };
                        assert_eq!(pure, expected, "pure: {ctx} C {c}");
                    }
                    let got = store.translate(topic, partition, c);
                    if let Some(g) = got {
                        // Never ahead of the truth (that would lose records).
                        assert!(Some(g) <= want, "ahead: {ctx} C {c}: {g} > {want:?}");
                        // Exact, except that points of rewound sessions that
                        // arrive shuffled into a full partition can leave an
                        // older copy (behind: duplicates, no loss).
                        if !(sim.rewound && shuffled && truncated) {
                            assert_eq!(got, want, "store: {ctx} C {c}");
                        }
                    }
                    // Shuffled, a third session can hide which older point
                    // follows a point of the second: the store says None.
                    let must = if !truncated && (!shuffled || sim.sessions <= 2) {
                        covered
                    } else if !shuffled && !sim.rewound {
                        kept_first <= c && c <= last + 1
                    } else {
                        false
                    };
                    if must {
                        assert!(got.is_some(), "store None: {ctx} C {c}");
                    }
                }
            }
        }
    }
}
