//! One leader per flow for the control loops (config sync, checkpoints
//! with group offset sync; the first flow's leader also writes the
//! heartbeats), chosen through Kafka's own group membership: every process
//! that runs a flow joins the group `kmirror-leader.<source>.<target>.<flow>`
//! on the target cluster and subscribes to the one-partition topic
//! `kmirror-leader.<source>.internal`; the member that holds the partition
//! leads. Per flow, so that during a rolling change of the file a flow
//! that only some processes run still has a leader among them. No
//! external coordinator.
//!
//! The role moves when the leader leaves (a clean stop gives the partition
//! back at once) or stops answering (kill -9, a frozen process: after the
//! group's session timeout, plus one interval of the loops).
//!
//! **Ownership is checked before each write** ([`Leader::is_leader`]):
//! the flag is true only while the election's consumer holds the
//! partition, its last poll is recent (less than half the session timeout
//! ago), and the process was not frozen for longer than that since it won
//! (the freeze watchdog). A frozen ex-leader that wakes therefore writes
//! nothing before its consumer has seen the group again. What remains: a
//! write that passed the check just before the process froze completes
//! when it wakes (one checkpoint batch, one config change), and a leader
//! cut off from the target by the network keeps its flag until its own
//! poll notices, up to half the session timeout.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::flow::watchdog::FreezeGuard;
use crate::kafka::{self, KContext, Role};
use crate::metrics::{Health, Metrics};

/// The election topic on the target (one partition).
pub fn leader_topic(source_alias: &str) -> String {
    format!("kmirror-leader.{source_alias}.internal")
}

/// The election group of a flow on the target.
pub fn leader_group(source_alias: &str, target_alias: &str, flow: &str) -> String {
    format!("kmirror-leader.{source_alias}.{target_alias}.{flow}")
}

/// Whether this process leads; cheap to clone and to ask.
#[derive(Clone)]
pub struct Leader {
    inner: Arc<State>,
}

struct State {
    /// The election consumer holds the partition.
    holds: AtomicBool,
    /// When the election consumer's last poll returned (ms since `start`).
    polled_ms: AtomicU64,
    start: Instant,
    /// Half the election group's session timeout.
    fresh_for: Duration,
    /// A watchdog guard made when the partition was won.
    guard: std::sync::Mutex<Option<FreezeGuard>>,
}

impl Leader {
    /// A process that never leads until the election says so.
    pub fn new(session: Duration) -> Leader {
        Leader {
            inner: Arc::new(State {
                holds: AtomicBool::new(false),
                polled_ms: AtomicU64::new(0),
                start: Instant::now(),
                fresh_for: session / 2,
                guard: std::sync::Mutex::new(None),
            }),
        }
    }

    /// True when this process leads now: ask before each write.
    pub fn is_leader(&self) -> bool {
        let s = &self.inner;
        if !s.holds.load(Ordering::Acquire) {
            return false;
        }
        let now = s.start.elapsed().as_millis() as u64;
        let polled = s.polled_ms.load(Ordering::Acquire);
        if now.saturating_sub(polled) > s.fresh_for.as_millis() as u64 {
            return false;
        }
        match s.guard.lock() {
            Ok(g) => g.as_ref().is_none_or(|g| g.check().is_ok()),
            Err(_) => false,
        }
    }

    fn polled(&self, holds: bool) -> bool {
        let s = &self.inner;
        s.polled_ms
            .store(s.start.elapsed().as_millis() as u64, Ordering::Release);
        let was = s.holds.swap(holds, Ordering::AcqRel);
        if holds && !was {
            if let Ok(mut g) = s.guard.lock() {
                *g = Some(FreezeGuard::new(s.fresh_for));
            }
        }
        was != holds
    }
}

/// The source consumer's session timeout from the target's properties
/// (`session.timeout.ms`), else 45 s: the election group's.
fn session_of(config: &Config) -> Duration {
    config
        .target
        .ms_property("session.timeout.ms", 45_000)
        .max(Duration::from_secs(1))
}

/// A [`Leader`] with the session timeout the election will use.
pub fn leader_for(config: &Config) -> Leader {
    Leader::new(session_of(config))
}

/// Runs the election until `shutdown` (on a blocking thread): polls the
/// election consumer every 200 ms and publishes whether it holds the
/// partition (`kmirror_leader`, `/readyz`). A poll that returns much later
/// than asked (a frozen process) drops the role until the consumer is made
/// again and the group gives the partition back.
pub fn run(
    config: &Config,
    flow: &str,
    leader: Leader,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topic = leader_topic(&config.source.alias);
    let group = leader_group(&config.source.alias, &config.target.alias, flow);
    let session = session_of(config);
    let make = || -> anyhow::Result<BaseConsumer<KContext>> {
        let mut cfg = kafka::client_config(&config.target, Role::Consumer, "kmirror-leader");
        cfg.set("group.id", &group);
        cfg.set("enable.auto.commit", "false");
        cfg.set("session.timeout.ms", session.as_millis().to_string());
        // The rebalance timeout: a member that does not rejoin within it
        // is dropped. The loop polls every 200 ms, so one session is ample
        // (librdkafka's default, 5 minutes, would hold a rebalance that
        // long for a member that was frozen while it started).
        cfg.set("max.poll.interval.ms", session.as_millis().to_string());
        cfg.set(
            "heartbeat.interval.ms",
            (session.as_millis() / 6).max(100).to_string(),
        );
        let c: BaseConsumer<KContext> = kafka::create(&cfg, KContext::default())?;
        c.subscribe(&[&topic])?;
        Ok(c)
    };
    let mut consumer = make()?;
    let set = |leads: bool| {
        metrics.leader.with_label_values(&[flow]).set(leads as i64);
        health.set_leader(flow, leads);
    };
    set(false);
    while !shutdown.is_cancelled() {
        let asked = Instant::now();
        let _ = consumer.poll(Duration::from_millis(200));
        if asked.elapsed() > session / 2 {
            // Frozen (or starved) past half the session: the partition may
            // be another member's now. Resign and join again.
            if leader.polled(false) {
                warn!(stalled = ?asked.elapsed(), "leadership given up: this process stalled for more than half the session timeout; joining the election again");
            }
            set(false);
            drop(consumer);
            consumer = make()?;
            continue;
        }
        let holds = consumer
            .assignment()
            .map(|a| a.count() > 0)
            .unwrap_or(false);
        if leader.polled(holds) {
            if holds {
                info!(flow, group = %group, "this process leads the flow's control loops (config sync, checkpoints, group offset sync)");
            } else {
                info!(flow, group = %group, "this process no longer leads the flow's control loops");
            }
        }
        set(holds && leader.is_leader());
    }
    leader.polled(false);
    set(false);
    // Leaving the group hands the role over at once.
    consumer.unsubscribe();
    Ok(())
}
