//! Per-guest token buckets (429 beyond), and a gate that keeps guest-triggered log lines from
//! flooding the journal.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Buckets idle this long are forgotten (they would be full again anyway).
const FORGET_AFTER: Duration = Duration::from_secs(60);
const PRUNE_ABOVE: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
pub struct RateLimiter {
    rate_per_s: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    pub fn new(rate_per_s: f64, burst: u32) -> RateLimiter {
        RateLimiter {
            rate_per_s,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token from `who`'s bucket; false when it is empty.
    pub fn allow(&self, who: IpAddr, now: Instant) -> bool {
        let mut b = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if b.len() > PRUNE_ABOVE {
            b.retain(|_, v| now.saturating_duration_since(v.at) < FORGET_AFTER);
        }
        let bucket = b.entry(who).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate_per_s).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Lets one log line through per `every`; counts what it held back.
#[derive(Debug)]
pub struct LogGate {
    every_ms: u64,
    origin: Instant,
    last_ms: AtomicU64,
    held: AtomicU64,
}

impl LogGate {
    pub fn new(every: Duration) -> LogGate {
        let every_ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
        LogGate {
            every_ms,
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(held back since the last line)` when a line may be logged now.
    pub fn pass(&self, now: Instant) -> Option<u64> {
        let t = u64::try_from(now.saturating_duration_since(self.origin).as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(self.every_ms);
        let last = self.last_ms.load(Ordering::Relaxed);
        if t.saturating_sub(last) >= self.every_ms
            && self
                .last_ms
                .compare_exchange(last, t, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.held.swap(0, Ordering::Relaxed))
        } else {
            self.held.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_a_burst_then_the_rate() {
        let l = RateLimiter::new(10.0, 3);
        let a: IpAddr = "10.0.0.2".parse().unwrap();
        let b: IpAddr = "10.0.0.6".parse().unwrap();
        let t0 = Instant::now();
        assert!((0..3).all(|_| l.allow(a, t0)));
        assert!(!l.allow(a, t0), "the burst is spent");
        assert!(l.allow(b, t0), "another guest has its own bucket");
        assert!(!l.allow(a, t0 + Duration::from_millis(50)));
        assert!(
            l.allow(a, t0 + Duration::from_millis(110)),
            "one token per 100 ms"
        );
        assert!(
            (0..3).all(|_| l.allow(a, t0 + Duration::from_secs(10))),
            "refills to the burst"
        );
        assert!(!l.allow(a, t0 + Duration::from_secs(10)));
    }

    #[test]
    fn the_log_gate_lets_one_line_through_per_period() {
        let g = LogGate::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(g.pass(t0), Some(0));
        assert_eq!(g.pass(t0 + Duration::from_secs(1)), None);
        assert_eq!(g.pass(t0 + Duration::from_secs(2)), None);
        assert_eq!(g.pass(t0 + Duration::from_secs(11)), Some(2));
    }
}
