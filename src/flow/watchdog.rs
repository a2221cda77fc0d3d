//! Notices that the whole process was frozen (SIGSTOP, a stalled VM, a
//! long stop-the-world pause of the host) so that an exactly-once flow
//! hands nothing more to its producer once its partitions may belong to
//! another member.
//!
//! A freeze stops every thread at once, so no thread can act *before* the
//! others when the process wakes: librdkafka's broker threads and the
//! consume thread all resume together. Two things close the window:
//!
//! - What the producer had queued **before** the freeze is given up by
//!   librdkafka itself: an exactly-once flow's producer gets a
//!   `message.timeout.ms` shorter than the time its group needs to give
//!   the partitions to another member (see [`eos_message_timeout`]), and
//!   librdkafka's first timeout scan after waking comes before its first
//!   send.
//! - What the consume thread hands over **after** the freeze is checked
//!   against this watchdog, before and after each hand-over
//!   ([`FreezeGuard::check`]): a thread of its own ticks every 50 ms; a
//!   tick that is stale, or a recorded gap between two ticks longer than
//!   the flow's limit, means the process was frozen. Before: nothing is
//!   handed over. After (frozen between the check and the hand-over): the
//!   producer's queue is purged at once, well within its `linger.ms`.
//!
//! What remains is a produce request that librdkafka had written partly
//! to its socket when the process froze (the kernel's send buffer was
//! full): its rest goes out when the process wakes. See the README.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Once, OnceLock};
use std::time::Duration;

/// How often the watchdog ticks.
const TICK: Duration = Duration::from_millis(50);
/// Gaps between ticks shorter than this are scheduling noise, not kept.
const KEEP_OVER_MS: u64 = 500;
/// How many recent gaps are kept.
const RING: usize = 64;

struct Watchdog {
    /// [`super::mono_coarse`] at the start: exactly-once reads the clock
    /// twice per record, so the coarse one (its tick, a few milliseconds,
    /// is far finer than the limits here).
    start: Duration,
    /// Milliseconds since `start` at the last tick.
    last_tick: AtomicU64,
    /// How many gaps were recorded (the ring holds the last [`RING`]).
    gaps: AtomicU64,
    ring: [AtomicU64; RING],
}

impl Watchdog {
    fn now(&self) -> u64 {
        super::mono_coarse().saturating_sub(self.start).as_millis() as u64
    }
}

static DOG: OnceLock<Watchdog> = OnceLock::new();
static STARTED: Once = Once::new();

fn dog() -> &'static Watchdog {
    let d = DOG.get_or_init(|| Watchdog {
        start: super::mono_coarse(),
        last_tick: AtomicU64::new(0),
        gaps: AtomicU64::new(0),
        ring: std::array::from_fn(|_| AtomicU64::new(0)),
    });
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("kmirror-watchdog".into())
            .spawn(|| {
                let d = DOG.get().expect("initialised before the thread starts");
                let mut prev = d.now();
                loop {
                    std::thread::sleep(TICK);
                    let now = d.now();
                    let gap = now.saturating_sub(prev);
                    if gap > KEEP_OVER_MS {
                        // The gap is recorded before the tick is published,
                        // so a reader that sees the fresh tick sees it too.
                        let n = d.gaps.load(Ordering::Acquire);
                        d.ring[n as usize % RING].store(gap, Ordering::Release);
                        d.gaps.store(n + 1, Ordering::Release);
                    }
                    d.last_tick.store(now, Ordering::Release);
                    prev = now;
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the freeze watchdog thread; exactly-once flows will see every hand-over as frozen");
        }
    });
    d
}

/// One flow run's view of the watchdog: frozen once a gap longer than its
/// limit happened after it was made.
#[derive(Debug)]
pub(crate) struct FreezeGuard {
    limit_ms: u64,
    seen: AtomicU64,
}

impl FreezeGuard {
    pub(crate) fn new(limit: Duration) -> Self {
        let d = dog();
        // A fresh tick, so that a guard made right at start-up is not
        // taken for a frozen process.
        d.last_tick.fetch_max(d.now(), Ordering::AcqRel);
        Self {
            limit_ms: limit.as_millis().max(1) as u64,
            seen: AtomicU64::new(d.gaps.load(Ordering::Acquire)),
        }
    }

    /// `Err(gap)` when the process was frozen for longer than the limit
    /// since this guard was made, or is only now waking from such a freeze
    /// (the watchdog has not ticked for longer than the limit).
    pub(crate) fn check(&self) -> Result<(), Duration> {
        let d = dog();
        let tick = d.last_tick.load(Ordering::Acquire);
        let stale = d.now().saturating_sub(tick);
        if stale > self.limit_ms {
            return Err(Duration::from_millis(stale));
        }
        let n = d.gaps.load(Ordering::Acquire);
        let seen = self.seen.load(Ordering::Acquire);
        if n == seen {
            return Ok(());
        }
        if n - seen > RING as u64 {
            // More gaps than kept: assume the worst.
            return Err(Duration::from_millis(self.limit_ms + 1));
        }
        for i in seen..n {
            let gap = d.ring[i as usize % RING].load(Ordering::Acquire);
            if gap > self.limit_ms {
                return Err(Duration::from_millis(gap));
            }
        }
        self.seen.store(n, Ordering::Release);
        Ok(())
    }
}

/// The `message.timeout.ms` of an exactly-once flow's producer: shorter
/// than the time the flow's group takes to give a frozen member's
/// partitions to another member. The group expires a member `session`
/// after its last heartbeat, which came at most `heartbeat` before it
/// froze; a second more covers the heartbeat's round trip. Records a
/// frozen member had queued are then always older than this when it wakes
/// after its partitions moved, and librdkafka gives them up instead of
/// sending them. At least 1 s.
pub(crate) fn eos_message_timeout(session: Duration, heartbeat: Duration) -> Duration {
    session
        .saturating_sub(heartbeat)
        .saturating_sub(Duration::from_secs(1))
        .max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_timeout_stays_inside_the_session() {
        let t = eos_message_timeout(Duration::from_secs(45), Duration::from_secs(3));
        assert_eq!(t, Duration::from_secs(41));
        let t = eos_message_timeout(Duration::from_secs(6), Duration::from_secs(1));
        assert_eq!(t, Duration::from_secs(4));
        let t = eos_message_timeout(Duration::from_secs(2), Duration::from_secs(3));
        assert_eq!(t, Duration::from_secs(1));
    }

    /// A running process is not frozen; a gap longer than the limit seen by
    /// the watchdog is reported once it is recorded, and only to guards made
    /// before it.
    #[test]
    fn a_recorded_gap_over_the_limit_is_a_freeze() {
        let g = FreezeGuard::new(Duration::from_millis(700));
        std::thread::sleep(Duration::from_millis(200));
        assert!(g.check().is_ok());
        // Simulate a gap as the watchdog records it.
        let d = dog();
        let n = d.gaps.load(Ordering::Acquire);
        d.ring[n as usize % RING].store(900, Ordering::Release);
        d.gaps.store(n + 1, Ordering::Release);
        assert_eq!(g.check(), Err(Duration::from_millis(900)));
        let later = FreezeGuard::new(Duration::from_millis(700));
        assert!(later.check().is_ok());
        // A gap under a guard's limit does not count.
        let n = d.gaps.load(Ordering::Acquire);
        d.ring[n as usize % RING].store(600, Ordering::Release);
        d.gaps.store(n + 1, Ordering::Release);
        assert!(later.check().is_ok());
    }
}
