//! The `kmirror` binary: parse the command line, set up logging, run the
//! command, map the outcome to an exit code (0 ok, 2 bad config or usage,
//! 1 runtime failure).

use std::process::ExitCode;

use clap::Parser;
use kmirror::cli::{Cli, LogFormat};

/// glibc's malloc (which also serves librdkafka) makes up to 8 arenas per
/// core, one for each thread that allocates while another holds an arena,
/// and each keeps what was freed in it resident: with thousands of
/// partitions that was about twice the live heap. Two arenas keep the
/// resident size near the heap and kmirror's threads (mostly waiting on
/// sockets) from contending (README, "Scale" and "Benchmark"). A
/// `MALLOC_ARENA_MAX` in the environment still wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a malloc parameter; it is called first
        // in `main`, before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn init_tracing(format: LogFormat) {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string());
    let mut filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // rdkafka logs a spurious error when a consumer that kmirror already
    // closed is dropped; hide that module unless RUST_LOG names it.
    if !spec.contains("rdkafka::consumer") {
        if let Ok(d) = "rdkafka::consumer::base_consumer=off".parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        LogFormat::Text => builder
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let code = kmirror::commands::dispatch(cli.command);
    ExitCode::from(code)
}
