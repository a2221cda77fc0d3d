//! The chaos soak harness ([`kmirror::chaos`]) in its short mode: about
//! 2.5 minutes of mixed faults (every kind at least once) against three
//! kmirror processes, then the guarantees checked from the topics
//! themselves. `KMIRROR_CHAOS_SEED=N` replays a seed; the work directory
//! (logs, configs, broker data) is kept and printed when a guarantee
//! breaks, or always with `KMIRROR_CHAOS_KEEP=DIR`.

use std::path::PathBuf;

use kmirror::chaos::{self, FaultKind, Options};

#[test]
fn chaos_short_mode_keeps_the_delivery_guarantees() {
    // A missing broker fails the test with the install command; never skip.
    if let Err(e) = kmirror::devcluster::nisshi_bin() {
        panic!("{e}");
    }
    let mut opts = Options::short(PathBuf::from(env!("CARGO_BIN_EXE_kmirror")));
    if let Ok(seed) = std::env::var("KMIRROR_CHAOS_SEED") {
        opts.seed = seed.parse().expect("KMIRROR_CHAOS_SEED must be a number");
    }
    opts.keep = std::env::var_os("KMIRROR_CHAOS_KEEP").map(PathBuf::from);
    let report = chaos::run(opts).unwrap_or_else(|e| panic!("the chaos harness failed: {e}"));
    println!("{report}");

    // Not a vacuous pass: every fault kind happened, records flowed.
    for kind in FaultKind::ALL {
        assert!(
            report.faults.get(&kind).copied().unwrap_or(0) >= 1,
            "no {kind} fault was injected\n{report}"
        );
    }
    assert!(report.extra_flow_added, "{report}");
    assert!(
        report.alo.records >= 20_000 && report.eos.records >= 20_000,
        "too few records to prove anything\n{report}"
    );
    assert!(
        report.alo.checkpoints_checked > 0 && report.eos.checkpoints_checked > 0,
        "no checkpoints to check\n{report}"
    );

    assert_eq!(report.alo.lost, 0, "at-least-once lost records\n{report}");
    assert_eq!(report.eos.lost, 0, "exactly-once lost records\n{report}");
    // Exactly-once: no duplicate and nothing out of order, frozen
    // processes (SIGSTOP past the session timeout) included.
    assert_eq!(
        report.eos.duplicated, 0,
        "exactly-once duplicates\n{report}"
    );
    assert_eq!(
        report.eos.out_of_order, 0,
        "exactly-once records out of order\n{report}"
    );
    assert_eq!(
        report.alo.checkpoints_ahead + report.eos.checkpoints_ahead,
        0,
        "checkpoints ahead of the truth\n{report}"
    );
    // Everything else the harness checks: intact records, clean stops.
    let v = report.violations();
    assert!(v.is_empty(), "broken guarantees: {v:#?}\n{report}");
}
