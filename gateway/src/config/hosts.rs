//! Validation of `hosts:` and their ordered routes, including shadowing warnings.

use std::collections::{HashMap, HashSet};

use indexmap::IndexMap;

use super::error::KeyPath;
use super::policy::{access_rule, cors_of, parse_size, security_headers_of};
use super::raw::{Lenient, RawHost, RawRoute};
use super::types::*;
use super::validate::{duplicates, header_ops, method, regex, Checker};

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
    if !upstreams.contains(&r.upstream) {
        c.err(
            &at.key("upstream"),
            format!("unknown upstream {:?}", r.upstream),
        );
    }
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
    let request_headers = header_ops(c, &at.key("request_headers"), r.request_headers);
    let response_headers = header_ops(c, &at.key("response_headers"), r.response_headers);
    if c.errors.len() > before {
        return None;
    }
    Some(RouteConfig {
        name: r.name,
        matcher: matcher?,
        methods,
        upstream: r.upstream,
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

fn check_path(c: &mut Checker, at: &KeyPath, p: &str) {
    if !p.starts_with('/') {
        c.err(at, "a path must start with /");
    } else if p.contains(char::is_whitespace) || p.contains('?') || p.contains('#') {
        c.err(at, "a path may not contain spaces, '?' or '#'");
    } else if !crate::routing::path_is_safe(p) {
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
