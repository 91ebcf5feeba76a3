//! Stage two of config loading: validated, typed configuration.
//!
//! Values here are already checked (addresses parsed, regexes compiled, references
//! resolved), so the snapshot builder and the proxy never re-validate anything.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use indexmap::IndexMap;
use regex::Regex;

pub use super::policy::{
    AccessRule, ApiKeyConfig, AuthConfig, AuthMode, CorsConfig, JwtConfig, Limits, OriginPattern,
    RevocationConfig, SecurityHeaders,
};
pub use super::protect::{
    BanAction, EventKind, JailCondition, JailConfig, LimitKey, RateLimitConfig, RatePolicy,
    RedisConfig, StoreConfig,
};
pub use super::shaping::{CacheStoreConfig, Compression, KeyQuery, RouteCache};
pub use super::trust::TrustedProxies;

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
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HashKey {
    Ip,
    Path,
    Header(HeaderName),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    ConsistentHash(HashKey),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheckConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: usize,
    pub unhealthy_threshold: usize,
    pub host: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    /// Per-write timeout; off by default (each timed write costs a timer, and the
    /// read timeout already bounds a stalled upstream).
    pub write: Option<Duration>,
    pub idle: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PassiveConfig {
    /// Consecutive failures before a server is ejected; 0 disables ejection.
    pub max_fails: u32,
    pub cooldown: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamConfig {
    pub name: String,
    pub servers: Vec<ServerConfig>,
    pub balance: Balance,
    pub health_check: Option<HealthCheckConfig>,
    pub timeouts: Timeouts,
    /// Extra attempts after the first one (on another server when possible).
    pub retries: u32,
    pub passive: PassiveConfig,
    pub host_header: Option<String>,
    pub tls: Option<UpstreamTls>,
}

/// TLS to upstream servers; certificates are kept as DER (checked at load).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    pub sni: String,
    pub verify: bool,
    pub ca: Option<Vec<Vec<u8>>>,
    /// (certificate chain, PKCS#8/PKCS#1/SEC1 key) for mTLS.
    pub client: Option<(Vec<Vec<u8>>, Vec<u8>)>,
}

#[derive(Debug, Clone)]
pub struct HostConfig {
    pub name: String,
    pub aliases: Vec<String>,
    pub is_default: bool,
    pub routes: Vec<RouteConfig>,
    pub security: SecurityHeaders,
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl PathMatch {
    pub fn describe(&self) -> String {
        match self {
            PathMatch::Exact(p) => format!("exact {p}"),
            PathMatch::Prefix(p) => format!("prefix {p}"),
            PathMatch::Regex(r) => format!("regex {}", r.as_str()),
        }
    }
}

/// What a route does with a request that passed its policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAction {
    /// Proxy to the named upstream pool.
    Upstream(String),
    /// Refuse at the gateway (403 or 404), before any policy: the path is
    /// treated as if nothing were there.
    Deny {
        status: u16,
    },
    /// A fixed answer (`/robots.txt`, a maintenance page).
    Respond(std::sync::Arc<FixedResponse>),
    Redirect(std::sync::Arc<RedirectConfig>),
}

impl RouteAction {
    pub fn upstream(&self) -> Option<&str> {
        match self {
            RouteAction::Upstream(u) => Some(u),
            _ => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            RouteAction::Upstream(u) => format!("upstream {u}"),
            RouteAction::Deny { status } => format!("deny {status}"),
            RouteAction::Respond(r) => format!("respond {}", r.status),
            RouteAction::Redirect(r) => format!("redirect {} {}", r.status, r.to),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedResponse {
    pub status: u16,
    pub body: bytes::Bytes,
    pub content_type: HeaderValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectConfig {
    pub status: u16,
    pub to: String,
    pub preserve_path: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    None,
    /// Remove the matched prefix (keeping a leading `/`).
    StripPrefix,
    /// Exact/prefix: replace the matched part; regex: expand `$1`-style captures.
    Replace(String),
}

#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub matcher: PathMatch,
    /// `None` accepts every method.
    pub methods: Option<Vec<Method>>,
    pub action: RouteAction,
    pub rewrite: Rewrite,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub access: AccessRule,
    pub cors: Option<CorsConfig>,
    pub max_body: Option<u64>,
    pub allow_plain: bool,
    /// The route's own policy, else `rate_limits.default`; `None` when off.
    pub rate_limit: Option<std::sync::Arc<RatePolicy>>,
    pub cache: Option<std::sync::Arc<RouteCache>>,
    pub compress: Option<std::sync::Arc<Compression>>,
}

#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    pub certs: Vec<std::sync::Arc<crate::tls::certs::LoadedCert>>,
    pub default: Option<usize>,
    pub acme_webroot: Option<PathBuf>,
    pub redirect_http: bool,
    /// SHA-256 over every certificate and key file: a reload applies when it changes.
    pub fingerprint: String,
}

/// A non-fatal finding (e.g. a route that can never match).
#[derive(Debug, Clone)]
pub struct ConfigWarning {
    pub line: Option<usize>,
    pub path: String,
    pub message: String,
}
