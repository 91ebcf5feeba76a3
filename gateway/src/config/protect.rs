//! Stage two for the protection sections: the shared store (Redis, state dir), rate
//! limit policies and jails, validated into the types the limiter and the ban
//! engine use directly.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use indexmap::IndexMap;
use ipnet::IpNet;

use super::check::{cidrs, expand_env, header_name, Checker};
use super::error::KeyPath;
use super::raw::Lenient;
use super::raw_protect::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// May hold a password: never logged or shown by the admin API.
    pub url: String,
    pub prefix: String,
    pub timeout: Duration,
    pub revocations_channel: String,
    /// Seals shared secrets (`crate::seal`); required with `tls.acme`.
    pub seal_key: Option<crate::seal::SealKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoreConfig {
    pub redis: Option<RedisConfig>,
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitKey {
    Ip,
    /// The JWT `sub` (falls back to the IP when the request carries no identity).
    User,
    /// The API key's name (falls back to the IP).
    ApiKey,
    /// A request header's value (falls back to the IP when absent).
    Header(HeaderName),
}

/// One rate-limit policy, ready for the limiter (GCRA: one request per `interval`,
/// up to `burst` at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RatePolicy {
    /// Namespace of the counters: `default`, or `host/route` when counted per route.
    pub id: Arc<str>,
    /// Name shown in `RateLimit-Policy`.
    pub name: Arc<str>,
    pub count: u64,
    pub period: Duration,
    pub burst: u64,
    pub key: LimitKey,
    pub per_route: bool,
    /// Precomputed `RateLimit-Policy` value.
    pub policy_header: HeaderValue,
}

impl RatePolicy {
    /// Nanoseconds between two requests at the steady rate.
    pub fn interval_ns(&self) -> u64 {
        (self.period.as_nanos() / u128::from(self.count.max(1))) as u64
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub default: Option<Arc<RatePolicy>>,
    pub max_keys: usize,
    /// Clients no rate limit applies to (a load generator); bans, jails and
    /// connection caps still do.
    pub exempt: Vec<ipnet::IpNet>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            default: None,
            max_keys: 200_000,
            exempt: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    AuthRejected,
    RateLimited,
    Malformed,
}

/// One `on:` entry of a jail; every field that is set must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailCondition {
    pub route: Option<String>,
    pub status: Vec<u16>,
    pub event: Option<EventKind>,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BanAction {
    Reject,
    Drop,
}

impl BanAction {
    pub fn as_str(self) -> &'static str {
        match self {
            BanAction::Reject => "reject",
            BanAction::Drop => "drop",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct JailConfig {
    pub name: String,
    pub on: Vec<JailCondition>,
    pub maxretry: u32,
    pub findtime: Duration,
    pub bantime: Duration,
    /// (factor, maxtime): the n-th ban lasts `bantime * factor^(n-1)`, at most maxtime.
    pub increment: Option<(f64, Duration)>,
    pub ignoreip: Vec<IpNet>,
    pub action: BanAction,
}

impl JailConfig {
    /// How long the `offence`-th ban (1-based) lasts.
    pub fn ban_duration(&self, offence: u32) -> Duration {
        match self.increment {
            None => self.bantime,
            Some((factor, max)) => {
                let exp = offence.saturating_sub(1).min(64) as i32;
                let secs = self.bantime.as_secs_f64() * factor.powi(exp);
                if !secs.is_finite() || secs >= max.as_secs_f64() {
                    max
                } else {
                    Duration::from_secs_f64(secs).max(self.bantime)
                }
            }
        }
    }
}

pub fn store_of(c: &mut Checker, s: RawStore) -> StoreConfig {
    let at = KeyPath::root().key("store");
    let redis = s.redis.and_then(|r| {
        let p = at.key("redis");
        let url = match expand_env(&r.url) {
            Ok(u) => u,
            Err(e) => {
                c.err(&p.key("url"), e);
                return None;
            }
        };
        if let Err(e) = redis::Client::open(url.as_str()) {
            // The message may quote the URL: keep the password out of it.
            let kind = format!("{:?}", e.kind());
            c.err(
                &p.key("url"),
                format!("not a Redis URL (redis://[:password@]host:port/db): {kind}"),
            );
            return None;
        }
        let timeout = r.timeout.unwrap_or(Duration::from_millis(250));
        if timeout.is_zero() || timeout > Duration::from_secs(5) {
            c.err(&p.key("timeout"), "between 1ms and 5s");
        }
        let seal_at = p.key(if r.seal_key_env.is_some() {
            "seal_key_env"
        } else {
            "seal_key_file"
        });
        if r.seal_key_env.is_some() && r.seal_key_file.is_some() {
            c.err(&seal_at, "set seal_key_env or seal_key_file, not both");
        }
        let seal_key = super::policy::secret_from(
            c,
            &seal_at,
            r.seal_key_env.as_deref(),
            r.seal_key_file.as_deref(),
        )
        .and_then(|s| {
            if s.len() < 32 {
                c.err(&seal_at, "the seal key must be at least 32 bytes");
                return None;
            }
            Some(crate::seal::SealKey::derive(&s))
        });
        Some(RedisConfig {
            url,
            prefix: r.prefix.unwrap_or_else(|| "galion:gw:".to_owned()),
            timeout,
            revocations_channel: r
                .revocations_channel
                .unwrap_or_else(|| "galion:revocations".to_owned()),
            seal_key,
        })
    });
    let state_dir = s
        .state_dir
        .and_then(|d| match expand_env(&d) {
            Ok(d) => Some(PathBuf::from(d)),
            Err(e) => {
                c.err(&at.key("state_dir"), e);
                None
            }
        })
        .or_else(|| std::env::var_os("GALION_DATA_DIR").map(|d| PathBuf::from(d).join("state")));
    StoreConfig { redis, state_dir }
}

/// Parses `N/s`, `N/sec`, `N/min`, `N/m`, `N/h`, `N/hour`.
pub fn parse_rate(s: &str) -> Result<(u64, Duration), String> {
    let bad = || format!("{s:?} is not a rate (e.g. 10/s, 100/min, 1000/h)");
    let (n, unit) = s.split_once('/').ok_or_else(bad)?;
    let n: u64 = n.trim().parse().map_err(|_| bad())?;
    let period = match unit.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        _ => return Err(bad()),
    };
    if n == 0 || n > 1_000_000_000 {
        return Err(format!("{s:?}: the count must be between 1 and 10^9"));
    }
    Ok((n, period))
}

pub fn rate_policy(
    c: &mut Checker,
    at: &KeyPath,
    r: &RawRateLimit,
    route: Option<(&str, &str)>,
) -> Option<Arc<RatePolicy>> {
    let (count, period) = match parse_rate(&r.rate) {
        Ok(x) => x,
        Err(e) => {
            c.err(&at.key("rate"), e);
            return None;
        }
    };
    let burst = r.burst.unwrap_or(count);
    if burst == 0 || burst > 1_000_000_000 {
        c.err(&at.key("burst"), "between 1 and 10^9");
        return None;
    }
    let key = match r.key.as_deref().unwrap_or("ip") {
        "ip" => LimitKey::Ip,
        "user" => LimitKey::User,
        "api_key" => LimitKey::ApiKey,
        other => match other.strip_prefix("header:") {
            Some(h) => LimitKey::Header(header_name(c, &at.key("key"), h.trim())?),
            None => {
                c.err(
                    &at.key("key"),
                    format!("{other:?}: expected ip, user, api_key or header:NAME"),
                );
                return None;
            }
        },
    };
    let per_route = r.per_route.unwrap_or(route.is_some());
    // Route names are already restricted to [A-Za-z0-9_.-]: safe in a quoted string.
    // A shared budget is identified by its parameters: policies with different
    // rates must never share one counter.
    let shared_id =
        || -> Arc<str> { format!("shared:{count}/{}s:{burst}:{key:?}", period.as_secs()).into() };
    let (id, name): (Arc<str>, Arc<str>) = match route {
        Some((host, name)) if per_route => (format!("{host}/{name}").into(), name.into()),
        Some((_, name)) => (shared_id(), name.into()),
        None => (shared_id(), "default".into()),
    };
    // draft-ietf-httpapi-ratelimit-headers: quota q per window w (seconds).
    let policy_header =
        HeaderValue::from_str(&format!("\"{}\";q={};w={}", name, count, period.as_secs())).ok()?;
    Some(Arc::new(RatePolicy {
        id,
        name,
        count,
        period,
        burst,
        key,
        per_route,
        policy_header,
    }))
}

pub fn rate_limits_of(c: &mut Checker, r: RawRateLimits) -> RateLimitConfig {
    let at = KeyPath::root().key("rate_limits");
    let d = RateLimitConfig::default();
    let max_keys = r.max_keys.unwrap_or(d.max_keys);
    if max_keys < 1024 {
        c.err(&at.key("max_keys"), "at least 1024");
    }
    let exempt = r
        .exempt
        .as_deref()
        .map(|list| super::check::cidrs(c, &at.key("exempt"), list))
        .unwrap_or_default();
    RateLimitConfig {
        default: r
            .default
            .as_ref()
            .and_then(|p| rate_policy(c, &at.key("default"), p, None)),
        max_keys,
        exempt,
    }
}

/// A route's `rate_limit`: `off`, or a policy (deserialized here so its errors keep
/// their key path).
pub fn route_rate(
    c: &mut Checker,
    at: &KeyPath,
    raw: Option<&serde_norway::Value>,
    host: &str,
    route: &str,
    default: Option<&Arc<RatePolicy>>,
) -> Option<Arc<RatePolicy>> {
    let Some(v) = raw else {
        // A per-route default gives every route its own budget under its own name.
        return default.map(|d| {
            if d.per_route {
                Arc::new(RatePolicy {
                    id: format!("{host}/{route}").into(),
                    ..(**d).clone()
                })
            } else {
                d.clone()
            }
        });
    };
    match v {
        serde_norway::Value::String(s) if s == "off" => None,
        serde_norway::Value::Bool(false) => None,
        other => match serde_path_to_error::deserialize::<_, RawRateLimit>(other.clone()) {
            Ok(r) => rate_policy(c, at, &r, Some((host, route))),
            Err(e) => {
                let path = e.path().to_string();
                let at = if path == "." || path.is_empty() {
                    at.clone()
                } else {
                    at.key(&path)
                };
                c.err(&at, format!("{} (or `off`)", e.into_inner()));
                None
            }
        },
    }
}

pub fn jails_of(
    c: &mut Checker,
    raw: IndexMap<String, Lenient<RawJail>>,
    route_names: &std::collections::HashSet<String>,
) -> Vec<JailConfig> {
    let root = KeyPath::root().key("jails");
    let mut jails = Vec::new();
    for (name, item) in raw {
        let at = root.key(&name);
        let Some(j) = c.take(&at, item) else { continue };
        if !name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
        {
            c.err(
                &at,
                "jail names are metric labels: letters, digits, '_', '-'",
            );
        }
        if j.enabled == Some(false) {
            continue;
        }
        let mut on = Vec::new();
        if j.on.is_empty() {
            c.err(&at.key("on"), "list at least one condition");
        }
        for (i, o) in j.on.into_iter().enumerate() {
            let p = at.key("on").index(i);
            let event = match o.event.as_deref() {
                None => None,
                Some("auth_rejected") => Some(EventKind::AuthRejected),
                Some("rate_limited") => Some(EventKind::RateLimited),
                Some("malformed") => Some(EventKind::Malformed),
                Some(other) => {
                    c.err(
                        &p.key("event"),
                        format!("{other:?}: expected auth_rejected, rate_limited or malformed"),
                    );
                    None
                }
            };
            let status = o.status.unwrap_or_default();
            for (k, s) in status.iter().enumerate() {
                if !(100..=599).contains(s) {
                    c.err(&p.key("status").index(k), "not an HTTP status code");
                }
            }
            if status.is_empty() && o.event.is_none() {
                c.err(&p, "a condition needs status codes or an event");
            }
            if let Some(r) = &o.route {
                if !route_names.contains(r) {
                    c.err(&p.key("route"), format!("no route is named {r:?}"));
                }
            }
            let reasons = o.reasons.unwrap_or_default();
            for (k, r) in reasons.iter().enumerate() {
                if !Reject::ALL.iter().any(|x| x.as_str() == r) {
                    let known: Vec<_> = Reject::ALL.iter().map(|x| x.as_str()).collect();
                    c.err(
                        &p.key("reasons").index(k),
                        format!("unknown reason {r:?} (one of {})", known.join(", ")),
                    );
                }
            }
            if !reasons.is_empty() && event != Some(EventKind::AuthRejected) {
                c.err(&p.key("reasons"), "reasons go with event: auth_rejected");
            }
            on.push(JailCondition {
                route: o.route,
                status,
                event,
                reasons,
            });
        }
        if j.maxretry == 0 || j.maxretry > 10_000 {
            c.err(&at.key("maxretry"), "between 1 and 10000");
        }
        if j.findtime.is_zero() {
            c.err(&at.key("findtime"), "must be positive");
        }
        if j.bantime.is_zero() {
            c.err(&at.key("bantime"), "must be positive");
        }
        let increment = j.bantime_increment.map(|inc| {
            let factor = inc.factor.unwrap_or(2.0);
            if !(1.0..=100.0).contains(&factor) {
                c.err(
                    &at.key("bantime_increment").key("factor"),
                    "between 1 and 100",
                );
            }
            let max = inc.maxtime.unwrap_or(Duration::from_secs(7 * 86_400));
            if max < j.bantime {
                c.err(
                    &at.key("bantime_increment").key("maxtime"),
                    "must not be shorter than bantime",
                );
            }
            (factor, max)
        });
        let action = match j.action.as_deref().unwrap_or("reject") {
            "reject" => BanAction::Reject,
            "drop" => BanAction::Drop,
            other => {
                c.err(
                    &at.key("action"),
                    format!("{other:?}: expected reject or drop"),
                );
                BanAction::Reject
            }
        };
        jails.push(JailConfig {
            ignoreip: cidrs(c, &at.key("ignoreip"), &j.ignoreip),
            name,
            on,
            maxretry: j.maxretry,
            findtime: j.findtime,
            bantime: j.bantime,
            increment,
            action,
        });
    }
    jails
}

/// Why the gateway refused a request's credentials (a jail's `auth_reject`
/// names these); the label of `gateway_auth_rejected_total{reason}`.
/// Clients only ever see a generic 401/403.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    Missing,
    Malformed,
    Oversized,
    Duplicate,
    UnknownKid,
    Algorithm,
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    Revoked,
    BadApiKey,
    Forbidden,
}

impl Reject {
    pub fn as_str(&self) -> &'static str {
        match self {
            Reject::Missing => "missing",
            Reject::Malformed => "malformed",
            Reject::Oversized => "oversized",
            Reject::Duplicate => "duplicate",
            Reject::UnknownKid => "unknown_kid",
            Reject::Algorithm => "algorithm",
            Reject::Signature => "signature",
            Reject::Expired => "expired",
            Reject::NotYetValid => "not_yet_valid",
            Reject::Issuer => "issuer",
            Reject::Audience => "audience",
            Reject::Revoked => "revoked",
            Reject::BadApiKey => "bad_api_key",
            Reject::Forbidden => "forbidden",
        }
    }

    pub const ALL: [Reject; 14] = [
        Reject::Missing,
        Reject::Malformed,
        Reject::Oversized,
        Reject::Duplicate,
        Reject::UnknownKid,
        Reject::Algorithm,
        Reject::Signature,
        Reject::Expired,
        Reject::NotYetValid,
        Reject::Issuer,
        Reject::Audience,
        Reject::Revoked,
        Reject::BadApiKey,
        Reject::Forbidden,
    ];
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("10/s").unwrap(), (10, Duration::from_secs(1)));
        assert_eq!(
            parse_rate("100/min").unwrap(),
            (100, Duration::from_secs(60))
        );
        assert_eq!(
            parse_rate(" 5 / h ").unwrap(),
            (5, Duration::from_secs(3600))
        );
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("10").is_err());
        assert!(parse_rate("x/s").is_err());
        assert!(parse_rate("10/day").is_err());
    }

    #[test]
    fn ban_durations_grow_up_to_maxtime() {
        let j = JailConfig {
            name: "j".into(),
            on: vec![],
            maxretry: 5,
            findtime: Duration::from_secs(60),
            bantime: Duration::from_secs(3600),
            increment: Some((2.0, Duration::from_secs(7 * 86_400))),
            ignoreip: vec![],
            action: BanAction::Reject,
        };
        let h = |n| j.ban_duration(n).as_secs() / 3600;
        assert_eq!([h(1), h(2), h(3), h(4)], [1, 2, 4, 8]);
        assert_eq!(j.ban_duration(20), Duration::from_secs(7 * 86_400));
        assert_eq!(j.ban_duration(u32::MAX), Duration::from_secs(7 * 86_400));
    }
}
