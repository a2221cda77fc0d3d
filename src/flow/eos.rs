//! Exactly-once without broker transactions: the resume position of a
//! partition is derived from the target, not from the source group's commit.
//!
//! On every assignment, for each partition:
//! 1. take the latest offset-sync point `(s, t)` (source offset `s` was
//!    written at target offset `t`): from `kmirror-offset-syncs.<source>.internal`
//!    (every process's points) and from this process's own acknowledgements;
//! 2. read the target records after `t` and the source records after `s`
//!    side by side: a target record equal to the next source record (key,
//!    value, timestamp, headers) is that record, already mirrored; one that
//!    is not is a record some other producer wrote, and is passed over;
//! 3. resume at the first source record not found in the target.
//!
//! Record bytes are not altered (no extra header). This covers a crash,
//! kill -9, restart and a rebalance with a clean revoke, because the
//! idempotent producer writes each partition in order and one process owns
//! a partition at a time. It cannot cover a hung ("zombie") process that
//! still produces after its partitions moved: such writes are detected
//! afterwards (`kmirror_errors_total{stage="foreign_writer"}` and a WARN)
//! but not prevented. Target retention shorter than the time since the last
//! sync point is not supported (the points are written every
//! [`super::SYNC_EVERY`] records, so the tail is short).

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};

use super::PROVENANCE_HEADER;
use crate::config::ClusterConfig;
use crate::kafka::{read_range as read, reader, Follower, KContext};
use crate::offsets::codec::OffsetSync;

const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Offset-sync points as (source offset, target offset) pairs.
pub type Points = Vec<(i64, i64)>;

/// Derives resume positions; owns two group-less readers, made anew after
/// a failed read (a client that saw its broker restart can stay stuck on
/// `AllBrokersDown` for minutes while a fresh one reads at once).
pub struct Resolver {
    source_cfg: ClusterConfig,
    target_cfg: ClusterConfig,
    source: BaseConsumer<KContext>,
    target: BaseConsumer<KContext>,
    /// Source records with this provenance header value are never mirrored.
    skip_alias: Option<String>,
    syncs_follower: Option<Follower>,
    syncs: HashMap<(String, i32), (i64, i64)>,
}

fn headers_of(m: &OwnedMessage) -> Vec<(String, Option<Vec<u8>>)> {
    m.headers()
        .map(|hs| {
            hs.iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default()
}

/// True when target record `t` is the mirror of source record `s`.
pub fn same_record(s: &OwnedMessage, t: &OwnedMessage) -> bool {
    if s.key() != t.key() || s.payload() != t.payload() {
        return false;
    }
    if s.timestamp().to_millis() != t.timestamp().to_millis() {
        return false;
    }
    let sh = headers_of(s);
    let mut th = headers_of(t);
    if th.len() == sh.len() + 1 && th.last().is_some_and(|(k, _)| k == PROVENANCE_HEADER) {
        th.pop();
    }
    sh == th
}

impl Resolver {
    /// Connects the readers.
    pub fn new(
        source: &ClusterConfig,
        target: &ClusterConfig,
        skip_alias: Option<String>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            source_cfg: source.clone(),
            target_cfg: target.clone(),
            source: reader(source, "kmirror-eos-reader")?,
            target: reader(target, "kmirror-eos-reader")?,
            skip_alias,
            syncs_follower: None,
            syncs: HashMap::new(),
        })
    }

    /// New readers, after a failed read.
    fn reconnect(&mut self) {
        if let Ok(c) = reader(&self.source_cfg, "kmirror-eos-reader") {
            self.source = c;
        }
        if let Ok(c) = reader(&self.target_cfg, "kmirror-eos-reader") {
            self.target = c;
        }
    }

    /// Reads every offset-sync point persisted so far; returns the latest
    /// per partition.
    pub fn load_syncs(
        &mut self,
        topic: &str,
    ) -> anyhow::Result<HashMap<(String, i32), (i64, i64)>> {
        self.syncs_follower = Some(Follower::tail(topic, crate::offsets::SYNC_READ_WINDOW));
        if let Err(e) = self.catch_up_syncs() {
            self.reconnect();
            anyhow::bail!("cannot read {topic} on the target: {e}");
        }
        Ok(self.syncs.clone())
    }

    fn catch_up_syncs(&mut self) -> Result<(), String> {
        let Some(f) = self.syncs_follower.as_mut() else {
            return Ok(());
        };
        let syncs = &mut self.syncs;
        f.poll_chunks(&self.target, 50_000, |recs| {
            for m in recs {
                if let (Some(k), Some(v)) = (m.key(), m.payload()) {
                    if let Ok(s) = OffsetSync::decode(k, v) {
                        // The last written wins: after a target topic was
                        // deleted and created again, its new points have
                        // smaller target offsets than the old ones. (An
                        // older point is always safe to start from: the
                        // walk is only longer.)
                        syncs.insert(
                            (s.topic, s.partition),
                            (s.upstream_offset, s.downstream_offset),
                        );
                    }
                }
            }
        })?;
        Ok(())
    }

    /// The source offset to resume `partition` from, or `None` when the
    /// target holds nothing of it (start from the committed offset); with
    /// the offset-sync points of the records the walk matched (see
    /// [`walk`]), which a process killed before it persisted them had not
    /// written.
    pub fn resume(
        &mut self,
        source_topic: &str,
        target_topic: &str,
        partition: i32,
        own_last_sync: Option<(i64, i64)>,
    ) -> Result<Option<(i64, Points)>, String> {
        let r = self.try_resume(source_topic, target_topic, partition, own_last_sync);
        if r.is_err() {
            self.reconnect();
        }
        r
    }

    /// The target records `[t_from, thi)` and the source records from
    /// `s_from` that the walk may need (the source side of a walk is at
    /// most about twice the target side: records skipped, offsets without
    /// records).
    fn read_both(
        &self,
        source_topic: &str,
        target_topic: &str,
        partition: i32,
        (s_from, shi): (i64, i64),
        (t_from, thi): (i64, i64),
    ) -> Result<(Vec<OwnedMessage>, Vec<OwnedMessage>), String> {
        let targets = read(&self.target, target_topic, partition, t_from, thi)?;
        let s_to = shi.min(s_from.saturating_add(targets.len() as i64 * 2 + 1024));
        let sources = if s_from < s_to {
            read(&self.source, source_topic, partition, s_from, s_to)?
        } else {
            Vec::new()
        };
        Ok((targets, sources))
    }

    fn try_resume(
        &mut self,
        source_topic: &str,
        target_topic: &str,
        partition: i32,
        own_last_sync: Option<(i64, i64)>,
    ) -> Result<Option<(i64, Points)>, String> {
        self.catch_up_syncs()?;
        let persisted = self
            .syncs
            .get(&(source_topic.to_string(), partition))
            .copied();
        // This process's own last point, when none is persisted yet.
        let last = persisted.or(own_last_sync);
        let (tlo, thi) = self
            .target
            .fetch_watermarks(target_topic, partition, READ_TIMEOUT)
            .map_err(|e| format!("target watermarks of {target_topic}/{partition}: {e}"))?;
        let (slo, shi) = self
            .source
            .fetch_watermarks(source_topic, partition, READ_TIMEOUT)
            .map_err(|e| format!("source watermarks of {source_topic}/{partition}: {e}"))?;
        // A point at or after the target's end was not written into this
        // target topic (another flow over the same source topic, or a
        // target topic deleted and created again): it is not used.
        let last = last.filter(|&(_, t)| t < thi);
        if thi <= tlo {
            // Empty: never written (start from the group's commit), or
            // everything expired (start after the last point).
            return Ok(last.map(|(s, _)| (s + 1, Vec::new())));
        }
        if let Some((s, t)) = last.filter(|&(_, t)| t >= tlo) {
            // Read from the point itself, to check that the target holds
            // the copy of its source record there.
            let (targets, sources) =
                self.read_both(source_topic, target_topic, partition, (s, shi), (t, thi))?;
            let (tp, sp) = (targets.first(), sources.first());
            let checked = match (tp, sp) {
                (Some(tr), Some(sr)) if tr.offset() == t && sr.offset() == s => {
                    Some(same_record(sr, tr))
                }
                // The point's source record is gone (compaction,
                // retention): it cannot be checked; trust it.
                _ => None,
            };
            if checked != Some(false) {
                let skip = |v: &[OwnedMessage], o: i64| {
                    v.first().is_some_and(|m| m.offset() == o) as usize
                };
                let (ts, ss) = (skip(&targets, t), skip(&sources, s));
                let (pos, points) = walk(
                    &sources[ss..],
                    &targets[ts..],
                    s + 1,
                    self.skip_alias.as_deref(),
                );
                return Ok(Some((pos, points)));
            }
            // Not this target's point: derive the position from the whole
            // target partition instead.
        }
        let (targets, sources) = self.read_both(
            source_topic,
            target_topic,
            partition,
            (slo, shi),
            (tlo, thi),
        )?;
        // Without a point of this target, the target may start anywhere in
        // the source (a target topic deleted and created again): the walk
        // starts at the source record of the first target record found.
        let from = resync(&sources, &targets);
        Ok(Some(walk(
            &sources[from..],
            &targets,
            sources.get(from).map_or(slo, |m| m.offset()),
            self.skip_alias.as_deref(),
        )))
    }
}

/// Where a walk over a whole target partition starts in `sources`: at the
/// source record of the first of the first 100 target records that is one
/// (0 when none is: then nothing of the target is found).
pub fn resync(sources: &[OwnedMessage], targets: &[OwnedMessage]) -> usize {
    targets
        .iter()
        .take(100)
        .find_map(|t| sources.iter().position(|s| same_record(s, t)))
        .unwrap_or(0)
}

/// The walk of step 2: returns the first source offset not in `targets`,
/// and offset-sync points for the matched records: the first and the last
/// (source, target) pair of each run of constant offset delta, the points
/// the delivery path writes (see `offsets::store::translate`).
pub fn walk(
    sources: &[OwnedMessage],
    targets: &[OwnedMessage],
    s_from: i64,
    skip_alias: Option<&str>,
) -> (i64, Points) {
    let mut pos = s_from;
    let mut si = 0;
    let mut points: Points = Vec::new();
    // The last matched pair, when it is not in `points` yet.
    let mut run_end: Option<(i64, i64)> = None;
    for t in targets {
        while si < sources.len() {
            let s = &sources[si];
            let skipped = skip_alias.is_some_and(|a| {
                s.headers().is_some_and(|hs| {
                    hs.iter()
                        .any(|h| h.key == PROVENANCE_HEADER && h.value == Some(a.as_bytes()))
                })
            });
            if skipped {
                pos = s.offset() + 1;
                si += 1;
                continue;
            }
            if same_record(s, t) {
                let pair = (s.offset(), t.offset());
                let prev = run_end.or(points.last().copied());
                match prev {
                    Some(p) if p.1 - p.0 == pair.1 - pair.0 => run_end = Some(pair),
                    _ => {
                        points.extend(run_end.take());
                        points.push(pair);
                    }
                }
                pos = s.offset() + 1;
                si += 1;
            }
            // A target record that is not the next source record was
            // written by someone else: pass over it.
            break;
        }
    }
    points.extend(run_end);
    (pos, points)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders, Timestamp};

    fn rec(offset: i64, key: &str, prov: Option<&str>) -> OwnedMessage {
        let headers = prov.map(|p| {
            OwnedHeaders::new().insert(Header {
                key: PROVENANCE_HEADER,
                value: Some(p),
            })
        });
        OwnedMessage::new(
            Some(key.as_bytes().to_vec()),
            Some(key.as_bytes().to_vec()),
            "t".into(),
            Timestamp::CreateTime(1000),
            0,
            offset,
            headers,
        )
    }

    #[test]
    fn walk_finds_the_first_unmirrored_record() {
        let src = vec![
            rec(10, "a", None),
            rec(11, "b", None),
            rec(13, "c", None),
            rec(14, "d", None),
        ];
        // Target holds a, b, c (offset 12 is a gap on the source).
        let tgt = vec![
            rec(100, "a", None),
            rec(101, "b", None),
            rec(102, "c", None),
        ];
        // Points: the run 10..11 (delta 90), then 13 (delta 89).
        assert_eq!(
            walk(&src, &tgt, 10, None),
            (14, vec![(10, 100), (11, 101), (13, 102)])
        );
        assert_eq!(walk(&src, &[], 10, None), (10, vec![]));
        // A long run of one delta is described by its two ends.
        let src: Vec<_> = (0..5).map(|i| rec(i, &format!("k{i}"), None)).collect();
        let tgt: Vec<_> = (0..5).map(|i| rec(i + 7, &format!("k{i}"), None)).collect();
        assert_eq!(walk(&src, &tgt, 0, None), (5, vec![(0, 7), (4, 11)]));
    }

    #[test]
    fn a_target_that_starts_mid_source_is_found() {
        let src: Vec<_> = (0..6).map(|i| rec(i, &format!("k{i}"), None)).collect();
        // Recreated target: holds source records 3 and 4 only.
        let tgt = vec![rec(0, "k3", None), rec(1, "k4", None)];
        let from = resync(&src, &tgt);
        assert_eq!(from, 3);
        assert_eq!(walk(&src[from..], &tgt, 3, None), (5, vec![(3, 0), (4, 1)]));
        // A complete target starts at the start.
        assert_eq!(resync(&src, &src), 0);
        // Nothing found: the start.
        assert_eq!(resync(&src, &[rec(0, "x", None)]), 0);
    }

    #[test]
    fn walk_passes_over_foreign_target_records() {
        let src = vec![rec(0, "a", None), rec(1, "b", None), rec(2, "c", None)];
        let tgt = vec![
            rec(5, "x", None),
            rec(6, "a", None),
            rec(7, "y", None),
            rec(8, "b", None),
        ];
        assert_eq!(walk(&src, &tgt, 0, None), (2, vec![(0, 6), (1, 8)]));
    }

    #[test]
    fn walk_skips_records_that_came_from_the_target() {
        let src = vec![
            rec(0, "a", None),
            rec(1, "w", Some("west")),
            rec(2, "b", None),
            rec(3, "c", None),
        ];
        let tgt = vec![rec(0, "a", Some("east")), rec(1, "b", Some("east"))];
        assert_eq!(walk(&src, &tgt, 0, Some("west")), (3, vec![(0, 0), (2, 1)]));
    }
}
