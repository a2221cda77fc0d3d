//! Offsets: the MM2 wire layouts of kmirror's internal records
//! (checkpoints, heartbeats, offset syncs).

pub mod codec;
pub mod store;
