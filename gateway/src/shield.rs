//! Process-wide protection state (rate-limit counters, bans): it survives
//! configuration reloads, unlike the snapshot.

use crate::bans::Bans;
use crate::limits::RateLimiter;

/// Process-wide protection state: it survives configuration reloads.
pub struct Shield {
    pub limiter: RateLimiter,
    pub bans: Bans,
}

impl Shield {
    pub fn new(max_keys: usize) -> Self {
        Shield {
            limiter: RateLimiter::new(max_keys),
            bans: Bans::default(),
        }
    }
}
