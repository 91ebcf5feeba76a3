//! The generic cell rate algorithm (GCRA): one timestamp per key — the theoretical
//! arrival time (TAT) of the next request at the steady rate — gives an exact
//! token bucket without a refill timer. Shared by the local limiter and, in Lua, by
//! the Redis script, so both decide identically.

/// The outcome of one decision, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    /// Requests that would still be allowed right now.
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset_ns: u64,
    /// Until the next request can pass (0 when allowed).
    pub retry_after_ns: u64,
}

/// Decides one request at `now`; returns the outcome and the TAT to store (`None`
/// when refused: a refused request costs nothing).
pub fn decide(tat: u64, now: u64, interval: u64, burst: u64) -> (Outcome, Option<u64>) {
    let interval = interval.max(1);
    let capacity = interval.saturating_mul(burst.max(1));
    let tat = tat.max(now);
    let next = tat.saturating_add(interval);
    let used = next - now;
    if used > capacity {
        return (
            Outcome {
                allowed: false,
                remaining: 0,
                reset_ns: tat - now,
                retry_after_ns: used - capacity,
            },
            None,
        );
    }
    (
        Outcome {
            allowed: true,
            remaining: (capacity - used) / interval,
            reset_ns: used,
            retry_after_ns: 0,
        },
        Some(next),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn burst_then_steady_rate() {
        // 10/s (100 ms apart), burst 3.
        let mut tat = 0;
        let now = 1_000 * MS;
        for i in 0..3 {
            let (o, t) = decide(tat, now, 100 * MS, 3);
            assert!(o.allowed, "request {i}");
            assert_eq!(o.remaining, 2 - i);
            tat = t.unwrap();
        }
        let (o, t) = decide(tat, now, 100 * MS, 3);
        assert!(!o.allowed);
        assert_eq!(t, None);
        assert_eq!(o.retry_after_ns, 100 * MS);
        // One interval later exactly one more passes.
        let (o, t) = decide(tat, now + 100 * MS, 100 * MS, 3);
        assert!(o.allowed);
        assert_eq!(o.remaining, 0);
        assert!(!decide(t.unwrap(), now + 100 * MS, 100 * MS, 3).0.allowed);
    }

    proptest! {
        /// Over any window, accepted ≤ burst + elapsed/interval (never more than the
        /// allowance), and a client pacing at exactly the rate is never refused.
        #[test]
        fn never_exceeds_the_allowance(
            gaps in proptest::collection::vec(0u64..50 * MS, 1..400),
            interval_ms in 1u64..200,
            burst in 1u64..20,
        ) {
            let interval = interval_ms * MS;
            let start = 10_000 * MS;
            let (mut now, mut tat, mut accepted) = (start, 0u64, 0u64);
            for g in gaps {
                now += g;
                let (o, t) = decide(tat, now, interval, burst);
                if o.allowed {
                    accepted += 1;
                    tat = t.unwrap();
                } else {
                    prop_assert!(o.retry_after_ns > 0);
                }
            }
            prop_assert!(accepted <= burst + (now - start) / interval);
        }

        #[test]
        fn pacing_at_the_rate_always_passes(interval_ms in 1u64..1000, burst in 1u64..5, n in 1usize..200) {
            let interval = interval_ms * MS;
            let mut tat = 0;
            for i in 0..n as u64 {
                let (o, t) = decide(tat, 1 + i * interval, interval, burst);
                prop_assert!(o.allowed);
                tat = t.unwrap();
            }
        }
    }
}
