//! Time is injected: code that needs "now" takes a `Clock`, so tests can fix it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Seconds since the Unix epoch, UTC.
pub type UnixSeconds = i64;

pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> UnixSeconds;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixSeconds {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            // A clock before 1970 is a broken host; report the epoch rather than panic.
            Err(_) => 0,
        }
    }
}

/// A clock that only moves when told to: for tests.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(start: UnixSeconds) -> Self {
        Self(Arc::new(AtomicI64::new(start)))
    }
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixSeconds {
        self.0.load(Ordering::SeqCst)
    }
}

/// RFC 3339 with a `+00:00` offset, as CloudSigma writes `active_since`.
pub fn rfc3339(t: UnixSeconds) -> String {
    let dt =
        time::OffsetDateTime::from_unix_timestamp(t).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]+00:00");
    dt.format(&fmt)
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00+00:00"))
}

/// Parses RFC 3339 (any offset) or plain Unix seconds.
pub fn parse_time(s: &str) -> Option<UnixSeconds> {
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(time::OffsetDateTime::unix_timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_cloudsigma_shape() {
        assert_eq!(rfc3339(1_426_773_171), "2015-03-19T13:52:51+00:00");
        assert_eq!(parse_time("2015-03-19T13:52:51+00:00"), Some(1_426_773_171));
        assert_eq!(parse_time("2015-03-19T14:52:51+01:00"), Some(1_426_773_171));
        assert_eq!(parse_time("2015-03-19T13:52:51Z"), Some(1_426_773_171));
        assert_eq!(parse_time("1426773171"), Some(1_426_773_171));
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(100);
        assert_eq!(c.now(), 100);
        c.advance(5);
        assert_eq!(c.now(), 105);
    }
}
