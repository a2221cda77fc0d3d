//! Offsets: the MM2 wire layouts of kmirror's internal records
//! (checkpoints, heartbeats, offset syncs), the offset-sync store with
//! exact translation, and the checkpoint loop.

pub mod checkpoint;
pub mod codec;
pub mod store;
