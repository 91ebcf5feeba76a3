//! Stage one of config loading: serde structs that mirror the YAML exactly.
//!
//! Every struct denies unknown keys. Items that an operator edits often (upstreams,
//! hosts, routes, top-level sections) are wrapped in [`Lenient`], so one broken item
//! does not hide the errors of the others: `check` reports them all at once.

use std::time::Duration;

use indexmap::IndexMap;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use super::error::{KeyPath, Seg};
pub use super::raw_protect::*;

/// A value that failed to deserialize keeps its error (with the key path inside the
/// value) instead of aborting the whole document.
#[derive(Debug)]
pub enum Lenient<T> {
    Ok(T),
    Err { path: KeyPath, message: String },
}

impl<T: Default> Default for Lenient<T> {
    fn default() -> Self {
        Lenient::Ok(T::default())
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_norway::Value::deserialize(d)?;
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(t) => Ok(Lenient::Ok(t)),
            Err(e) => {
                let mut segs: Vec<Seg> = e
                    .path()
                    .iter()
                    .filter_map(|s| match s {
                        serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
                        serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
                        serde_path_to_error::Segment::Enum { variant } => {
                            Some(Seg::Key(variant.clone()))
                        }
                        serde_path_to_error::Segment::Unknown => None,
                    })
                    .collect();
                let message = e.into_inner().to_string();
                // Point unknown-key errors at the key itself, not at its parent.
                if let Some(field) = unknown_field_name(&message) {
                    if segs.last() != Some(&Seg::Key(field.to_owned())) {
                        segs.push(Seg::Key(field.to_owned()));
                    }
                }
                Ok(Lenient::Err {
                    path: KeyPath(segs),
                    message,
                })
            }
        }
    }
}

fn unknown_field_name(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub listen: Lenient<RawListen>,
    #[serde(default)]
    pub server: Lenient<RawServer>,
    #[serde(default)]
    pub trusted_proxies: Lenient<RawTrustedProxies>,
    #[serde(default)]
    pub admin: Lenient<RawAdmin>,
    #[serde(default)]
    pub access_log: Lenient<RawAccessLog>,
    #[serde(default)]
    pub tls: Lenient<RawTls>,
    #[serde(default)]
    pub auth: Lenient<RawAuth>,
    #[serde(default)]
    pub limits: Lenient<RawLimits>,
    #[serde(default)]
    pub cache: Lenient<RawCacheStore>,
    #[serde(default)]
    pub store: Lenient<RawStore>,
    #[serde(default)]
    pub rate_limits: Lenient<RawRateLimits>,
    #[serde(default)]
    pub jails: IndexMap<String, Lenient<RawJail>>,
    #[serde(default)]
    pub upstreams: IndexMap<String, Lenient<RawUpstream>>,
    #[serde(default)]
    pub hosts: IndexMap<String, Lenient<RawHost>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    pub http: Option<String>,
    pub https: Option<String>,
    pub admin: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub threads: Option<usize>,
    pub work_stealing: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub grace_period: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub graceful_shutdown_timeout: Option<Duration>,
    pub upstream_keepalive_pool_size: Option<usize>,
    pub keepalive_requests: Option<u32>,
    /// How long a client may take to accept more of a response (nginx's
    /// `send_timeout`).
    #[serde(default, with = "humantime_serde")]
    pub send_timeout: Option<Duration>,
    /// Per-connection write buffer of the proxy listeners (default `16KiB`).
    pub write_buffer: Option<RawSize>,
    /// Serve plain HTTP/1.1 GET/HEAD requests of simple routes on the fast path.
    pub fast_path: Option<bool>,
    /// The whole request head must arrive within this (nginx's
    /// `client_header_timeout`).
    #[serde(default, with = "humantime_serde")]
    pub header_timeout: Option<Duration>,
    /// A request body slower than this (bytes per second, averaged once it has
    /// taken longer than `header_timeout`) is cut off with 408; `0` turns it off.
    pub min_body_rate: Option<RawSize>,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
}

/// `trusted_proxies:`: a list of CIDRs, or `{networks, cloudflare}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawTrustedProxies {
    List(Vec<String>),
    Full(RawTrustedFull),
}

impl Default for RawTrustedProxies {
    fn default() -> Self {
        RawTrustedProxies::List(Vec::new())
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTrustedFull {
    #[serde(default)]
    pub networks: Vec<String>,
    pub cloudflare: Option<RawCdnRanges>,
}

/// `builtin`, or the CIDRs themselves.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawCdnRanges {
    Named(String),
    List(Vec<String>),
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    #[serde(default)]
    pub token_sha256: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    pub enabled: Option<bool>,
    /// `stdout` (default) or a file path.
    pub path: Option<String>,
    /// Query parameter names whose values are logged as `REDACTED` (default:
    /// common secret names; `[]` logs every value).
    pub redact_query: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawServerEntry {
    Addr(String),
    Full(RawServerFull),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerFull {
    pub addr: String,
    pub weight: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub servers: Vec<RawServerEntry>,
    pub balance: Option<String>,
    pub hash_key: Option<String>,
    pub health_check: Option<RawHealthCheck>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    pub retries: Option<u32>,
    pub passive: Option<RawPassive>,
    /// Host header sent upstream; default: the client's.
    pub host_header: Option<String>,
    /// TLS to the upstream servers.
    pub tls: Option<RawUpstreamTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// Server name sent and verified (default: the host_header, else none).
    pub sni: Option<String>,
    /// PEM file of the CA(s) to trust (default: the system's roots).
    pub ca: Option<String>,
    /// Verify the certificate chain and name (default true).
    pub verify: Option<bool>,
    /// Client certificate chain and key (PEM) for mTLS.
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub healthy_threshold: Option<usize>,
    pub unhealthy_threshold: Option<usize>,
    pub host: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    #[serde(default, with = "humantime_serde")]
    pub connect: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub read: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub write: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub idle: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPassive {
    pub max_fails: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub cooldown: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHost {
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub default: bool,
    #[serde(default)]
    pub routes: Vec<Lenient<RawRoute>>,
    /// Default access rule of the host's routes.
    pub auth: Option<RawAuthRule>,
    pub roles: Option<Vec<String>>,
    pub cors: Option<RawCors>,
    pub security_headers: Option<RawSecurityHeaders>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
    pub methods: Option<Vec<String>>,
    /// What the route does: exactly one of `upstream`, `deny`, `respond`,
    /// `redirect`, `static`.
    pub upstream: Option<String>,
    /// Answer at the gateway without a backend: `403`, `404` (or `true`: 404).
    pub deny: Option<RawDeny>,
    pub respond: Option<RawRespond>,
    pub redirect: Option<RawRedirect>,
    /// Serve files from a directory (`static: { root: DIR, ... }`).
    #[serde(rename = "static")]
    pub static_files: Option<RawStatic>,
    #[serde(default)]
    pub strip_prefix: bool,
    pub rewrite: Option<String>,
    #[serde(default)]
    pub request_headers: RawHeaderOps,
    #[serde(default)]
    pub response_headers: RawHeaderOps,
    pub auth: Option<RawAuthRule>,
    pub roles: Option<Vec<String>>,
    pub cors: Option<RawCors>,
    /// Largest request body accepted (413 beyond), e.g. `1MiB`.
    pub max_body: Option<RawSize>,
    /// Served over plain HTTP too instead of redirecting to HTTPS.
    #[serde(default)]
    pub allow_plain: bool,
    /// `off`, or `{rate, burst, key, per_route}` (checked in stage two).
    pub rate_limit: Option<serde_norway::Value>,
    pub cache: Option<RawRouteCache>,
    pub compress: Option<RawCompress>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum RawDeny {
    Flag(bool),
    Status(u16),
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawRespond {
    pub status: Option<u16>,
    #[serde(default)]
    pub body: String,
    pub content_type: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawRedirect {
    /// An absolute URL or a path.
    pub to: String,
    pub status: Option<u16>,
    /// Append the request's path and query to `to` (host moves: `www.` → apex).
    #[serde(default)]
    pub preserve_path: bool,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawStatic {
    /// The directory served; request paths resolve under it.
    pub root: String,
    /// The file a directory answers with (default `index.html`).
    pub index: Option<String>,
    /// `true`: a missing path without an extension answers the index (a
    /// single-page app's client-side route); a file name: that file instead;
    /// `false` (default): 404.
    pub spa_fallback: Option<RawFallback>,
    /// `Cache-Control` by path pattern, first match wins.
    #[serde(default)]
    pub cache_control: Vec<RawCacheRule>,
    /// Serve `.br`/`.zst`/`.gz` siblings to clients that accept them (default true).
    pub precompressed: Option<bool>,
    /// Follow symlinks whose target lies outside the root (default false).
    #[serde(default)]
    pub outside_symlinks: bool,
    /// Keep files up to 64 KiB in memory, looked up again on disk at most
    /// once a second (default true).
    pub memory_cache: Option<bool>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum RawFallback {
    Flag(bool),
    File(String),
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawCacheRule {
    pub pattern: String,
    pub value: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderOps {
    #[serde(default)]
    pub set: IndexMap<String, String>,
    #[serde(default)]
    pub add: IndexMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A byte size: a number, or a string such as `512KiB`, `10MB`, `1MiB`.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawCacheStore {
    /// Total bytes of cached bodies kept in memory (default 256MiB).
    pub max_size: Option<RawSize>,
    /// Larger responses are passed through, never stored (default 8MiB).
    pub max_object_size: Option<RawSize>,
    /// How long concurrent misses wait for the one request that fills the entry.
    #[serde(default, with = "humantime_serde")]
    pub lock_timeout: Option<Duration>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawRouteCache {
    /// Freshness when the upstream gives none (no max-age/s-maxage/Expires).
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// Upper bound on any freshness, including the upstream's.
    #[serde(default, with = "humantime_serde")]
    pub max_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub stale_while_revalidate: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub stale_if_error: Option<Duration>,
    /// Request headers that select a variant even when the upstream's Vary omits them.
    #[serde(default)]
    pub vary_headers: Vec<String>,
    /// `all` (default), `none`, or a list of query parameter names.
    pub key_query: Option<serde_norway::Value>,
    /// Cache answers to requests with credentials, keyed by the caller's identity.
    #[serde(default)]
    pub private: bool,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawCompress {
    /// Any of gzip, br, zstd (default: all three); the client's preference picks.
    pub encodings: Option<Vec<String>>,
    /// Smaller bodies are sent as they are (default 1KiB).
    pub min_size: Option<RawSize>,
    /// Content-type prefixes to compress (default: text/, JSON, JS, XML, SVG, wasm).
    pub types: Option<Vec<String>>,
    /// 1..=9 (default 5).
    pub level: Option<u32>,
}

/// `public | jwt | api_key | any`, or `{any: [jwt, api_key]}`.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum RawAuthRule {
    Mode(String),
    Any { any: Vec<String> },
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub jwt: Option<RawJwt>,
    #[serde(default)]
    pub api_keys: Vec<RawApiKey>,
    pub revocation: Option<RawRevocation>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    pub jwks_url: Option<String>,
    pub jwks_file: Option<String>,
    /// Name of the environment variable holding an HS256 secret.
    pub hs256_secret_env: Option<String>,
    /// File (0600/0400) holding an HS256 secret.
    pub hs256_secret_file: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    pub leeway: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub refresh_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub min_refresh_interval: Option<Duration>,
    /// Also accept the token from this cookie.
    pub cookie: Option<String>,
    pub cache_entries: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    pub name: String,
    pub sha256: String,
    #[serde(default)]
    pub roles: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRevocation {
    pub url: String,
    pub token_env: Option<String>,
    pub token_file: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_header_bytes: Option<RawSize>,
    pub max_body: Option<RawSize>,
    pub max_connections_per_ip: Option<u32>,
    /// IPv6 clients are grouped by this prefix length for limits and bans (default 64).
    pub ipv6_prefix: Option<u8>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    pub allow_origins: Vec<String>,
    pub allow_methods: Option<Vec<String>>,
    pub allow_headers: Option<Vec<String>>,
    pub expose_headers: Option<Vec<String>>,
    #[serde(default)]
    pub allow_credentials: bool,
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawSecurityHeaders {
    pub enabled: Option<bool>,
    pub hsts: Option<String>,
    pub content_type_options: Option<String>,
    pub frame_options: Option<String>,
    pub referrer_policy: Option<String>,
    pub csp: Option<String>,
    /// Replace an upstream's own value (default: the upstream's value wins).
    #[serde(default, rename = "override")]
    pub override_upstream: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    #[serde(default)]
    pub certificates: Vec<RawCertificate>,
    /// certbot's `--webroot -w` directory: `<dir>/.well-known/acme-challenge/<token>`
    /// is served at `/.well-known/acme-challenge/<token>` over plain HTTP.
    pub acme_webroot: Option<String>,
    /// Plain HTTP redirects to HTTPS (308) when an HTTPS listener exists (default true).
    pub redirect_http: Option<bool>,
    pub acme: Option<RawAcme>,
}

/// `tls.acme`: certificates ordered from an ACME CA (Let's Encrypt by default).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    /// Contact address given to the CA (expiry and policy mails).
    pub email: Option<String>,
    /// The CA's directory URL (default: Let's Encrypt).
    pub directory: Option<String>,
    /// Let's Encrypt's staging directory (untrusted certificates, high limits).
    #[serde(default)]
    pub staging: bool,
    /// A PEM root to trust for the directory's own HTTPS (a private CA).
    pub ca_root: Option<String>,
    /// `http-01` (default when an HTTP listener exists) or `tls-alpn-01`.
    pub challenge: Option<String>,
    /// Hosts (keys of `hosts:`) that get a certificate: its name and aliases.
    pub hosts: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub hosts: Vec<String>,
    pub cert: String,
    pub key: String,
    #[serde(default)]
    pub default: bool,
}
