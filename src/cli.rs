//! Command line: `kmirror run | validate | plan | cutover | backfill | offsets`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// kmirror: mirror Kafka topics from one cluster to another.
#[derive(Debug, Parser)]
#[command(name = "kmirror", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr; `RUST_LOG` sets the filter (default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Output format of reporting commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned text for people.
    Text,
    /// JSON for scripts.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mirror until SIGINT/SIGTERM.
    Run {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Reload the file when it changes (checked every second), as on
        /// SIGHUP.
        #[arg(long)]
        watch: bool,
    },
    /// Check the configuration file; with --connect also reach both clusters.
    Validate {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Also reach both clusters (metadata, cluster id, broker count).
        #[arg(long)]
        connect: bool,
        /// How long to wait for each cluster with --connect.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        timeout: std::time::Duration,
    },
    /// Dry run: topics to mirror, target names, partitions, config changes.
    Plan {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
        /// Only compare with the running configuration's file: what a
        /// reload (SIGHUP) from it to --config would start, stop and
        /// restart. Reads no cluster.
        #[arg(long, value_name = "RUNNING_FILE")]
        reload_from: Option<PathBuf>,
    },
    /// Move consumer groups to the target: wait until their consumers
    /// stopped on the source, their topics are mirrored to the end and
    /// checkpointed, then commit the translated offsets on the target.
    /// Exit 0 done, 1 refused, 2 bad config, 3 timed out (run it again).
    Cutover {
        /// The configuration file (the one `kmirror run` uses).
        #[arg(long, short)]
        config: PathBuf,
        /// A consumer group to move (repeat for several).
        #[arg(long = "group", required = true)]
        groups: Vec<String>,
        /// Records a partition may still lack in the target.
        #[arg(long, default_value_t = 0)]
        max_lag: i64,
        /// Longest total wait before giving up (exit 3).
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        timeout: std::time::Duration,
        /// Check each step once and write nothing (exit 3 at the first
        /// step that is not met yet).
        #[arg(long)]
        dry_run: bool,
    },
    /// Mirror a time window of a flow's topics once into the target and
    /// exit with a report (for a window the target lacks). Exit 0 done,
    /// 1 failed (named), 2 bad config or usage.
    Backfill {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// The flow whose topics (and settings) are used.
        #[arg(long)]
        flow: String,
        /// Records with a timestamp at or after this RFC 3339 time.
        #[arg(long, value_parser = parse_time)]
        from: i64,
        /// Records with a timestamp before this RFC 3339 time (default:
        /// up to each partition's end when the command starts).
        #[arg(long, value_parser = parse_time)]
        until: Option<i64>,
        /// Print the window of each partition, copy nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Consumer offsets on the target: translate, apply (failover).
    Offsets {
        /// What to do with offsets.
        #[command(subcommand)]
        command: OffsetsCommand,
    },
}

/// `kmirror offsets ...`.
#[derive(Debug, Subcommand)]
pub enum OffsetsCommand {
    /// Print the translated target offsets of a group.
    Translate {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// The consumer group.
        #[arg(long)]
        group: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Failover: write the translated offsets to the group on the target.
    Apply {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// The consumer group.
        #[arg(long)]
        group: String,
        /// Print what would be written, write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn parse_time(s: &str) -> Result<i64, String> {
    crate::config::parse_rfc3339_ms(s)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time such as 2026-11-01T00:00:00Z: {e}"))
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    crate::config::parse_duration(s)
}
