//! # kmirror
//!
//! kmirror mirrors Kafka topics from a source cluster to a target cluster:
//! a replacement for MirrorMaker 2 that runs as one small process per
//! replication direction. The parts, each in its own module and task(s),
//! all stopped by one cancellation token ([`app::run`]):
//!
//! - [`config`]: the TOML file, checked as a whole with file/line/key for
//!   every problem; [`policy`] holds the pure naming and filtering rules.
//! - [`discovery`]: lists source topics, applies each flow's rules, and
//!   publishes each flow's mirror set (source → target topic, partitions).
//! - [`flow`]: the replicator — one source consumer (the flow's group) and
//!   one idempotent target producer per flow; a per-partition ledger
//!   ([`flow::ledger`]) decides from the contiguous acknowledged prefix
//!   what may be committed and which offset-sync points may be written;
//!   exactly-once by deriving the resume position from the target
//!   ([`flow::eos`]), never from the group's commit.
//! - [`config_sync`]: creates target topics and keeps configs, partition
//!   counts and topic ACLs in line ([`config_sync::diff`] is pure).
//! - [`offsets`]: MM2 wire layouts, the offset-sync store with exact
//!   translation, the checkpoint loop and the failover commands' helpers.
//! - [`metrics`]: Prometheus metrics and `/metrics`, `/healthz`, `/readyz`.
//! - [`kafka`]: the one place where cluster settings become librdkafka
//!   settings; the client context; the two audited FFI wrappers
//!   (IncrementalAlterConfigs, ACLs).
//! - [`commands`], [`cli`], [`plan`]: the command line.
//! - [`devcluster`]: local nisshi brokers for the demo, the benchmark and
//!   the tests; [`chaos`]: the fault-injection soak that checks the
//!   delivery guarantees from the topics themselves.
//!
//! Data flow: source partition → consumer → producer (same partition of
//! the renamed topic) → delivery report → committed position and
//! offset-sync point → checkpoints translate group offsets with them.

pub mod app;
pub mod backfill;
pub mod chaos;
pub mod cli;
pub mod commands;
pub mod config;
pub mod config_sync;
pub mod cutover;
pub mod devcluster;
pub mod discovery;
pub mod flow;
pub mod kafka;
pub mod leader;
pub mod metrics;
pub mod offsets;
pub mod plan;
pub mod policy;
