//! Cluster mode: the Redis link shared by rate limits, bans and revocations, and
//! the background service that keeps it (and the local ban state) in shape.

mod link;
pub mod service;

pub use link::RedisLink;
pub use service::ProtectService;

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
