//! The CLI verbs. Each returns the process exit code: 0 success, 2 bad
//! configuration or usage, 1 runtime failure.

use std::path::Path;
use std::time::Duration;

use crate::cli::{Command, OffsetsCommand, OutputFormat};
use crate::config::{self, Config};
use crate::kafka;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: runtime failure (a cluster unreachable, a task failed).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code: bad configuration or usage.
pub const EXIT_CONFIG: u8 = 2;

/// Runs one command.
pub fn dispatch(cmd: Command) -> u8 {
    match cmd {
        Command::Validate {
            config,
            connect,
            timeout,
        } => validate(&config, connect, timeout),
        Command::Run { config, watch } => run(&config, watch),
        Command::Plan {
            config,
            format,
            reload_from,
        } => match reload_from {
            Some(running) => reload_plan(&running, &config),
            None => plan(&config, format),
        },
        Command::Offsets { command } => offsets(command),
        Command::Backfill {
            config,
            flow,
            from,
            until,
            dry_run,
        } => match load_or_report(&config) {
            Ok(c) => crate::backfill::run(
                &c,
                &crate::backfill::Request {
                    flow,
                    from_ms: from,
                    until_ms: until,
                    dry_run,
                },
            ),
            Err(code) => code,
        },
        Command::Cutover {
            config,
            groups,
            max_lag,
            timeout,
            dry_run,
        } => match load_or_report(&config) {
            Ok(c) => crate::cutover::run(
                &c,
                &crate::cutover::Request {
                    groups,
                    max_lag,
                    timeout,
                    dry_run,
                },
            ),
            Err(code) => code,
        },
    }
}

/// `kmirror run`: mirrors until SIGINT/SIGTERM. The first signal drains
/// and commits within `[runtime] shutdown_timeout`; a second exits at once.
/// SIGHUP (and with `--watch` a change of the file) reloads the file.
fn run(path: &Path, watch: bool) -> u8 {
    let (c, rt) = match load_or_report(path).and_then(|c| Ok((c, runtime()?))) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let result = rt.block_on(async {
        let token = shutdown.clone();
        tokio::spawn(async move {
            wait_signal().await;
            tracing::info!(
                "signal received: draining and committing (a second signal exits at once)"
            );
            token.cancel();
            wait_signal().await;
            tracing::warn!("second signal: exiting without draining");
            std::process::exit(EXIT_FAILURE as i32);
        });
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        spawn_reload_triggers(path, watch, tx, shutdown.clone());
        crate::app::run_reloadable(
            c,
            Some(path.to_path_buf()),
            rx,
            shutdown,
            std::sync::Arc::new(crate::metrics::Metrics::new()),
            std::sync::Arc::new(crate::metrics::Health::default()),
        )
        .await
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => {
            tracing::info!("stopped cleanly");
            EXIT_OK
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "kmirror failed");
            eprintln!("kmirror run: {e:#}");
            EXIT_FAILURE
        }
    }
}

/// SIGHUP, and with `watch` a change of the file's modification time or
/// size or of a secret file it names (looked at every second), each send a
/// reload request.
fn spawn_reload_triggers(
    path: &Path,
    watch: bool,
    tx: tokio::sync::mpsc::UnboundedSender<&'static str>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            let tx = tx.clone();
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading the configuration");
                    if tx.send("SIGHUP").is_err() {
                        return;
                    }
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot handle SIGHUP; reloads by signal are off"),
    }
    if !watch {
        return;
    }
    let path = path.to_path_buf();
    tokio::spawn(async move {
        // The file's modification time and size, and the contents of the
        // secret files it names (`${file:PATH}`: a Kubernetes Secret
        // mounted as files changes them in place), hashed.
        let files = regex::Regex::new(r"\$\{file:([^}]+)\}").expect("valid regex");
        let stamp = |p: &Path| {
            use std::hash::{Hash, Hasher};
            let meta = std::fs::metadata(p).ok()?;
            let mut h = std::collections::hash_map::DefaultHasher::new();
            let text = std::fs::read_to_string(p).unwrap_or_default();
            for c in files.captures_iter(&text) {
                c[1].hash(&mut h);
                std::fs::read(c[1].trim()).ok().hash(&mut h);
            }
            Some((meta.modified().ok(), meta.len(), h.finish()))
        };
        let mut last = stamp(&path);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = stamp(&path);
            if now != last && now.is_some() {
                last = now;
                tracing::info!(file = %path.display(), "the configuration file (or a secret file it names) changed: reloading");
                if tx.send("--watch").is_err() {
                    return;
                }
            }
        }
    });
}

async fn wait_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, only Ctrl-C through tokio remains.
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, u8> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("kmirror: cannot start the runtime: {e}");
            EXIT_FAILURE
        })
}

/// `kmirror plan`: prints what would be mirrored and changed; changes nothing.
fn plan(path: &Path, format: OutputFormat) -> u8 {
    let (c, rt) = match load_or_report(path).and_then(|c| Ok((c, runtime()?))) {
        Ok(x) => x,
        Err(code) => return code,
    };
    match rt.block_on(crate::plan::build(&c)) {
        Ok(p) => {
            match format {
                OutputFormat::Text => print!("{}", crate::plan::render(&p)),
                OutputFormat::Json => {
                    println!("{}", serde_json::to_string_pretty(&p).unwrap_or_default())
                }
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("kmirror plan: {e:#}");
            EXIT_FAILURE
        }
    }
}

/// `kmirror plan --reload-from RUNNING --config NEW`: what a reload from
/// the running file to the new one changes (both must be valid).
fn reload_plan(running: &Path, new: &Path) -> u8 {
    let (old, new_c) = match (load_or_report(running), load_or_report(new)) {
        (Ok(o), Ok(n)) => (o, n),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let p = crate::app::ReloadPlan::new(&old, &new_c);
    println!("reload {} -> {}: {p}", running.display(), new.display());
    if old.http.listen != new_c.http.listen {
        println!("  [http] listen changes need a restart (a reload keeps the running address)");
    }
    EXIT_OK
}

/// `kmirror offsets translate|apply`: the failover runbook's commands.
fn offsets(cmd: OffsetsCommand) -> u8 {
    use crate::offsets::checkpoint::{
        checkpoints_topic, commit, committed, group_active, group_client, latest_checkpoints,
    };
    let (path, group) = match &cmd {
        OffsetsCommand::Translate { config, group, .. }
        | OffsetsCommand::Apply { config, group, .. } => (config, group),
    };
    let c = match load_or_report(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let cps = match latest_checkpoints(&c.target, &c.source.alias, group) {
        Ok(cps) => cps,
        Err(e) => {
            eprintln!(
                "kmirror offsets: cannot read {} on target {}: {e}",
                checkpoints_topic(&c.source.alias),
                c.target.alias
            );
            return EXIT_FAILURE;
        }
    };
    if cps.is_empty() {
        eprintln!(
            "kmirror offsets: no checkpoint for group {group} in {} on target {}: the group has committed nothing that kmirror mirrored, or checkpoints are not written yet",
            checkpoints_topic(&c.source.alias),
            c.target.alias
        );
        return EXIT_FAILURE;
    }
    match cmd {
        OffsetsCommand::Translate { format, .. } => {
            match format {
                OutputFormat::Json => {
                    let v: Vec<_> = cps
                        .values()
                        .map(|cp| serde_json::json!({"topic": cp.topic, "partition": cp.partition, "offset": cp.downstream_offset, "source_offset": cp.upstream_offset}))
                        .collect();
                    println!(
                        "{}",
                        serde_json::json!({"group": group, "target": c.target.alias, "offsets": v})
                    );
                }
                OutputFormat::Text => {
                    println!("group {group} on target {}: resume from", c.target.alias);
                    for cp in cps.values() {
                        println!(
                            "  {} [{}]  offset {}   (source offset {})",
                            cp.topic, cp.partition, cp.downstream_offset, cp.upstream_offset
                        );
                    }
                }
            }
            EXIT_OK
        }
        OffsetsCommand::Apply { dry_run, .. } => {
            let client = match group_client(&c.target, group) {
                Ok(cl) => cl,
                Err(e) => {
                    eprintln!("kmirror offsets apply: {e}");
                    return EXIT_FAILURE;
                }
            };
            match group_active(&client, group) {
                Ok(false) => {}
                Ok(true) => {
                    eprintln!("kmirror offsets apply: group {group} has active members on target {}; stop its consumers there first (offsets of an active group cannot be set safely)", c.target.alias);
                    return EXIT_FAILURE;
                }
                Err(e) => {
                    eprintln!("kmirror offsets apply: {e}");
                    return EXIT_FAILURE;
                }
            }
            let want: std::collections::BTreeMap<(String, i32), i64> = cps
                .values()
                .map(|cp| ((cp.topic.clone(), cp.partition), cp.downstream_offset))
                .collect();
            let parts: Vec<(String, i32)> = want.keys().cloned().collect();
            let before = committed(&client, &parts).unwrap_or_default();
            for ((t, p), o) in &want {
                let was = before
                    .get(&(t.clone(), *p))
                    .map_or("none".to_string(), |v| v.to_string());
                println!("  {t} [{p}]  {was} -> {o}");
            }
            if dry_run {
                println!("dry run: nothing written");
                return EXIT_OK;
            }
            match commit(&client, &want) {
                Ok(()) => {
                    println!(
                        "group {group} on target {}: {} partition offset(s) written",
                        c.target.alias,
                        want.len()
                    );
                    EXIT_OK
                }
                Err(e) => {
                    eprintln!("kmirror offsets apply: commit failed: {e}");
                    EXIT_FAILURE
                }
            }
        }
    }
}

/// Loads a config or prints every problem; `Err` holds the exit code.
pub fn load_or_report(path: &Path) -> Result<Config, u8> {
    config::load(path).map_err(|e| {
        eprint!("{e}");
        EXIT_CONFIG
    })
}

/// A short human summary of a valid configuration (no secrets).
pub fn summary(c: &Config) -> String {
    let mut s = String::new();
    let cl = |role: &str, cc: &config::ClusterConfig| {
        let props = cc.properties.redacted();
        let props = if props.is_empty() {
            String::new()
        } else {
            format!(
                "  properties: {}",
                props
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        format!(
            "  {role} {:<12} {}{props}\n",
            cc.alias, cc.bootstrap_servers
        )
    };
    s.push_str(&cl("source", &c.source));
    s.push_str(&cl("target", &c.target));
    for (role, cc) in [("source", &c.source), ("target", &c.target)] {
        let off = cc.tls_verification_off();
        if !off.is_empty() {
            s.push_str(&format!(
                "  WARNING: TLS certificate verification is off for the {role} ({})\n",
                off.join(", ")
            ));
        }
    }
    if !c.http.listen.is_empty() {
        s.push_str(&format!("  http   {}\n", c.http.listen));
    }
    s.push_str(&format!("  {} flow(s):\n", c.flows.len()));
    for f in &c.flows {
        s.push_str(&format!(
            "    {}: topics {:?}{} -> \"{}\", {}, group {}\n",
            f.name,
            f.topics,
            if f.topics_exclude.is_empty() {
                String::new()
            } else {
                format!(" except {:?}", f.topics_exclude)
            },
            f.rename,
            f.delivery,
            f.group_id(&c.source.alias, &c.target.alias)
        ));
    }
    s
}

fn validate(path: &Path, connect: bool, timeout: Duration) -> u8 {
    let c = match load_or_report(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    println!("{}: ok", path.display());
    print!("{}", summary(&c));
    if !connect {
        return EXIT_OK;
    }
    let mut ok = true;
    for (role, cl) in [("source", &c.source), ("target", &c.target)] {
        match kafka::probe(cl, timeout) {
            Ok(info) => println!(
                "  {role} {}: reachable, cluster id {}, {} broker(s), {} topic(s)",
                cl.alias,
                info.cluster_id.as_deref().unwrap_or("(none reported)"),
                info.brokers,
                info.topics
            ),
            Err(why) => {
                ok = false;
                println!(
                    "  {role} {}: UNREACHABLE at {}: {why}",
                    cl.alias, cl.bootstrap_servers
                );
            }
        }
    }
    if ok {
        EXIT_OK
    } else {
        EXIT_FAILURE
    }
}
