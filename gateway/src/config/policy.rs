//! Access-control and response-shaping settings: JWT, API keys, revocation, CORS,
//! security headers and request limits (types and their validation).

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::check::{header_name, method, Checker};
use super::error::KeyPath;
use super::raw::*;

// Shared with other sections, these two live in `check`; they stay reachable here
// at their old paths.
pub use super::check::{parse_size, read_private_file};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    #[default]
    Public,
    Jwt,
    ApiKey,
    /// A valid JWT or a valid API key.
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccessRule {
    pub mode: AuthMode,
    /// The identity needs at least one of these roles (empty: any identity).
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    pub jwks_url: Option<String>,
    pub jwks_file: Option<PathBuf>,
    pub hs256_secret: Option<Vec<u8>>,
    pub issuer: Option<String>,
    pub audience: Option<Vec<String>>,
    pub leeway: Duration,
    pub refresh_interval: Duration,
    pub min_refresh_interval: Duration,
    pub cookie: Option<String>,
    pub cache_entries: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyConfig {
    pub name: String,
    pub sha256: [u8; 32],
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationConfig {
    pub url: String,
    pub token: Option<String>,
    pub interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthConfig {
    pub jwt: Option<JwtConfig>,
    pub api_keys: Vec<ApiKeyConfig>,
    pub revocation: Option<RevocationConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_header_bytes: u64,
    pub max_body: Option<u64>,
    pub max_connections_per_ip: Option<u32>,
    pub ipv6_prefix: u8,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 32 * 1024,
            max_body: None,
            max_connections_per_ip: None,
            ipv6_prefix: 64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    Exact(String),
    /// `https://*.galion.app`: scheme + `://` and the suffix starting with `.`.
    Subdomains {
        scheme: String,
        suffix: String,
    },
    Any,
}

#[derive(Debug, Clone)]
pub struct CorsConfig {
    pub origins: Vec<OriginPattern>,
    pub methods: HeaderValue,
    pub headers: Option<HeaderValue>,
    pub expose: Option<HeaderValue>,
    pub credentials: bool,
    pub max_age: HeaderValue,
}

#[derive(Debug, Clone, Default)]
pub struct SecurityHeaders {
    /// Sent on every response (unless the upstream set its own and `override` is off).
    pub always: Vec<(HeaderName, HeaderValue)>,
    /// `Strict-Transport-Security`, only on HTTPS responses.
    pub hsts: Option<HeaderValue>,
    pub override_upstream: bool,
}

pub fn access_rule(
    c: &mut Checker,
    at: &KeyPath,
    rule: Option<&RawAuthRule>,
    roles: Option<&Vec<String>>,
    inherited: &AccessRule,
) -> AccessRule {
    let mode = match rule {
        None => inherited.mode,
        Some(RawAuthRule::Mode(m)) => {
            match m.as_str() {
                "public" => AuthMode::Public,
                "jwt" => AuthMode::Jwt,
                "api_key" => AuthMode::ApiKey,
                "any" => AuthMode::Any,
                other => {
                    c.err(
                    &at.key("auth"),
                    format!("{other:?}: expected public, jwt, api_key, any or {{any: [jwt, api_key]}}"),
                );
                    AuthMode::Public
                }
            }
        }
        Some(RawAuthRule::Any { any }) => {
            let jwt = any.iter().any(|m| m == "jwt");
            let key = any.iter().any(|m| m == "api_key");
            if any.iter().any(|m| m != "jwt" && m != "api_key") || any.is_empty() {
                c.err(&at.key("auth").key("any"), "list jwt and/or api_key");
            }
            match (jwt, key) {
                (true, true) => AuthMode::Any,
                (true, false) => AuthMode::Jwt,
                (false, true) => AuthMode::ApiKey,
                (false, false) => AuthMode::Public,
            }
        }
    };
    let roles = match (rule, roles) {
        (_, Some(r)) => r.clone(),
        // A new mode without roles does not inherit the host's roles.
        (Some(_), None) => Vec::new(),
        (None, None) => inherited.roles.clone(),
    };
    if mode == AuthMode::Public && !roles.is_empty() {
        c.err(&at.key("roles"), "roles need auth: jwt, api_key or any");
    }
    AccessRule { mode, roles }
}

pub(super) fn secret_from(
    c: &mut Checker,
    at: &KeyPath,
    env: Option<&str>,
    file: Option<&str>,
) -> Option<Vec<u8>> {
    if let Some(var) = env {
        return match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(v.into_bytes()),
            _ => {
                c.err(at, format!("environment variable {var} is not set"));
                None
            }
        };
    }
    // `${CREDENTIALS_DIRECTORY:-/etc/galion}/service-token`: systemd's
    // credentials under the unit, the same file from a shell.
    let path = match super::check::expand_env(file?) {
        Ok(p) => p,
        Err(e) => {
            c.err(at, e);
            return None;
        }
    };
    match read_private_file(Path::new(&path)) {
        Ok(v) => Some(v),
        Err(e) => {
            c.err(at, e);
            None
        }
    }
}

pub fn auth_of(c: &mut Checker, a: RawAuth) -> AuthConfig {
    let at = KeyPath::root().key("auth");
    let jwt = a.jwt.map(|j| {
        let p = at.key("jwt");
        let hs256_secret = secret_from(
            c,
            &p.key(if j.hs256_secret_env.is_some() {
                "hs256_secret_env"
            } else {
                "hs256_secret_file"
            }),
            j.hs256_secret_env.as_deref(),
            j.hs256_secret_file.as_deref(),
        );
        if hs256_secret.as_ref().is_some_and(|s| s.len() < 32) {
            c.err(&p, "the HS256 secret must be at least 32 bytes");
        }
        if j.jwks_url.is_none() && j.jwks_file.is_none() && hs256_secret.is_none() {
            c.err(&p, "configure jwks_url, jwks_file or an HS256 secret");
        }
        if let Some(u) = &j.jwks_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                c.err(&p.key("jwks_url"), "must be an http(s) URL");
            }
        }
        JwtConfig {
            jwks_url: j.jwks_url,
            jwks_file: j.jwks_file.map(PathBuf::from),
            hs256_secret,
            issuer: j.issuer,
            audience: j.audience,
            leeway: j.leeway.unwrap_or(Duration::from_secs(30)),
            refresh_interval: j.refresh_interval.unwrap_or(Duration::from_secs(300)),
            min_refresh_interval: j.min_refresh_interval.unwrap_or(Duration::from_secs(10)),
            cookie: j.cookie,
            cache_entries: j.cache_entries.unwrap_or(100_000),
        }
    });
    let mut api_keys = Vec::new();
    for (i, k) in a.api_keys.into_iter().enumerate() {
        let mut digest = [0u8; 32];
        if hex::decode_to_slice(k.sha256.trim(), &mut digest).is_err() {
            c.err(
                &at.key("api_keys").index(i).key("sha256"),
                "must be a SHA-256 digest in hex (64 characters); see `galion-gateway hash-key`",
            );
            continue;
        }
        api_keys.push(ApiKeyConfig {
            name: k.name,
            sha256: digest,
            roles: k.roles,
        });
    }
    let revocation = a.revocation.map(|r| {
        let p = at.key("revocation");
        let token = secret_from(c, &p, r.token_env.as_deref(), r.token_file.as_deref())
            .map(|t| String::from_utf8_lossy(&t).into_owned());
        RevocationConfig {
            url: r.url,
            token,
            interval: r.interval.unwrap_or(Duration::from_millis(500)),
        }
    });
    AuthConfig {
        jwt,
        api_keys,
        revocation,
    }
}

pub fn limits_of(c: &mut Checker, l: RawLimits) -> Limits {
    let at = KeyPath::root().key("limits");
    let d = Limits::default();
    Limits {
        max_header_bytes: l
            .max_header_bytes
            .and_then(|s| parse_size(c, &at.key("max_header_bytes"), &s))
            .unwrap_or(d.max_header_bytes),
        max_body: l
            .max_body
            .and_then(|s| parse_size(c, &at.key("max_body"), &s)),
        max_connections_per_ip: l.max_connections_per_ip,
        ipv6_prefix: match l.ipv6_prefix {
            None => d.ipv6_prefix,
            Some(n) if (16..=128).contains(&n) => n,
            Some(_) => {
                c.err(&at.key("ipv6_prefix"), "a prefix length between 16 and 128");
                d.ipv6_prefix
            }
        },
    }
}

fn joined(c: &mut Checker, at: &KeyPath, items: &[String]) -> Option<HeaderValue> {
    HeaderValue::from_str(&items.join(", "))
        .map_err(|_| c.err(at, "invalid characters"))
        .ok()
}

pub fn cors_of(c: &mut Checker, at: &KeyPath, r: &RawCors) -> CorsConfig {
    let mut origins = Vec::new();
    for (i, o) in r.allow_origins.iter().enumerate() {
        let p = at.key("allow_origins").index(i);
        if o == "*" {
            if r.allow_credentials {
                c.err(
                    &p,
                    "\"*\" cannot be combined with allow_credentials (browsers refuse it)",
                );
            }
            origins.push(OriginPattern::Any);
        } else if let Some((scheme, host)) = o.split_once("://") {
            if let Some(suffix) = host.strip_prefix('*') {
                if !suffix.starts_with('.') {
                    c.err(&p, "wildcards look like https://*.galion.app");
                }
                origins.push(OriginPattern::Subdomains {
                    scheme: scheme.to_ascii_lowercase(),
                    suffix: suffix.to_ascii_lowercase(),
                });
            } else {
                origins.push(OriginPattern::Exact(
                    o.trim_end_matches('/').to_ascii_lowercase(),
                ));
            }
        } else {
            c.err(&p, "an origin looks like https://galion.app");
        }
    }
    let methods: Vec<String> = r.allow_methods.clone().unwrap_or_else(|| {
        ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
            .map(String::from)
            .to_vec()
    });
    for (i, m) in methods.iter().enumerate() {
        method(c, &at.key("allow_methods").index(i), m);
    }
    let check_names = |c: &mut Checker, key: &str, list: &Option<Vec<String>>| {
        if let Some(l) = list {
            for (i, h) in l.iter().enumerate() {
                header_name(c, &at.key(key).index(i), h);
            }
        }
    };
    check_names(c, "allow_headers", &r.allow_headers);
    check_names(c, "expose_headers", &r.expose_headers);
    let max_age = r.max_age.unwrap_or(Duration::from_secs(600)).as_secs();
    CorsConfig {
        origins,
        methods: joined(c, &at.key("allow_methods"), &methods)
            .unwrap_or(HeaderValue::from_static("GET")),
        headers: r
            .allow_headers
            .as_ref()
            .and_then(|h| joined(c, &at.key("allow_headers"), h)),
        expose: r
            .expose_headers
            .as_ref()
            .and_then(|h| joined(c, &at.key("expose_headers"), h)),
        credentials: r.allow_credentials,
        max_age: HeaderValue::from(max_age),
    }
}

pub fn security_headers_of(
    c: &mut Checker,
    at: &KeyPath,
    r: Option<&RawSecurityHeaders>,
) -> SecurityHeaders {
    if r.and_then(|r| r.enabled) == Some(false) {
        return SecurityHeaders::default();
    }
    let mut value = |key: &str, given: Option<&String>, default: Option<&'static str>| match given {
        Some(v) if v.is_empty() || v == "off" => None,
        Some(v) => HeaderValue::from_str(v)
            .map_err(|_| c.err(&at.key(key), "invalid header value"))
            .ok(),
        None => default.map(HeaderValue::from_static),
    };
    let mut always = Vec::new();
    let pairs: [(&str, &'static str, Option<&String>, Option<&'static str>); 4] = [
        (
            "content_type_options",
            "x-content-type-options",
            r.and_then(|r| r.content_type_options.as_ref()),
            Some("nosniff"),
        ),
        (
            "frame_options",
            "x-frame-options",
            r.and_then(|r| r.frame_options.as_ref()),
            Some("DENY"),
        ),
        (
            "referrer_policy",
            "referrer-policy",
            r.and_then(|r| r.referrer_policy.as_ref()),
            Some("strict-origin-when-cross-origin"),
        ),
        (
            "csp",
            "content-security-policy",
            r.and_then(|r| r.csp.as_ref()),
            None,
        ),
    ];
    for (key, name, given, default) in pairs {
        if let Some(v) = value(key, given, default) {
            always.push((HeaderName::from_static(name), v));
        }
    }
    let hsts = value(
        "hsts",
        r.and_then(|r| r.hsts.as_ref()),
        Some("max-age=31536000"),
    );
    SecurityHeaders {
        always,
        hsts,
        override_upstream: r.is_some_and(|r| r.override_upstream),
    }
}
