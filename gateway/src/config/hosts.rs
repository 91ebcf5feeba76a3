//! The `hosts:` section: hosts and their ordered routes, their validated types and
//! the validation that builds them, including shadowing warnings.

use std::collections::{HashMap, HashSet};

use http::{HeaderName, HeaderValue, Method};
use indexmap::IndexMap;
use regex::Regex;

use super::check::{duplicates, expand_env, header_name, method, parse_size, regex, Checker};
use super::error::KeyPath;
use super::policy::{
    access_rule, cors_of, security_headers_of, AccessRule, AuthConfig, AuthMode, CorsConfig,
    Limits, SecurityHeaders,
};
use super::protect::RatePolicy;
use super::raw::{Lenient, RawDeny, RawHeaderOps, RawHost, RawRoute};
use super::shaping::{Compression, RouteCache};
use super::statics::{static_of, StaticSite};

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
    /// Files from a directory (`static:`).
    Static(std::sync::Arc<StaticSite>),
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
            RouteAction::Static(s) => format!("static {}", s.root.display()),
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

pub fn hosts_of(
    c: &mut Checker,
    raw: IndexMap<String, Lenient<RawHost>>,
    upstreams: &HashSet<String>,
    auth: &AuthConfig,
    limits: &Limits,
    default_rate: Option<&std::sync::Arc<RatePolicy>>,
) -> Vec<HostConfig> {
    let root = KeyPath::root().key("hosts");
    let mut hosts = Vec::new();
    // Every name (host or alias) must map to exactly one host.
    let mut names: HashMap<String, String> = HashMap::new();
    let mut default_host: Option<String> = None;

    for (name, item) in raw {
        let at = root.key(&name);
        let Some(h) = c.take(&at, item) else { continue };
        let canonical = name.trim().to_ascii_lowercase();
        let mut all = vec![(canonical.clone(), at.clone())];
        for (i, a) in h.aliases.iter().enumerate() {
            all.push((a.trim().to_ascii_lowercase(), at.key("aliases").index(i)));
        }
        for (n, p) in &all {
            if let Err(msg) = check_host_name(n) {
                c.err(p, msg);
            } else if let Some(prev) = names.insert(n.clone(), canonical.clone()) {
                c.err(
                    p,
                    format!("host name {n:?} is already used by host {prev:?}"),
                );
            }
        }
        if h.default {
            if let Some(prev) = &default_host {
                c.err(
                    &at.key("default"),
                    format!("host {prev:?} is already the default host"),
                );
            }
            default_host = Some(canonical.clone());
        }
        let defaults = RouteDefaults {
            access: access_rule(
                c,
                &at,
                h.auth.as_ref(),
                h.roles.as_ref(),
                &AccessRule::default(),
            ),
            cors: h.cors.as_ref().map(|r| cors_of(c, &at.key("cors"), r)),
            max_body: limits.max_body,
            rate: default_rate.cloned(),
            host: canonical.clone(),
        };
        let security =
            security_headers_of(c, &at.key("security_headers"), h.security_headers.as_ref());
        let routes = routes_of(c, &at.key("routes"), h.routes, upstreams, &defaults, auth);
        hosts.push(HostConfig {
            name: canonical,
            aliases: all.into_iter().skip(1).map(|(n, _)| n).collect(),
            is_default: h.default,
            routes,
            security,
        });
    }
    hosts
}

fn check_host_name(n: &str) -> Result<(), String> {
    let body = n.strip_prefix("*.").unwrap_or(n);
    let ok = !body.is_empty()
        && body.len() <= 253
        && body
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{n:?} is not a host name (use exact names, or *.domain for a wildcard)"
        ))
    }
}

/// What a route inherits from its host (and the global limits).
struct RouteDefaults {
    access: AccessRule,
    cors: Option<CorsConfig>,
    max_body: Option<u64>,
    rate: Option<std::sync::Arc<RatePolicy>>,
    host: String,
}

fn routes_of(
    c: &mut Checker,
    at: &KeyPath,
    raw: Vec<Lenient<RawRoute>>,
    upstreams: &HashSet<String>,
    defaults: &RouteDefaults,
    auth: &AuthConfig,
) -> Vec<RouteConfig> {
    let mut routes: Vec<RouteConfig> = Vec::new();
    let mut paths = Vec::new();
    for (i, item) in raw.into_iter().enumerate() {
        let p = at.index(i);
        let Some(r) = c.take(&p, item) else { continue };
        if let Some(route) = route_of(c, &p, r, upstreams, defaults, auth) {
            shadow_check(c, &p, &routes, &route);
            routes.push(route);
            paths.push(p);
        }
    }
    for dup in duplicates(routes.iter().map(|r| r.name.as_str())) {
        if let Some(pos) = routes.iter().rposition(|r| r.name == dup) {
            c.err(
                &paths[pos].key("name"),
                format!("route name {dup:?} is used twice in this host"),
            );
        }
    }
    routes
}

fn route_of(
    c: &mut Checker,
    at: &KeyPath,
    r: RawRoute,
    upstreams: &HashSet<String>,
    defaults: &RouteDefaults,
    auth: &AuthConfig,
) -> Option<RouteConfig> {
    let before = c.errors.len();
    let mut action = action_of(c, at, &r, upstreams);
    let rewrites = r.rewrite.is_some() || r.strip_prefix;
    let access = access_rule(c, at, r.auth.as_ref(), r.roles.as_ref(), &defaults.access);
    let needs_jwt = matches!(access.mode, AuthMode::Jwt | AuthMode::Any);
    let needs_keys = matches!(access.mode, AuthMode::ApiKey | AuthMode::Any);
    if needs_jwt && auth.jwt.is_none() && access.mode == AuthMode::Jwt {
        c.err(&at.key("auth"), "auth: jwt needs an auth.jwt section");
    }
    if needs_keys && auth.api_keys.is_empty() && access.mode == AuthMode::ApiKey {
        c.err(&at.key("auth"), "auth: api_key needs auth.api_keys");
    }
    if access.mode == AuthMode::Any && auth.jwt.is_none() && auth.api_keys.is_empty() {
        c.err(&at.key("auth"), "auth: any needs auth.jwt or auth.api_keys");
    }
    let cors = match &r.cors {
        Some(raw) => Some(cors_of(c, &at.key("cors"), raw)),
        None => defaults.cors.clone(),
    };
    let max_body = match &r.max_body {
        Some(s) => parse_size(c, &at.key("max_body"), s),
        None => defaults.max_body,
    };
    if r.name.is_empty()
        || !r
            .name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-' || ch == '.')
    {
        c.err(
            &at.key("name"),
            "route names are metric labels: use letters, digits, '_', '-' or '.'",
        );
    }
    let given = [
        r.exact.as_ref().map(|_| "exact"),
        r.prefix.as_ref().map(|_| "prefix"),
        r.regex.as_ref().map(|_| "regex"),
    ];
    let count = given.iter().flatten().count();
    if count != 1 {
        c.err(at, "a route needs exactly one of exact, prefix or regex");
    }
    let matcher = if let Some(p) = r.exact {
        check_path(c, &at.key("exact"), &p);
        Some(PathMatch::Exact(p))
    } else if let Some(p) = r.prefix {
        check_path(c, &at.key("prefix"), &p);
        Some(PathMatch::Prefix(p))
    } else if let Some(p) = r.regex {
        regex(c, &at.key("regex"), &p).map(PathMatch::Regex)
    } else {
        None
    };
    let methods = r.methods.map(|ms| {
        ms.iter()
            .enumerate()
            .filter_map(|(i, m)| method(c, &at.key("methods").index(i), m))
            .collect::<Vec<_>>()
    });
    let rewrite = match (r.strip_prefix, r.rewrite) {
        (true, Some(_)) => {
            c.err(
                &at.key("rewrite"),
                "use either strip_prefix or rewrite, not both",
            );
            Rewrite::None
        }
        (true, None) => {
            if !matches!(matcher, Some(PathMatch::Prefix(_))) {
                c.err(&at.key("strip_prefix"), "strip_prefix needs a prefix route");
            }
            Rewrite::StripPrefix
        }
        (false, Some(to)) => {
            if !matches!(matcher, Some(PathMatch::Regex(_))) && !to.starts_with('/') {
                c.err(&at.key("rewrite"), "must start with /");
            }
            Rewrite::Replace(to)
        }
        (false, None) => Rewrite::None,
    };
    let rate_limit = super::protect::route_rate(
        c,
        &at.key("rate_limit"),
        r.rate_limit.as_ref(),
        &defaults.host,
        &r.name,
        defaults.rate.as_ref(),
    );
    let cache = r
        .cache
        .as_ref()
        .map(|rc| std::sync::Arc::new(super::shaping::route_cache_of(c, &at.key("cache"), rc)));
    if cache.as_ref().is_some_and(|rc| rc.private) && access.mode == AuthMode::Public {
        // Without a verified identity the key would be the URL alone, shared by
        // every caller whatever cookie or token they sent.
        c.err(
            &at.key("cache").key("private"),
            "a private cache needs access control on the route (auth: jwt, api_key or any)",
        );
    }
    let compress = r
        .compress
        .as_ref()
        .map(|rc| std::sync::Arc::new(super::shaping::compression_of(c, &at.key("compress"), rc)));
    let serves_files = matches!(action, Some(RouteAction::Static(_)));
    // A static route compresses its files itself (what has no precompressed
    // sibling, in memory): the route keeps no `compress` of its own, so
    // nothing compresses its answers a second time.
    let compress = match (&mut action, compress) {
        (Some(RouteAction::Static(site)), Some(comp)) => {
            std::sync::Arc::make_mut(site).compress = Some(comp);
            None
        }
        (_, comp) => comp,
    };
    if !matches!(action, Some(RouteAction::Upstream(_)) | None) {
        // These only mean something on the way to and from a backend (a
        // static route maps its path under its root, so it may rewrite).
        let given = [
            (rewrites && !serves_files, "rewrite/strip_prefix"),
            (
                !r.request_headers.set.is_empty()
                    || !r.request_headers.add.is_empty()
                    || !r.request_headers.remove.is_empty(),
                "request_headers",
            ),
            (r.cache.is_some(), "cache"),
        ];
        for (_, key) in given.iter().filter(|(g, _)| *g) {
            c.err(
                &at.key(key.split('/').next().unwrap_or(key)),
                format!("{key} needs `upstream:` (this route answers at the gateway)"),
            );
        }
    }
    let request_headers = header_ops(c, &at.key("request_headers"), r.request_headers);
    let response_headers = header_ops(c, &at.key("response_headers"), r.response_headers);
    if c.errors.len() > before {
        return None;
    }
    Some(RouteConfig {
        name: r.name,
        matcher: matcher?,
        methods,
        action: action?,
        rewrite,
        request_headers,
        response_headers,
        access,
        cors,
        max_body,
        allow_plain: r.allow_plain,
        rate_limit,
        cache,
        compress,
    })
}

/// Exactly one of `upstream`, `deny`, `respond`, `redirect`, `static`.
fn action_of(
    c: &mut Checker,
    at: &KeyPath,
    r: &RawRoute,
    upstreams: &HashSet<String>,
) -> Option<RouteAction> {
    let given = [
        r.upstream.is_some(),
        r.deny.is_some(),
        r.respond.is_some(),
        r.redirect.is_some(),
        r.static_files.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        c.err(
            at,
            "a route needs exactly one of upstream, deny, respond, redirect or static",
        );
        return None;
    }
    if let Some(s) = &r.static_files {
        let site = static_of(c, &at.key("static"), s)?;
        return Some(RouteAction::Static(std::sync::Arc::new(site)));
    }
    if let Some(u) = &r.upstream {
        if !upstreams.contains(u) {
            c.err(&at.key("upstream"), format!("unknown upstream {u:?}"));
            return None;
        }
        return Some(RouteAction::Upstream(u.clone()));
    }
    if let Some(d) = &r.deny {
        let status = match d {
            RawDeny::Flag(true) => 404,
            RawDeny::Status(s @ (403 | 404 | 410)) => *s,
            RawDeny::Flag(false) | RawDeny::Status(_) => {
                c.err(&at.key("deny"), "deny takes 403, 404, 410 or true (404)");
                return None;
            }
        };
        return Some(RouteAction::Deny { status });
    }
    if let Some(f) = &r.respond {
        let at = at.key("respond");
        let status = f.status.unwrap_or(200);
        if !(200..=599).contains(&status) || (300..400).contains(&status) {
            c.err(
                &at.key("status"),
                "respond.status must be 200-299 or 400-599 (use redirect: for 3xx)",
            );
            return None;
        }
        if f.body.len() > MAX_RESPOND_BODY {
            c.err(
                &at.key("body"),
                format!("respond.body is limited to {MAX_RESPOND_BODY} bytes"),
            );
            return None;
        }
        let ct = f
            .content_type
            .as_deref()
            .unwrap_or("text/plain; charset=utf-8");
        let Ok(content_type) = http::HeaderValue::from_str(ct) else {
            c.err(&at.key("content_type"), "not a valid header value");
            return None;
        };
        return Some(RouteAction::Respond(std::sync::Arc::new(FixedResponse {
            status,
            body: bytes::Bytes::from(f.body.clone()),
            content_type,
        })));
    }
    let rd = r.redirect.as_ref()?;
    let at = at.key("redirect");
    let status = rd.status.unwrap_or(308);
    if ![301, 302, 303, 307, 308].contains(&status) {
        c.err(
            &at.key("status"),
            "redirect.status must be 301, 302, 303, 307 or 308",
        );
        return None;
    }
    let to = rd.to.trim();
    let absolute = to
        .strip_prefix("https://")
        .or_else(|| to.strip_prefix("http://"))
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
    let valid = (absolute || (to.starts_with('/') && !to.starts_with("//")))
        && http::HeaderValue::from_str(to).is_ok()
        && !to.contains(char::is_whitespace);
    if !valid {
        c.err(
            &at.key("to"),
            "redirect.to must be an absolute http(s) URL or a path starting with /",
        );
        return None;
    }
    Some(RouteAction::Redirect(std::sync::Arc::new(RedirectConfig {
        status,
        to: to
            .trim_end_matches(|ch| ch == '/' && rd.preserve_path)
            .to_owned(),
        preserve_path: rd.preserve_path,
    })))
}

/// A fixed answer is a page, not a file server.
const MAX_RESPOND_BODY: usize = 64 * 1024;

fn check_path(c: &mut Checker, at: &KeyPath, p: &str) {
    if !p.starts_with('/') {
        c.err(at, "a path must start with /");
    } else if p.contains(char::is_whitespace) || p.contains('?') || p.contains('#') {
        c.err(at, "a path may not contain spaces, '?' or '#'");
    } else if !crate::uri_path::path_is_safe(p) {
        // The same test requests pass before routing: a route on a path that
        // is refused could never match.
        c.err(
            at,
            "a path may not hold ';', '%3B', '.'/'..' segments, encoded slashes or \
             backslashes (such requests are refused)",
        );
    }
}

/// Warns about a route that an earlier one always wins against: the same exact path or
/// prefix (or regex source) with methods that include this route's methods.
fn shadow_check(c: &mut Checker, at: &KeyPath, earlier: &[RouteConfig], route: &RouteConfig) {
    for e in earlier {
        let same = match (&e.matcher, &route.matcher) {
            (PathMatch::Exact(a), PathMatch::Exact(b)) => a == b,
            (PathMatch::Prefix(a), PathMatch::Prefix(b)) => a == b,
            (PathMatch::Regex(a), PathMatch::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        };
        let covers = match (&e.methods, &route.methods) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => b.iter().all(|m| a.contains(m)),
        };
        if same && covers {
            c.warn(
                at,
                format!(
                    "route {:?} ({}) is shadowed by the earlier route {:?} and never matches",
                    route.name,
                    route.matcher.describe(),
                    e.name
                ),
            );
            return;
        }
    }
}

pub fn header_ops(c: &mut Checker, at: &KeyPath, raw: RawHeaderOps) -> HeaderOps {
    let mut ops = HeaderOps::default();
    let pairs = |c: &mut Checker, key: &str, map: IndexMap<String, String>| {
        let mut out = Vec::new();
        for (name, value) in map {
            let p = at.key(key).key(&name);
            let n = header_name(c, &p, &name);
            // `${VAR}` lets a value come from the environment (e.g. a service token
            // sent upstream); such values are marked sensitive so they are never
            // logged.
            let from_env = value.contains("${");
            let value = match expand_env(&value) {
                Ok(v) => v,
                Err(e) => {
                    c.err(&p, e);
                    continue;
                }
            };
            let v = HeaderValue::from_str(&value).map(|mut v| {
                v.set_sensitive(from_env);
                v
            });
            match (n, v) {
                (Some(n), Ok(v)) => out.push((n, v)),
                (_, Err(_)) => c.err(&p, "header value has characters not allowed in HTTP"),
                _ => {}
            }
        }
        out
    };
    ops.set = pairs(c, "set", raw.set);
    ops.add = pairs(c, "add", raw.add);
    for (i, name) in raw.remove.iter().enumerate() {
        if let Some(n) = header_name(c, &at.key("remove").index(i), name) {
            ops.remove.push(n);
        }
    }
    ops
}
