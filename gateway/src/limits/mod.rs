//! Rate limiting: GCRA per (policy, key), decided in process or, in cluster mode,
//! by one atomic Redis script so every gateway instance shares one budget.
//!
//! The limiter outlives configuration reloads (its state is keyed by the policy's
//! id, so unchanged policies keep their counters). When Redis is unreachable the
//! local limiter decides, so limits stay enforced on each instance.

pub mod gcra;
pub mod headers;
pub mod local;
pub mod pace;

use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::cluster::RedisLink;
use crate::config::RatePolicy;
pub use gcra::Outcome;
use local::LocalLimiter;
pub use pace::{body_too_slow, HeadDeadline};

/// What a limit counts: a (grouped) client IP or an identity/header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyValue<'a> {
    Ip(IpAddr),
    Text(&'a [u8]),
}

/// Atomic GCRA in Redis, on Redis' own clock so instances never disagree on time.
/// Times in microseconds; returns {allowed, remaining, reset_us, retry_after_us}.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local cap = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local nxt = tat + interval
local used = nxt - now
if used > cap then
  return {0, 0, tat - now, used - cap}
end
redis.call('SET', KEYS[1], string.format('%.0f', nxt), 'PX', math.ceil(used / 1000) + 1000)
return {1, math.floor((cap - used) / interval), used, 0}
";

pub struct RateLimiter {
    local: LocalLimiter,
    hasher: std::collections::hash_map::RandomState,
    script: redis::Script,
}

impl RateLimiter {
    pub fn new(max_keys: usize) -> Self {
        RateLimiter {
            local: LocalLimiter::new(max_keys),
            hasher: Default::default(),
            script: redis::Script::new(SCRIPT),
        }
    }

    /// Decides one request of `key` under `policy`.
    pub async fn check(
        &self,
        policy: &RatePolicy,
        key: KeyValue<'_>,
        redis: Option<&RedisLink>,
    ) -> Outcome {
        if let Some(link) = redis {
            if let Some(o) = self.check_redis(link, policy, key).await {
                return o;
            }
        }
        self.check_local(policy, key)
    }

    pub fn check_local(&self, policy: &RatePolicy, key: KeyValue<'_>) -> Outcome {
        let mut h = self.hasher.build_hasher();
        policy.id.hash(&mut h);
        key.hash_into(&mut h);
        self.local
            .check(h.finish(), policy.interval_ns(), policy.burst)
    }

    async fn check_redis(
        &self,
        link: &RedisLink,
        policy: &RatePolicy,
        key: KeyValue<'_>,
    ) -> Option<Outcome> {
        let redis_key = format!(
            "{}rl:{}:{}",
            link.config.prefix,
            policy.id,
            key.redis_form()
        );
        let interval_us = (policy.interval_ns() / 1000).max(1);
        let burst = policy.burst;
        let script = &self.script;
        let r: Vec<i64> = link
            .run("rate_limit", |mut c| async move {
                script
                    .key(redis_key)
                    .arg(interval_us)
                    .arg(burst)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let us = |i: usize| r.get(i).copied().unwrap_or(0).max(0) as u64 * 1000;
        Some(Outcome {
            allowed: r.first().copied() == Some(1),
            remaining: r.get(1).copied().unwrap_or(0).max(0) as u64,
            reset_ns: us(2),
            retry_after_ns: us(3),
        })
    }

    pub fn tracked_keys(&self) -> usize {
        self.local.len()
    }
}

impl KeyValue<'_> {
    fn hash_into<H: Hasher>(&self, h: &mut H) {
        match self {
            KeyValue::Ip(ip) => {
                0u8.hash(h);
                ip.hash(h);
            }
            KeyValue::Text(t) => {
                1u8.hash(h);
                t.hash(h);
            }
        }
    }

    /// The key's part of a Redis key: the IP, or a digest of the text (bounded size,
    /// and nothing a client sent ends up verbatim in Redis).
    fn redis_form(&self) -> String {
        match self {
            KeyValue::Ip(ip) => format!("i:{ip}"),
            KeyValue::Text(t) => {
                let d = Sha256::digest(t);
                format!("t:{}", hex::encode(&d[..12]))
            }
        }
    }
}

/// The limiter shared by every snapshot (created once per process).
pub type SharedLimiter = Arc<RateLimiter>;
