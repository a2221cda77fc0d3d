//! # kmirror
//!
//! kmirror mirrors Kafka topics from a source cluster to a target cluster:
//! a replacement for MirrorMaker 2 that runs as one small process per
//! replication direction. The parts, each in its own module:
//!
//! - [`config`]: the TOML file, checked as a whole with file/line/key for
//!   every problem; [`policy`] holds the pure naming and filtering rules.
//! - [`kafka`]: the one place where cluster settings become librdkafka
//!   settings; client context; reachability probe.
//! - [`commands`]: the CLI verbs (`validate`, `run`, `plan`, `offsets`).
//!
//! Data flow and delivery guarantee: see `README.md` and `DESIGN.md`.

pub mod app;
pub mod cli;
pub mod commands;
pub mod config;
pub mod config_sync;
pub mod devcluster;
pub mod discovery;
pub mod flow;
pub mod kafka;
pub mod metrics;
pub mod offsets;
pub mod plan;
pub mod policy;
