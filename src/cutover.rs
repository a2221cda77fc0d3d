//! `kmirror cutover`: moves consumer groups from the source cluster to the
//! target, step by step, waiting where it must and refusing with a clear
//! message where it cannot go on:
//!
//! 1. the group has no active member on the source (its consumers are
//!    stopped there; waits for it);
//! 2. every partition of the group's mirrored topics is mirrored up to the
//!    source's end, within `--max-lag` records (the flow's own commits on
//!    the source say how far it mirrored; waits);
//! 3. the last checkpoint of every partition the group committed is at
//!    that commit (the running kmirror's checkpoint loop writes it; waits);
//! 4. the translated offsets are committed to the group on the target,
//!    which must have no active member there (refuses otherwise), and a
//!    per-partition report is printed.
//!
//! Nothing is written before step 4, so a run that times out or fails can
//! be started again; a run after a successful one finds the offsets
//! applied and says so.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::Config;
use crate::discovery::{decide, list_topics, FlowRules};
use crate::kafka::{self, KContext, Role};
use crate::offsets::checkpoint::{
    checkpoints_topic, commit, committed, group_active, group_client, latest_checkpoints,
};
use crate::policy::NameFilter;

/// Exit code: done (or, with `--dry-run`, every step passes now).
pub const EXIT_DONE: u8 = 0;
/// Exit code: a step refused (named in the message); nothing was written.
pub const EXIT_REFUSED: u8 = 1;
/// Exit code: the wait ran out (`--timeout`); nothing was written; run
/// the same command again to go on.
pub const EXIT_TIMEOUT: u8 = 3;

/// What `kmirror cutover` was asked.
#[derive(Debug, Clone)]
pub struct Request {
    /// Groups to move.
    pub groups: Vec<String>,
    /// Records a partition may still lack in the target at step 2.
    pub max_lag: i64,
    /// Longest total wait.
    pub timeout: Duration,
    /// Check every step once, wait for nothing, write nothing.
    pub dry_run: bool,
}

/// One mirrored source partition of a group.
#[derive(Debug, Clone)]
struct Part {
    flow_group: String,
    topic: String,
    target: String,
    partition: i32,
}

/// A step's outcome.
enum Step {
    Done(String),
    Wait(String),
}

const POLL: Duration = Duration::from_secs(2);

/// Runs the cut-over; prints progress and the report on stdout, refusals
/// on stderr; returns the exit code.
pub fn run(config: &Config, req: &Request) -> u8 {
    let deadline = Instant::now() + req.timeout;
    let src = match reader(config, true) {
        Ok(c) => c,
        Err(e) => return refuse(&e),
    };
    let mut code = EXIT_DONE;
    for group in &req.groups {
        println!(
            "cutover of group {group}: {} -> {}{}",
            config.source.alias,
            config.target.alias,
            if req.dry_run {
                " (dry run: nothing is written)"
            } else {
                ""
            }
        );
        let c = one(config, &src, group, req, deadline);
        if c != EXIT_DONE {
            code = c;
            break;
        }
    }
    code
}

fn reader(config: &Config, source: bool) -> Result<BaseConsumer<KContext>, String> {
    let c = if source {
        &config.source
    } else {
        &config.target
    };
    kafka::create(
        &kafka::client_config(c, Role::Admin, "kmirror-cutover"),
        KContext::default(),
    )
    .map_err(|e| {
        format!(
            "{} {}: {e}",
            if source { "source" } else { "target" },
            c.alias
        )
    })
}

fn refuse(msg: &str) -> u8 {
    eprintln!("kmirror cutover: refused: {msg}");
    EXIT_REFUSED
}

/// Waits for `check` to be done (printing each new wait reason), or
/// returns the exit code of the timeout.
fn step(
    n: usize,
    what: &str,
    req: &Request,
    deadline: Instant,
    mut check: impl FnMut() -> Step,
) -> Result<(), u8> {
    let mut last = String::new();
    loop {
        match check() {
            Step::Done(msg) => {
                println!("[{n}/4] {what}: {msg}");
                return Ok(());
            }
            Step::Wait(msg) => {
                if req.dry_run {
                    println!("[{n}/4] {what}: not yet: {msg}");
                    return Err(EXIT_TIMEOUT);
                }
                if msg != last {
                    let left = deadline.saturating_duration_since(Instant::now());
                    println!(
                        "[{n}/4] {what}: waiting: {msg} (checked every {}s, {}s left)",
                        POLL.as_secs(),
                        left.as_secs()
                    );
                    last = msg;
                }
                if Instant::now() + POLL > deadline {
                    eprintln!(
                        "kmirror cutover: timed out at step {n} ({what}): {last}; nothing was written, run the same command again to go on"
                    );
                    return Err(EXIT_TIMEOUT);
                }
                std::thread::sleep(POLL);
            }
        }
    }
}

fn one(
    config: &Config,
    src: &BaseConsumer<KContext>,
    group: &str,
    req: &Request,
    deadline: Instant,
) -> u8 {
    let timeout = Duration::from_secs(10);
    // The flows that mirror topics and checkpoint this group.
    let topics = match list_topics(src, timeout) {
        Ok(t) => t,
        Err(e) => return refuse(&format!("source {}: {e}", config.source.alias)),
    };
    let mut claimed = std::collections::HashMap::new();
    let mut parts: Vec<Part> = Vec::new();
    let mut flows = Vec::new();
    for f in &config.flows {
        let rules = match FlowRules::new(f) {
            Ok(r) => r,
            Err(e) => return refuse(&format!("flow {}: {e}", f.name)),
        };
        let (take, _) = decide(
            &rules,
            &config.source.alias,
            &config.target.alias,
            &topics,
            &mut claimed,
        );
        let checkpoints = NameFilter::new(&f.groups, &f.groups_exclude)
            .map(|n| n.matches(group))
            .unwrap_or(false);
        if !checkpoints {
            continue;
        }
        flows.push(f.name.clone());
        let flow_group = f.group_id(&config.source.alias, &config.target.alias);
        for (topic, target, n) in take {
            for p in 0..n {
                parts.push(Part {
                    flow_group: flow_group.clone(),
                    topic: topic.clone(),
                    target: target.clone(),
                    partition: p,
                });
            }
        }
    }
    if flows.is_empty() {
        return refuse(&format!(
            "no flow of the configuration checkpoints group {group} (each flow's `groups`/`groups_exclude` decide); add it to a flow's `groups` and let kmirror run"
        ));
    }
    let source_group = match group_client(&config.source, group) {
        Ok(c) => c,
        Err(e) => return refuse(&e),
    };
    let all: Vec<(String, i32)> = parts
        .iter()
        .map(|p| (p.topic.clone(), p.partition))
        .collect();

    // 1. No active member on the source.
    let r = step(
        1,
        "consumers stopped on the source",
        req,
        deadline,
        || match group_active(&source_group, group) {
            Ok(false) => Step::Done(format!(
                "group {group} has no active member on source {}",
                config.source.alias
            )),
            Ok(true) => Step::Wait(format!(
                "group {group} has active members on source {}: stop its consumers there",
                config.source.alias
            )),
            Err(e) => Step::Wait(e),
        },
    );
    if let Err(c) = r {
        return c;
    }
    // The group's commits (final now that it is stopped).
    let commits = match committed(&source_group, &all) {
        Ok(c) => c,
        Err(e) => {
            return refuse(&format!(
                "cannot read group {group}'s offsets on the source: {e}"
            ))
        }
    };
    let commits: BTreeMap<(String, i32), i64> =
        commits.into_iter().filter(|(_, o)| *o >= 0).collect();
    if commits.is_empty() {
        return refuse(&format!(
            "group {group} has no committed offset on source {} for the topics mirrored by flow(s) {}",
            config.source.alias,
            flows.join(", ")
        ));
    }
    // Only the topics the group consumes.
    let parts: Vec<Part> = parts
        .into_iter()
        .filter(|p| commits.keys().any(|(t, _)| *t == p.topic))
        .collect();

    // 2. Mirrored up to the source's end.
    let mut lags: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let flow_clients: BTreeMap<String, BaseConsumer<KContext>> = {
        let mut m = BTreeMap::new();
        for p in &parts {
            if !m.contains_key(&p.flow_group) {
                match group_client(&config.source, &p.flow_group) {
                    Ok(c) => {
                        m.insert(p.flow_group.clone(), c);
                    }
                    Err(e) => return refuse(&e),
                }
            }
        }
        m
    };
    let r = step(
        2,
        &format!("mirrored up to the source's end (max lag {})", req.max_lag),
        req,
        deadline,
        || {
            let mut behind = Vec::new();
            let mut total = 0i64;
            for p in &parts {
                let (lo, hw) = match src.fetch_watermarks(&p.topic, p.partition, timeout) {
                    Ok(w) => w,
                    Err(e) => return Step::Wait(format!("{}[{}]: {e}", p.topic, p.partition)),
                };
                let key = vec![(p.topic.clone(), p.partition)];
                let mirrored = match flow_clients.get(&p.flow_group).map(|c| committed(c, &key)) {
                    Some(Ok(m)) => m.values().next().copied(),
                    Some(Err(e)) => return Step::Wait(e),
                    None => None,
                };
                let lag = match mirrored {
                    Some(m) if m >= 0 => (hw - m).max(0),
                    // Never committed by the flow: behind unless empty.
                    _ => (hw - lo).max(0),
                };
                lags.insert((p.topic.clone(), p.partition), lag);
                total += lag;
                if lag > req.max_lag {
                    behind.push(format!("{}[{}] {lag}", p.topic, p.partition));
                }
            }
            if behind.is_empty() {
                Step::Done(format!(
                    "{} partition(s), total lag {total} record(s)",
                    parts.len()
                ))
            } else {
                let shown: Vec<&String> = behind.iter().take(8).collect();
                Step::Wait(format!(
                    "{} partition(s) behind, total lag {total}: {}{} (flow(s) {} must be running)",
                    behind.len(),
                    shown
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    if behind.len() > 8 { ", ..." } else { "" },
                    flows.join(", ")
                ))
            }
        },
    );
    if let Err(c) = r {
        return c;
    }

    // 3. The final checkpoint of every committed partition.
    let mut translated: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let targets: BTreeMap<(String, i32), String> = parts
        .iter()
        .map(|p| ((p.topic.clone(), p.partition), p.target.clone()))
        .collect();
    let r = step(3, "final checkpoint", req, deadline, || {
        let cps = match latest_checkpoints(&config.target, &config.source.alias, group) {
            Ok(c) => c,
            Err(e) => {
                return Step::Wait(format!(
                    "cannot read {} on target {}: {e}",
                    checkpoints_topic(&config.source.alias),
                    config.target.alias
                ))
            }
        };
        let mut missing = Vec::new();
        translated.clear();
        for ((topic, p), commit) in &commits {
            let Some(target) = targets.get(&(topic.clone(), *p)) else {
                continue;
            };
            match cps.get(&(target.clone(), *p)) {
                Some(cp) if cp.upstream_offset == *commit => {
                    translated.insert((target.clone(), *p), cp.downstream_offset);
                }
                Some(cp) => missing.push(format!(
                    "{topic}[{p}] commit {commit}, checkpoint at {}",
                    cp.upstream_offset
                )),
                None => missing.push(format!("{topic}[{p}] commit {commit}, no checkpoint")),
            }
        }
        if missing.is_empty() {
            Step::Done(format!(
                "{} partition(s) checkpointed at the group's commits",
                translated.len()
            ))
        } else {
            let n = missing.len();
            missing.truncate(8);
            Step::Wait(format!(
                "{n} partition(s) not checkpointed at the group's commit yet: {}{} (kmirror run must be running with this configuration: its leader writes checkpoints every checkpoint_interval)",
                missing.join(", "),
                if n > 8 { ", ..." } else { "" }
            ))
        }
    });
    if let Err(c) = r {
        return c;
    }

    // 4. Apply on the target.
    let target_group = match group_client(&config.target, group) {
        Ok(c) => c,
        Err(e) => return refuse(&e),
    };
    let keys: Vec<(String, i32)> = translated.keys().cloned().collect();
    let current = match committed(&target_group, &keys) {
        Ok(c) => c,
        Err(e) => {
            return refuse(&format!(
                "cannot read group {group}'s offsets on target {}: {e}",
                config.target.alias
            ))
        }
    };
    let applied = translated
        .iter()
        .all(|(k, o)| current.get(k).is_some_and(|c| c == o));
    let active = match group_active(&target_group, group) {
        Ok(a) => a,
        Err(e) => return refuse(&e),
    };
    let outcome = if applied {
        format!(
            "already applied: group {group} on target {} is at the translated offsets{}",
            config.target.alias,
            if active {
                " (and has active members: its consumers moved)"
            } else {
                ""
            }
        )
    } else if active {
        println!("[4/4] apply on the target: refused");
        return refuse(&format!(
            "group {group} has active members on target {}: stop its consumers there, the offsets of an active group cannot be set safely",
            config.target.alias
        ));
    } else if let Some(((t, p), c)) = translated
        .iter()
        .find_map(|(k, o)| current.get(k).filter(|c| *c > o).map(|c| (k, c)))
    {
        println!("[4/4] apply on the target: refused");
        return refuse(&format!(
            "group {group} on target {} is already at {c} on {t}[{p}], ahead of the translated offset {}: its consumers have read there; not moved backwards (commit by hand if that is what you want)",
            config.target.alias, translated[&(t.clone(), *p)]
        ));
    } else if req.dry_run {
        "would commit the translated offsets (dry run)".to_string()
    } else {
        match commit(&target_group, &translated) {
            Ok(()) => format!(
                "{} partition offset(s) committed to group {group} on target {}",
                translated.len(),
                config.target.alias
            ),
            Err(e) => {
                println!("[4/4] apply on the target: refused");
                return refuse(&format!(
                    "commit to group {group} on target {} failed: {e}",
                    config.target.alias
                ));
            }
        }
    };
    println!("[4/4] apply on the target: {outcome}");
    println!(
        "\n  {:<30} {:>9} {:>13}  {:<30} {:>13} {:>6}",
        "source topic", "partition", "source offset", "target topic", "target offset", "lag"
    );
    for ((topic, p), commit) in &commits {
        let Some(target) = targets.get(&(topic.clone(), *p)) else {
            continue;
        };
        let down = translated
            .get(&(target.clone(), *p))
            .map_or("-".to_string(), |o| o.to_string());
        let lag = lags.get(&(topic.clone(), *p)).copied().unwrap_or(0);
        println!("  {topic:<30} {p:>9} {commit:>13}  {target:<30} {down:>13} {lag:>6}");
    }
    println!(
        "\nnext: start group {group}'s consumers against target {} ({}); they resume at the offsets above.",
        config.target.alias,
        config.target.bootstrap_servers.trim()
    );
    EXIT_DONE
}
