//! Host and path routing, compiled once per snapshot.
//!
//! Hosts: exact names and aliases in a hash map, then wildcards (`*.galion.app`,
//! longest suffix first), then the default host. Paths, like nginx: an exact match
//! wins; otherwise regexes in declared order; otherwise the longest prefix.
//!
//! Methods choose among routes with the same path rule only (`exact: /x,
//! methods: [GET]` beside `exact: /x, methods: [POST]`). When none of them takes
//! the method the answer is 405 with `Allow`: the request never falls through
//! to a broader route, whose policies are usually looser (a `HEAD` that skipped
//! a JWT route for a public prefix was the way around its check). `HEAD` is
//! taken wherever `GET` is; a route with CORS also takes `OPTIONS`, for its
//! preflights.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderValue, Method};

use crate::config::{
    AccessRule, CorsConfig, FixedResponse, HeaderOps, HostConfig, PathMatch, RedirectConfig,
    Rewrite, SecurityHeaders,
};
use crate::metrics::RouteMetrics;
use crate::upstream::Pool;

pub mod exposure;
pub use crate::uri_path::{needs_normalizing, normalize_path, path_is_safe};
pub use exposure::{exposures, Exposure};

pub struct Route {
    pub name: Arc<str>,
    pub host: Arc<str>,
    pub matcher: PathMatch,
    pub methods: Option<Vec<Method>>,
    pub action: Action,
    pub rewrite: Rewrite,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub metrics: RouteMetrics,
    pub access: AccessRule,
    pub cors: Option<Arc<CorsConfig>>,
    pub max_body: Option<u64>,
    pub allow_plain: bool,
    pub rate_limit: Option<Arc<crate::config::RatePolicy>>,
    pub cache: Option<Arc<crate::config::RouteCache>>,
    pub compress: Option<Arc<crate::config::Compression>>,
    /// Why this route's requests need pingora's transport ([`pingora_only`]),
    /// decided once when the snapshot is built; `None`: the fast path takes
    /// them too.
    pub pingora_only: Option<&'static str>,
}

/// What a matched route does once its policies passed.
pub enum Action {
    Upstream(Arc<Pool>),
    Deny {
        status: u16,
    },
    Respond(Arc<FixedResponse>),
    Redirect(Arc<RedirectConfig>),
    /// Files from a directory, answered by `pipeline::files`.
    Static(Arc<crate::config::StaticSite>),
}

/// The route features only pingora's transport renders (the fast path's
/// list of what it does not do): a route with one of them is proxied by
/// pingora on every listener. Every feature of a route is rendered by both
/// transports otherwise, through the pipeline. A cached route is the fast
/// path's for its fresh hits (`pipeline::cached`); its misses go to
/// pingora-cache request by request.
pub fn pingora_only(
    cache: Option<&crate::config::RouteCache>,
    compress: bool,
    action: &Action,
) -> Option<&'static str> {
    if let Some(c) = cache {
        // The key of a private object holds the caller's identity, known only
        // after access control: the fast path looks hits up before it.
        if c.private {
            return Some("private cache");
        }
        if !c.vary_headers.is_empty() {
            return Some("cache varying by request headers");
        }
    }
    if compress {
        return Some("compression");
    }
    if let Action::Upstream(pool) = action {
        if pool.is_tls() {
            return Some("TLS upstream");
        }
        if matches!(
            pool.config.balance,
            crate::config::Balance::ConsistentHash(crate::config::HashKey::Header(_))
        ) {
            return Some("hash by header");
        }
    }
    None
}

impl Route {
    fn accepts(&self, m: &Method) -> bool {
        let Some(ms) = &self.methods else {
            return true;
        };
        ms.contains(m)
            || (*m == Method::HEAD && ms.contains(&Method::GET))
            || (*m == Method::OPTIONS && self.cors.is_some())
    }

    /// Whether `methods` names this method itself (not through the HEAD/OPTIONS
    /// siblings above).
    pub fn lists_method(&self, m: &Method) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|ms| ms.contains(m) || (*m == Method::HEAD && ms.contains(&Method::GET)))
    }

    /// The pool of an `upstream` route.
    pub fn pool(&self) -> Option<&Arc<Pool>> {
        match &self.action {
            Action::Upstream(p) => Some(p),
            _ => None,
        }
    }

    /// The path to send upstream, or `None` when it is unchanged.
    pub fn rewritten_path(&self, path: &str) -> Option<String> {
        match (&self.rewrite, &self.matcher) {
            (Rewrite::None, _) => None,
            (Rewrite::StripPrefix, PathMatch::Prefix(p)) => {
                let rest = path.get(p.trim_end_matches('/').len()..).unwrap_or("");
                Some(if rest.starts_with('/') {
                    rest.to_owned()
                } else {
                    format!("/{rest}")
                })
            }
            (Rewrite::StripPrefix, _) => None,
            (Rewrite::Replace(to), PathMatch::Exact(_)) => Some(to.clone()),
            (Rewrite::Replace(to), PathMatch::Prefix(p)) => {
                let rest = path.get(p.len()..).unwrap_or("");
                Some(format!("{}{rest}", to))
            }
            (Rewrite::Replace(to), PathMatch::Regex(re)) => {
                let out = re.replace(path, to.as_str()).into_owned();
                Some(if out.starts_with('/') {
                    out
                } else {
                    format!("/{out}")
                })
            }
        }
    }
}

pub struct HostRoutes {
    pub name: Arc<str>,
    pub security: Arc<SecurityHeaders>,
    pub routes: Vec<Arc<Route>>,
    exact: HashMap<String, Vec<usize>>,
    /// Indices of prefix routes, longest prefix first (declared order on ties).
    prefixes: Vec<usize>,
    regexes: Vec<usize>,
    /// `Allow` of each route's path rule, by route index.
    allow: Vec<HeaderValue>,
}

pub enum RouteMatch<'a> {
    Found(&'a Arc<Route>),
    /// The path's routes take other methods: 405 with this `Allow`.
    MethodNotAllowed(&'a HeaderValue),
    NotFound,
}

impl HostRoutes {
    pub fn new(name: &str, routes: Vec<Arc<Route>>, security: Arc<SecurityHeaders>) -> Self {
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut prefixes = Vec::new();
        let mut regexes = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            match &r.matcher {
                PathMatch::Exact(p) => exact.entry(p.clone()).or_default().push(i),
                PathMatch::Prefix(_) => prefixes.push(i),
                PathMatch::Regex(_) => regexes.push(i),
            }
        }
        let plen = |i: &usize| match &routes[*i].matcher {
            PathMatch::Prefix(p) => p.len(),
            _ => 0,
        };
        prefixes.sort_by_key(|i| std::cmp::Reverse(plen(i)));
        let allow = routes
            .iter()
            .map(|r| allow_of(routes.iter().filter(|o| same_rule(&o.matcher, &r.matcher))))
            .collect();
        HostRoutes {
            name: name.into(),
            security,
            routes,
            exact,
            prefixes,
            regexes,
            allow,
        }
    }

    /// The route for a path and method. The first path rule that matches
    /// decides (exact, then regexes in order, then the longest prefix); among
    /// the routes with that same rule, the first taking the method wins.
    pub fn find(&self, path: &str, method: &Method) -> RouteMatch<'_> {
        let first = self
            .exact
            .get(path)
            .and_then(|ids| ids.first().copied())
            .or_else(|| {
                self.regexes.iter().copied().find(|&i| {
                    matches!(&self.routes[i].matcher, PathMatch::Regex(re) if re.is_match(path))
                })
            })
            .or_else(|| {
                self.prefixes.iter().copied().find(|&i| {
                    matches!(&self.routes[i].matcher, PathMatch::Prefix(p) if prefix_matches(p, path))
                })
            });
        let Some(first) = first else {
            return RouteMatch::NotFound;
        };
        let rule = &self.routes[first].matcher;
        let taken = match rule {
            PathMatch::Exact(_) => self.exact.get(path).and_then(|ids| {
                ids.iter()
                    .map(|&i| &self.routes[i])
                    .find(|r| r.accepts(method))
            }),
            _ => self.routes[first..]
                .iter()
                .filter(|r| same_rule(&r.matcher, rule))
                .find(|r| r.accepts(method)),
        };
        match taken {
            Some(r) => RouteMatch::Found(r),
            None => RouteMatch::MethodNotAllowed(&self.allow[first]),
        }
    }
}

impl HostRoutes {
    /// `Allow` of `route`'s path rule.
    pub fn allow_of(&self, route: &Arc<Route>) -> Option<&HeaderValue> {
        let i = self.routes.iter().position(|r| Arc::ptr_eq(r, route))?;
        self.allow.get(i)
    }
}

/// Where a `redirect` route sends a request whose path and query are `pq`.
pub fn redirect_location(rd: &RedirectConfig, pq: &str) -> String {
    if rd.preserve_path {
        format!("{}{pq}", rd.to)
    } else {
        rd.to.clone()
    }
}

/// Whether two routes have the same path rule (so methods choose between them).
fn same_rule(a: &PathMatch, b: &PathMatch) -> bool {
    match (a, b) {
        (PathMatch::Exact(a), PathMatch::Exact(b))
        | (PathMatch::Prefix(a), PathMatch::Prefix(b)) => a == b,
        (PathMatch::Regex(a), PathMatch::Regex(b)) => a.as_str() == b.as_str(),
        _ => false,
    }
}

/// `Allow` of a path rule: every method its routes take.
fn allow_of<'a>(routes: impl Iterator<Item = &'a Arc<Route>>) -> HeaderValue {
    let mut all: Vec<&str> = Vec::new();
    for r in routes {
        let Some(ms) = &r.methods else {
            return HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS");
        };
        for m in ms {
            all.push(m.as_str());
            if *m == Method::GET {
                all.push("HEAD");
            }
        }
        if r.cors.is_some() {
            all.push("OPTIONS");
        }
    }
    let mut seen = Vec::new();
    for m in all {
        if !seen.contains(&m) {
            seen.push(m);
        }
    }
    HeaderValue::from_str(&seen.join(", ")).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `/api` matches `/api`, `/api/x` and `/api?..` but not `/apix`; a prefix ending in
/// `/` matches anything below it.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

pub struct Router {
    pub hosts: Vec<HostRoutes>,
    /// foldhash: the names are the operator's, so a client's `Host` cannot
    /// pick colliding keys, and SipHash was most of a lookup's cost.
    by_name: HashMap<String, usize, foldhash::fast::RandomState>,
    /// (suffix including the dot, host index), longest suffix first.
    wildcards: Vec<(String, usize)>,
    default: Option<usize>,
}

impl Router {
    pub fn new(hosts: &[HostConfig], compiled: Vec<HostRoutes>) -> Self {
        let mut by_name = HashMap::with_hasher(foldhash::fast::RandomState::default());
        let mut wildcards = Vec::new();
        let mut default = None;
        for (i, h) in hosts.iter().enumerate() {
            for n in std::iter::once(&h.name).chain(h.aliases.iter()) {
                match n.strip_prefix('*') {
                    Some(suffix) => wildcards.push((suffix.to_owned(), i)),
                    None => {
                        by_name.insert(n.clone(), i);
                    }
                }
            }
            if h.is_default {
                default = Some(i);
            }
        }
        wildcards.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        Router {
            hosts: compiled,
            by_name,
            wildcards,
            default,
        }
    }

    /// The host for a name as [`authority_name`] gives it (lowercase, no port,
    /// no trailing dot); `None` or an unknown name is the default host's.
    pub fn site(&self, name: Option<&str>) -> Option<&HostRoutes> {
        let i = name
            .and_then(|h| {
                self.by_name.get(h).copied().or_else(|| {
                    self.wildcards
                        .iter()
                        .find(|(suffix, _)| h.len() > suffix.len() && h.ends_with(suffix.as_str()))
                        .map(|(_, i)| *i)
                })
            })
            .or(self.default)?;
        self.hosts.get(i)
    }
}

/// Whether a `Host` value is a plain authority: a name (letters, digits, `-`,
/// `_`, `.`; no `..`), an IPv4 address or a bracketed IPv6 literal, then an
/// optional port. Userinfo (`galion.studio:1@evil.example`), paths, spaces and
/// empty names are refused on both paths, as nginx refuses them: an upstream
/// that parses the value differently must not be handed it.
pub fn valid_authority(host: &str) -> bool {
    authority_parts(host).is_some()
}

/// What each byte of a `Host` name is to [`authority_parts`].
const NAME: u8 = 1;
const UPPER: u8 = 2;
const DOT: u8 = 3;
const COLON: u8 = 4;
static HOST_BYTE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = match c {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => NAME,
            b'A'..=b'Z' => UPPER,
            b'.' => DOT,
            b':' => COLON,
            _ => 0,
        };
        i += 1;
    }
    t
};

/// A `Host` value checked as [`valid_authority`] says and reduced to the name
/// that picks a site (lower case, no port, no trailing dot); `None` when it is
/// not a plain authority. One pass over the bytes: this runs on every request.
pub fn authority_name(host: &str) -> Option<Cow<'_, str>> {
    let (name, upper) = authority_parts(host)?;
    Some(if upper {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    })
}

/// The name [`authority_name`] keeps, as it is in `host`, and whether it has
/// upper-case letters (nothing is allocated for a mere check).
fn authority_parts(host: &str) -> Option<(&str, bool)> {
    let b = host.as_bytes();
    let (name, upper) = if let Some(rest) = host.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        if v6.parse::<std::net::Ipv6Addr>().is_err()
            || !(after.is_empty() || after.strip_prefix(':').is_some_and(valid_port))
        {
            return None;
        }
        let name = &host[..v6.len() + 2];
        (name, name.bytes().any(|c| c.is_ascii_uppercase()))
    } else {
        // Allowed bytes, no leading dot, no two dots in a row, up to the
        // port's colon.
        let mut prev_dot = true;
        let mut upper = false;
        let mut end = b.len();
        for (i, &c) in b.iter().enumerate() {
            match HOST_BYTE[usize::from(c)] {
                NAME => prev_dot = false,
                UPPER => {
                    prev_dot = false;
                    upper = true;
                }
                DOT if prev_dot => return None,
                DOT => prev_dot = true,
                COLON => {
                    if !valid_port(&host[i + 1..]) {
                        return None;
                    }
                    end = i;
                    break;
                }
                _ => return None,
            }
        }
        if end == 0 || end > 253 {
            return None;
        }
        let name = &host[..end];
        (name.strip_suffix('.').unwrap_or(name), upper)
    };
    Some((name, upper))
}

/// 1 to 5 digits that fit a port number. Digits only, so five of them
/// compare with `65535` as numbers do (no parse on every request).
fn valid_port(p: &str) -> bool {
    let b = p.as_bytes();
    matches!(b.len(), 1..=5)
        && b.iter().all(u8::is_ascii_digit)
        && (b.len() < 5 || b <= b"65535".as_slice())
}

#[cfg(test)]
mod tests;
