//! How slowly a client may send: the request head against a deadline, a body
//! against a minimum average rate (slowloris and slow-POST attacks hold a
//! connection, and on a proxy often an upstream connection, for the price of
//! a few bytes a minute).

use std::time::{Duration, Instant};

/// Whether a body that has delivered `bytes` after `elapsed` is too slow: once
/// past `grace`, it must average `min_rate` bytes per second since the start.
/// `min_rate` 0 never refuses.
pub fn body_too_slow(bytes: u64, elapsed: Duration, grace: Duration, min_rate: u64) -> bool {
    if min_rate == 0 || elapsed <= grace {
        return false;
    }
    // u128: no overflow for any rate or duration.
    (bytes as u128) * 1000 < (min_rate as u128) * elapsed.as_millis()
}

/// The deadline of one request head, from its first byte.
#[derive(Debug, Clone, Copy)]
pub struct HeadDeadline {
    started: Option<Instant>,
    limit: Duration,
}

impl HeadDeadline {
    pub fn new(limit: Duration) -> Self {
        HeadDeadline {
            started: None,
            limit,
        }
    }

    /// The first byte of a head arrived (later calls keep the first instant).
    pub fn start(&mut self, now: Instant) {
        self.started.get_or_insert(now);
    }

    /// The head is complete: the next one has its own deadline.
    pub fn reset(&mut self) {
        self.started = None;
    }

    pub fn is_started(&self) -> bool {
        self.started.is_some()
    }

    /// How long the head may still take, or `None` when no head is under way.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.started
            .map(|s| self.limit.saturating_sub(now.saturating_duration_since(s)))
    }

    pub fn expired(&self, now: Instant) -> bool {
        self.remaining(now).is_some_and(|r| r.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn bodies_get_a_grace_then_a_rate() {
        assert!(!body_too_slow(0, 10 * S, 30 * S, 500));
        assert!(body_too_slow(0, 31 * S, 30 * S, 500));
        assert!(!body_too_slow(500 * 31, 31 * S, 30 * S, 500));
        assert!(body_too_slow(500 * 31 - 1, 31 * S, 30 * S, 500));
        assert!(!body_too_slow(0, 3600 * S, 30 * S, 0));
    }

    #[test]
    fn a_head_deadline_runs_from_its_first_byte() {
        let t0 = Instant::now();
        let mut d = HeadDeadline::new(30 * S);
        assert_eq!(d.remaining(t0 + 100 * S), None);
        d.start(t0);
        d.start(t0 + 10 * S);
        assert_eq!(d.remaining(t0 + 10 * S), Some(20 * S));
        assert!(!d.expired(t0 + 29 * S));
        assert!(d.expired(t0 + 30 * S));
        d.reset();
        assert!(!d.expired(t0 + 100 * S));
    }

    proptest::proptest! {
        /// Faster never refuses where slower passed, and no input panics.
        #[test]
        fn monotone_in_bytes(bytes in 0u64..u64::MAX / 2, ms in 0u64..u64::MAX / 4, rate in 0u64..u64::MAX) {
            let e = Duration::from_millis(ms);
            if !body_too_slow(bytes, e, 30 * S, rate) {
                proptest::prop_assert!(!body_too_slow(bytes.saturating_mul(2), e, 30 * S, rate));
            }
        }
    }
}
