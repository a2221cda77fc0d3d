//! Bandwidth limits: a token bucket per flow (`max_bytes_per_second`) and
//! optionally one for the whole process (`[runtime] max_bytes_per_second`).
//!
//! The consume loop debits the bytes of each record it hands to the
//! producer (key + value + headers, as `kmirror_bytes_total` counts them)
//! and, while a bucket is in debt, does not take the next record from the
//! consumer: it sleeps until the debt is paid. Nothing is dropped; the
//! consumer's fetch-ahead queue (`consumer_queue_kbytes`) fills and then
//! fetching stops too, so the source side is held to the same rate. The
//! records of all the flow's partitions go through the one bucket in the
//! order librdkafka interleaves them, so the partitions that have records
//! share the rate.
//!
//! The bucket holds at most a tenth of a second of the rate (at least
//! 64 KiB), so a burst after an idle spell is short; a record larger than
//! that still goes through, and the debt it leaves is paid before the
//! next one.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One token bucket, in bytes.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilled at `bytes_per_second`.
    pub fn new(bytes_per_second: u64) -> TokenBucket {
        let rate = bytes_per_second.max(1) as f64;
        let burst = (rate / 10.0).max(64.0 * 1024.0);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
    }

    /// Takes `bytes` (the balance may go below zero: a debt).
    pub fn debit(&mut self, bytes: usize, now: Instant) {
        self.refill(now);
        self.tokens -= bytes as f64;
    }

    /// How long until the debt is paid (`None`: no debt).
    pub fn wait(&mut self, now: Instant) -> Option<Duration> {
        self.refill(now);
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.rate))
    }
}

/// The buckets a flow's records go through.
#[derive(Debug, Default)]
pub struct Limiter {
    flow: Option<TokenBucket>,
    process: Option<Arc<Mutex<TokenBucket>>>,
}

impl Limiter {
    /// The flow's bucket (`None`: unlimited) and the process's, if any.
    pub fn new(flow_rate: Option<u64>, process: Option<Arc<Mutex<TokenBucket>>>) -> Limiter {
        Limiter {
            flow: flow_rate.filter(|r| *r > 0).map(TokenBucket::new),
            process,
        }
    }

    /// True when no limit applies.
    pub fn unlimited(&self) -> bool {
        self.flow.is_none() && self.process.is_none()
    }

    /// Counts a record handed to the producer.
    pub fn debit(&mut self, bytes: usize) {
        if self.unlimited() {
            return;
        }
        let now = Instant::now();
        if let Some(b) = &mut self.flow {
            b.debit(bytes, now);
        }
        if let Some(p) = &self.process {
            if let Ok(mut b) = p.lock() {
                b.debit(bytes, now);
            }
        }
    }

    /// How long to wait before the next record (`None`: go on).
    pub fn wait(&mut self) -> Option<Duration> {
        if self.unlimited() {
            return None;
        }
        let now = Instant::now();
        let mine = self.flow.as_mut().and_then(|b| b.wait(now));
        let shared = self
            .process
            .as_ref()
            .and_then(|p| p.lock().ok().and_then(|mut b| b.wait(now)));
        mine.max(shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_holds_the_rate_over_time() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000_000);
        // The initial burst (100 kB) is free.
        b.debit(100_000, t0);
        assert_eq!(b.wait(t0), None);
        // 1 MB more: one second of debt.
        b.debit(1_000_000, t0);
        let w = b.wait(t0).unwrap();
        assert!((w.as_secs_f64() - 1.0).abs() < 0.01, "{w:?}");
        // Half a second later, half of it is paid.
        let w = b.wait(t0 + Duration::from_millis(500)).unwrap();
        assert!((w.as_secs_f64() - 0.5).abs() < 0.01, "{w:?}");
        assert_eq!(b.wait(t0 + Duration::from_millis(1001)), None);
        // An idle spell refills at most the burst.
        assert_eq!(b.wait(t0 + Duration::from_secs(60)), None);
        b.debit(200_000, t0 + Duration::from_secs(60));
        let w = b.wait(t0 + Duration::from_secs(60)).unwrap();
        assert!((w.as_secs_f64() - 0.1).abs() < 0.01, "{w:?}");
    }

    #[test]
    fn the_process_bucket_is_shared_and_the_longer_wait_wins() {
        let shared = Arc::new(Mutex::new(TokenBucket::new(1_000_000)));
        let mut a = Limiter::new(Some(10_000_000), Some(shared.clone()));
        let mut b = Limiter::new(None, Some(shared));
        assert!(!a.unlimited() && !b.unlimited());
        a.debit(600_000);
        b.debit(600_000);
        // 1.2 MB through a 1 MB/s process bucket (100 kB burst): both wait
        // about 1.1 s; a's own 10 MB/s bucket alone would not.
        for l in [&mut a, &mut b] {
            let w = l.wait().unwrap();
            assert!(w > Duration::from_millis(1000), "{w:?}");
        }
        assert!(Limiter::new(None, None).unlimited());
        assert!(Limiter::new(Some(0), None).unlimited());
    }
}
