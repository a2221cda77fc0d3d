//! Config-sync loop (DESIGN.md part 3): keeps each mirrored topic's settings
//! on the target in line with the source, idempotently.
//!
//! Every `sync_configs_interval` (and once right after discovery finds a new
//! topic) the loop, for each mirrored topic, describes the source topic
//! (partition count and configs), describes the target topic, asks the pure
//! function [`diff::diff`] what to change, applies the resulting
//! [`diff::Action`]s and counts each one in
//! `kmirror_config_sync_operations_total{op,result}` (`op` is
//! [`diff::Action::op`]). `kmirror plan` prints the same actions without
//! applying them.
//!
//! The rules, all in [`diff`]:
//! - a missing target topic is created with the source's partition count and
//!   the synced configs in one CreateTopics call;
//! - only properties explicitly set on the source topic are copied (not
//!   defaults, not broker-level values, not read-only, not sensitive), minus
//!   MM2's default exclusions ([`diff::MM2_DEFAULT_EXCLUDES`]) and the flow's
//!   `config_exclude` regexes;
//! - changed values are SET with IncrementalAlterConfigs; a property is
//!   DELETEd only when kmirror itself set it earlier (the "managed" set that
//!   the loop keeps) and the source no longer has it; properties that
//!   kmirror never set are never touched;
//! - the target partition count is raised when the source grew, never
//!   lowered; topics are never deleted.
//!
//! Topic ACLs follow MM2's rule, in [`acl`]: only ALLOW ACLs are copied,
//! ALLOW WRITE is dropped and ALLOW ALL becomes ALLOW READ.

pub mod acl;
pub mod diff;
pub mod sync;
