//! Host and path routing, compiled once per snapshot.
//!
//! Hosts: exact names and aliases in a hash map, then wildcards (`*.galion.app`,
//! longest suffix first), then the default host. Paths, like nginx: an exact match
//! wins; otherwise regexes in declared order; otherwise the longest prefix. A route
//! whose path matches but whose methods do not is skipped; if only such routes
//! match, the answer is 405.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use http::Method;

use crate::config::{
    AccessRule, CorsConfig, HeaderOps, HostConfig, PathMatch, Rewrite, SecurityHeaders,
};
use crate::metrics::RouteMetrics;
use crate::upstream::Pool;

mod path;
pub use path::{needs_normalizing, normalize_path};

pub struct Route {
    pub name: Arc<str>,
    pub host: Arc<str>,
    pub matcher: PathMatch,
    pub methods: Option<Vec<Method>>,
    pub pool: Arc<Pool>,
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
}

impl Route {
    fn accepts(&self, m: &Method) -> bool {
        self.methods.as_ref().is_none_or(|ms| ms.contains(m))
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
}

pub enum RouteMatch<'a> {
    Found(&'a Arc<Route>),
    MethodNotAllowed,
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
        HostRoutes {
            name: name.into(),
            security,
            routes,
            exact,
            prefixes,
            regexes,
        }
    }

    pub fn find(&self, path: &str, method: &Method) -> RouteMatch<'_> {
        let mut path_matched = false;
        if let Some(ids) = self.exact.get(path) {
            for &i in ids {
                if self.routes[i].accepts(method) {
                    return RouteMatch::Found(&self.routes[i]);
                }
                path_matched = true;
            }
        }
        for &i in &self.regexes {
            let r = &self.routes[i];
            if let PathMatch::Regex(re) = &r.matcher {
                if re.is_match(path) {
                    if r.accepts(method) {
                        return RouteMatch::Found(r);
                    }
                    path_matched = true;
                }
            }
        }
        for &i in &self.prefixes {
            let r = &self.routes[i];
            if let PathMatch::Prefix(p) = &r.matcher {
                if prefix_matches(p, path) {
                    if r.accepts(method) {
                        return RouteMatch::Found(r);
                    }
                    path_matched = true;
                }
            }
        }
        if path_matched {
            RouteMatch::MethodNotAllowed
        } else {
            RouteMatch::NotFound
        }
    }
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
    by_name: HashMap<String, usize>,
    /// (suffix including the dot, host index), longest suffix first.
    wildcards: Vec<(String, usize)>,
    default: Option<usize>,
}

impl Router {
    pub fn new(hosts: &[HostConfig], compiled: Vec<HostRoutes>) -> Self {
        let mut by_name = HashMap::new();
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

    /// The host for a `Host` header (or `:authority`) value.
    pub fn host(&self, raw: Option<&str>) -> Option<&HostRoutes> {
        let i = raw
            .map(normalize_host)
            .and_then(|h| {
                self.by_name.get(h.as_ref()).copied().or_else(|| {
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

/// Lower-cases and strips the port and a trailing dot; borrows when nothing changes.
pub fn normalize_host(raw: &str) -> Cow<'_, str> {
    let no_port = if raw.starts_with('[') {
        // IPv6 literal: keep up to the closing bracket.
        raw.find(']').map_or(raw, |end| &raw[..=end])
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    let h = no_port.strip_suffix('.').unwrap_or(no_port);
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(h.to_ascii_lowercase())
    } else {
        Cow::Borrowed(h)
    }
}

/// Rejects paths a router could be tricked by: not starting with `/`, or holding
/// `.`/`..` segments (plain or percent-encoded), encoded slashes or backslashes that an
/// upstream would resolve differently from the gateway. Allocation-free.
///
/// Also `;`, plain or as `%3B`: Tomcat and Jetty read `/admin;x` as `/admin` and
/// `/pub/..;/admin` as `/admin` (path parameters), WildFly and WebLogic end the
/// path there, while the gateway would route both under another prefix: the
/// classic way past a proxy's path rules (Orange Tsai, Black Hat 2018; nginx
/// issue #556). Spring Security's default firewall refuses them the same way.
pub fn path_is_safe(path: &str) -> bool {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return false;
    }
    if !b.iter().any(|&c| matches!(c, b'.' | b'%' | b'\\' | b';')) {
        return true;
    }
    if b.contains(&b'\\') || b.contains(&b';') {
        return false;
    }
    path.split('/')
        .all(|seg| !is_dot_segment(seg) && !has_encoded_separator(seg))
}

fn is_dot_segment(seg: &str) -> bool {
    let mut rest = seg.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[0] == b'%' && rest[1] == b'2' && rest[2] | 0x20 == b'e' {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

/// `%2F` (`/`), `%5C` (`\`) or `%3B` (`;`).
fn has_encoded_separator(seg: &str) -> bool {
    seg.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2] | 0x20),
                (b'2', b'f') | (b'5', b'c') | (b'3', b'b')
            )
    })
}

#[cfg(test)]
mod tests;
