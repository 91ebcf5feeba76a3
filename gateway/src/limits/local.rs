//! The in-process limiter: GCRA state (one `u64` TAT) per hashed key, in sharded
//! maps with a hard bound on the number of keys.
//!
//! Memory stays bounded under a flood of distinct keys: a full shard first drops
//! keys whose bucket is full again (their state equals a fresh key's, so nothing is
//! lost), then the eighth of the keys closest to full. Sharding keeps two workers
//! from meeting on one lock unless they decide for keys of the same shard.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::time::Instant;

use super::gcra::{decide, Outcome};

const SHARDS: usize = 64;

/// Keys are already uniformly distributed 64-bit hashes: hashing them again is waste.
#[derive(Default)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Key hash → (TAT, bucket capacity in ns).
type Shard = HashMap<u64, (u64, u64), BuildHasherDefault<IdentityHasher>>;

pub struct LocalLimiter {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    epoch: Instant,
}

impl LocalLimiter {
    pub fn new(max_keys: usize) -> Self {
        LocalLimiter {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: (max_keys / SHARDS).max(16),
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
        // The high bits pick the shard; the map's own buckets use the low bits.
        let shard = &self.shards[((key >> 58) as usize) % SHARDS];
        let mut m = shard.lock().unwrap_or_else(|p| p.into_inner());
        let tat = m.get(&key).map_or(0, |v| v.0);
        let (outcome, next) = decide(tat, now, interval_ns, burst);
        if let Some(next) = next {
            if tat == 0 && m.len() >= self.per_shard {
                evict(&mut m, now, self.per_shard);
            }
            m.insert(key, (next, interval_ns.saturating_mul(burst).max(1)));
        }
        outcome
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How used a bucket is, in millionths of its capacity (0: full again, 10^6: empty).
fn debt(now: u64, (tat, capacity): (u64, u64)) -> u64 {
    (u128::from(tat.saturating_sub(now)) * 1_000_000 / u128::from(capacity.max(1))) as u64
}

fn evict(m: &mut Shard, now: u64, cap: usize) {
    m.retain(|_, v| v.0 > now);
    if m.len() < cap {
        return;
    }
    // Forget the keys that owe the least, relative to their own bucket: a client
    // that exhausted a tight limit is the last to be given a fresh start.
    let mut debts: Vec<u64> = m.values().map(|v| debt(now, *v)).collect();
    let cut = (cap / 8).max(1).min(debts.len() - 1);
    let (_, threshold, _) = debts.select_nth_unstable(cut);
    let threshold = *threshold;
    m.retain(|_, v| debt(now, *v) > threshold);
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
