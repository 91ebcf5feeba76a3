//! The in-process limiter: GCRA state (one `u64` TAT) per hashed key, in sharded
//! maps with a hard bound on the number of keys.
//!
//! Memory stays bounded under a flood of distinct keys: a full shard first drops
//! keys whose bucket is full again (their state equals a fresh key's, so nothing is
//! lost), then the eighth of the keys closest to full. Sharding keeps two workers
//! from meeting on one lock unless they decide for keys of the same shard.

use std::hash::BuildHasherDefault;
use std::time::Instant;

use super::gcra::{decide, Outcome};
use crate::sharded::{IdentityHasher, ShardedMap};

const SHARDS: usize = 64;

pub struct LocalLimiter {
    /// Key hash → (TAT, bucket capacity in ns); `max(max_keys / SHARDS, 16)`
    /// keys a shard.
    keys: ShardedMap<u64, (u64, u64), BuildHasherDefault<IdentityHasher>>,
    epoch: Instant,
}

impl LocalLimiter {
    pub fn new(max_keys: usize) -> Self {
        LocalLimiter {
            keys: ShardedMap::new(SHARDS, Some(max_keys.max(16 * SHARDS))),
            epoch: Instant::now(),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// One decision for the key hash `key`.
    pub fn check(&self, key: u64, interval_ns: u64, burst: u64) -> Outcome {
        self.check_at(key, interval_ns, burst, self.now_ns())
    }

    pub fn check_at(&self, key: u64, interval_ns: u64, burst: u64, now: u64) -> Outcome {
        // A full shard forgets the keys whose bucket is full again, then those
        // that owe the least, relative to their own bucket: a client that
        // exhausted a tight limit is the last to be given a fresh start.
        let rank = |_: &u64, v: &(u64, u64)| (v.0 > now).then(|| debt(now, *v));
        self.keys.update_ranked(key, rank, |state| {
            let tat = state.map_or(0, |v| v.0);
            let (outcome, next) = decide(tat, now, interval_ns, burst);
            if let Some(next) = next {
                *state = Some((next, interval_ns.saturating_mul(burst).max(1)));
            }
            outcome
        })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// How used a bucket is, in millionths of its capacity (0: full again, 10^6: empty).
fn debt(now: u64, (tat, capacity): (u64, u64)) -> u64 {
    (u128::from(tat.saturating_sub(now)) * 1_000_000 / u128::from(capacity.max(1))) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_independent_and_memory_is_bounded() {
        let l = LocalLimiter::new(1024);
        let now = 1_000_000_000;
        assert!(l.check_at(1, 1_000_000, 1, now).allowed);
        assert!(!l.check_at(1, 1_000_000, 1, now).allowed);
        assert!(l.check_at(2, 1_000_000, 1, now).allowed);
        // A flood of distinct keys never grows past the bound.
        for k in 0..100_000u64 {
            l.check_at(k.wrapping_mul(0x9E37_79B9_7F4A_7C15), 1_000_000_000, 1, now);
        }
        assert!(l.len() <= 1024 + SHARDS, "{}", l.len());
    }

    #[test]
    fn other_keys_of_the_same_shard_do_not_reset_a_key() {
        let l = LocalLimiter::new(1024);
        let now = 5_000_000_000;
        // Key 7 is exhausted for 1 s.
        assert!(l.check_at(7, 1_000_000_000, 1, now).allowed);
        for k in 1..10u64 {
            l.check_at((7 << 58) | k, 1_000, 1, now);
        }
        assert!(!l.check_at(7, 1_000_000_000, 1, now + 10).allowed);
    }
}
