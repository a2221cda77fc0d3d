//! Chaos soak: kmirror's delivery guarantees under mixed faults (kill -9,
//! SIGTERM, broker crashes and restarts, frozen processes, a flow added on
//! the fly), checked from the topics themselves. See [`kmirror::chaos`].
//!
//! ```text
//! cargo build --release --bins
//! target/release/kmirror-chaos --minutes 30 [--seed N] [--kmirror PATH] [--partitions 8] [--keep DIR] [--faults stop,kill9,...]
//! ```
//!
//! Prints the result table; exits 0 when every guarantee held, 1 when one
//! was broken, 2 when the harness itself could not run.

use std::path::PathBuf;

use clap::Parser;
use kmirror::chaos::{self, Options};

/// Chaos soak of kmirror against two local nisshi brokers.
#[derive(Debug, Parser)]
#[command(name = "kmirror-chaos", version)]
struct Args {
    /// Minutes of fault injection (drain and checks come after).
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Seed of every random choice; printed at the start of each run.
    #[arg(long)]
    seed: Option<u64>,
    /// The kmirror binary [default: `kmirror` next to this executable].
    #[arg(long)]
    kmirror: Option<PathBuf>,
    /// Partitions of each source topic.
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    /// Keep the work directory (configs, logs, broker data) here.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Inject only these kinds of fault (comma-separated: kill9, term,
    /// target, source, stop, addflow) [default: all].
    #[arg(long, value_delimiter = ',')]
    faults: Vec<chaos::FaultKind>,
}

fn main() {
    let a = Args::parse();
    if !a.minutes.is_finite() || a.minutes <= 0.0 || a.partitions < 1 {
        eprintln!("kmirror-chaos: --minutes must be > 0 and --partitions >= 1");
        std::process::exit(2);
    }
    let kmirror = a.kmirror.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|me| me.parent().map(|d| d.join("kmirror")))
            .unwrap_or_else(|| PathBuf::from("target/release/kmirror"))
    });
    let mut opts = Options::new(kmirror, a.minutes);
    if let Some(seed) = a.seed {
        opts.seed = seed;
    }
    opts.partitions = a.partitions;
    opts.keep = a.keep;
    if !a.faults.is_empty() {
        opts.kinds = a.faults;
    }
    match chaos::run(opts) {
        Ok(report) => {
            println!("{report}");
            if !report.violations().is_empty() {
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("kmirror-chaos: the harness could not run: {e}");
            std::process::exit(2);
        }
    }
}
