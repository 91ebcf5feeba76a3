//! Stage two of config loading: validated, typed configuration.
//!
//! Values here are already checked (addresses parsed, regexes compiled, references
//! resolved), so the snapshot builder and the proxy never re-validate anything.
//!
//! The root [`Config`] and its top-level settings are defined here; each section's
//! types are defined beside their validation (`policy`, `protect`, `shaping`,
//! `trust`, `tls`, `upstream`, `hosts`) and handed on from here, so that
//! `config::Name` reaches every one of them. No section module imports this file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use indexmap::IndexMap;

pub use super::error::ConfigWarning;
pub use super::hosts::{
    FixedResponse, HeaderOps, HostConfig, PathMatch, RedirectConfig, Rewrite, RouteAction,
    RouteConfig,
};
pub use super::policy::{
    AccessRule, ApiKeyConfig, AuthConfig, AuthMode, CorsConfig, JwtConfig, Limits, OriginPattern,
    RevocationConfig, SecurityHeaders,
};
pub use super::protect::{
    BanAction, EventKind, JailCondition, JailConfig, LimitKey, RateLimitConfig, RatePolicy,
    RedisConfig, Reject, StoreConfig,
};
pub use super::shaping::{CacheStoreConfig, Compression, KeyQuery, RouteCache};
pub use super::statics::{CacheRule, StaticSite};
pub use super::tls::{AcmeChallenge, AcmeConfig, TlsConfig};
pub use super::trust::TrustedProxies;
pub use super::upstream::{
    Balance, HashKey, HealthCheckConfig, PassiveConfig, ServerConfig, Timeouts, UpstreamConfig,
    UpstreamTls,
};

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Listen,
    pub server: ServerSettings,
    pub trusted_proxies: TrustedProxies,
    pub admin: AdminSettings,
    pub access_log: AccessLogSettings,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub limits: Limits,
    pub store: StoreConfig,
    pub cache: CacheStoreConfig,
    pub rate_limits: RateLimitConfig,
    pub jails: Vec<JailConfig>,
    pub upstreams: IndexMap<String, UpstreamConfig>,
    pub hosts: Vec<HostConfig>,
    /// Hex SHA-256 of the file's bytes, shown by `/admin/config`.
    pub content_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub admin: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    pub threads: usize,
    pub work_stealing: bool,
    pub grace_period: Duration,
    pub graceful_shutdown_timeout: Duration,
    pub upstream_keepalive_pool_size: usize,
    pub keepalive_requests: Option<u32>,
    /// A write to a client that makes no progress for this long ends the
    /// connection: a client that stops reading does not hold an upstream
    /// connection and its buffers for ever.
    pub send_timeout: Duration,
    /// Bytes of each client connection's write buffer. A response with a known
    /// length is written in one system call when its head and body fit.
    pub write_buffer: usize,
    /// HTTP/1.1 GET/HEAD requests to routes without per-request policies are
    /// proxied by the gateway's own HTTP/1 path instead of pingora-proxy's.
    pub fast_path: bool,
    /// Deadline for a whole HTTP/1 request head, from its first byte: a client
    /// trickling header lines never holds a connection longer.
    pub header_timeout: Duration,
    /// Bytes per second a request body must average once it has taken longer
    /// than `header_timeout`; 0: no minimum.
    pub min_body_rate: u64,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct AdminSettings {
    /// SHA-256 digests of the accepted bearer tokens; empty refuses every admin call.
    pub token_sha256: Vec<[u8; 32]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogSettings {
    pub enabled: bool,
    pub target: LogTarget,
    /// Query parameters whose values are written as `REDACTED` (lowercase names).
    pub redact_query: std::sync::Arc<[String]>,
}

/// Query parameters that carry secrets often enough to be redacted unless
/// the operator lists their own (`access_log.redact_query`).
pub const DEFAULT_REDACTED_QUERY: [&str; 10] = [
    "access_token",
    "refresh_token",
    "id_token",
    "token",
    "code",
    "password",
    "api_key",
    "key",
    "secret",
    "signature",
];
