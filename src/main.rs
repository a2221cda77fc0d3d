//! The `kmirror` binary: parse the command line, set up logging, run the
//! command, map the outcome to an exit code (0 ok, 2 bad config or usage,
//! 1 runtime failure).

use std::process::ExitCode;

use clap::Parser;
use kmirror::cli::{Cli, LogFormat};

// jemalloc serves every allocation of the process, librdkafka's included
// (unprefixed `malloc`): glibc's per-thread arenas kept about twice the
// live heap resident with thousands of partitions.
#[cfg(all(target_os = "linux", not(target_env = "msvc")))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let code = kmirror::commands::dispatch(cli.command);
    ExitCode::from(code)
}
