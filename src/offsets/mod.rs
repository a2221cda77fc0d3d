//! Offsets: the MM2 wire layouts of kmirror's internal records
//! (checkpoints, heartbeats, offset syncs), the offset-sync store with
//! exact translation, and the checkpoint loop.

pub mod checkpoint;

/// Name of the offset-sync topic on the target.
pub fn offset_syncs_topic(source_alias: &str) -> String {
    format!("kmirror-offset-syncs.{source_alias}.internal")
}

/// How many of the newest offset-sync points a process reads when it
/// starts (checkpoints, exactly-once resume): what a restart reads, and
/// the memory it takes, stay bounded however long kmirror has run. A
/// group committed before the oldest point read gets no checkpoint until
/// it commits again (translation is never ahead); an exactly-once
/// partition whose last point is older derives its position from the
/// target partition itself.
pub const SYNC_READ_WINDOW: i64 = 1_000_000;

/// `retention.ms` of the offset-sync topic when kmirror creates it: 7
/// days, set explicitly so that a cluster whose default keeps records for
/// ever does not grow it without bound.
pub const SYNC_RETENTION_MS: &str = "604800000";

pub mod codec;
pub mod store;
