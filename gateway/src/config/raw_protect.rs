//! Stage one for the protection sections: `store:`, `rate_limits:` and `jails:`
//! (serde mirrors of the YAML, unknown keys refused).

use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// Cluster mode: rate-limit counters, bans and revocations shared through Redis.
    pub redis: Option<RawRedis>,
    /// Where single-node state (bans, offence counts) is kept across restarts.
    pub state_dir: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://[:password@]host:port/db`; `${VAR}` is expanded so the password
    /// can come from the environment.
    pub url: String,
    /// Prefix of every key and channel the gateway uses (default `galion:gw:`).
    pub prefix: Option<String>,
    /// Longest wait for one Redis answer before the local fallback decides.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Channel on which galion-auth publishes revocations (default `galion:revocations`).
    pub revocations_channel: Option<String>,
    /// Environment variable holding the secret (32 bytes or more, the same on
    /// every instance) that seals what the instances share through Redis and
    /// must stay secret: ACME certificates and their private keys.
    pub seal_key_env: Option<String>,
    /// File (0600/0400) holding that secret.
    pub seal_key_file: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimits {
    /// Applies to every route without its own `rate_limit`.
    pub default: Option<RawRateLimit>,
    /// Most keys tracked in memory by the local limiter (oldest state evicted beyond).
    pub max_keys: Option<usize>,
    /// Client networks no rate limit applies to (a load generator during a
    /// load test); bans, jails and connection caps still apply to them.
    pub exempt: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// `N/s`, `N/min` or `N/h`.
    pub rate: String,
    /// Requests allowed at once (the bucket size); default: N.
    pub burst: Option<u64>,
    /// `ip` (default), `user`, `api_key` or `header:NAME`.
    pub key: Option<String>,
    /// Count this route apart from the others (default: true on a route, false for
    /// `rate_limits.default`, which then is one budget across all routes).
    pub per_route: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJail {
    pub enabled: Option<bool>,
    /// Events that count against an IP; any one of them matches.
    pub on: Vec<RawJailOn>,
    pub maxretry: u32,
    #[serde(with = "humantime_serde")]
    pub findtime: Duration,
    #[serde(with = "humantime_serde")]
    pub bantime: Duration,
    pub bantime_increment: Option<RawIncrement>,
    #[serde(default)]
    pub ignoreip: Vec<String>,
    /// `reject` (403, default) or `drop` (close the connection).
    pub action: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIncrement {
    pub factor: Option<f64>,
    #[serde(default, with = "humantime_serde")]
    pub maxtime: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJailOn {
    /// Route name (any route when absent).
    pub route: Option<String>,
    /// Response status codes that count.
    pub status: Option<Vec<u16>>,
    /// `auth_rejected`, `rate_limited` or `malformed`.
    pub event: Option<String>,
    /// For `auth_rejected`: only these reasons (e.g. `expired`, `signature`).
    pub reasons: Option<Vec<String>>,
}
