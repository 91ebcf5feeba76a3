//! Which routes let the internet reach a backend's internal endpoints.
//!
//! The backends serve `/metrics`, `/health/*` and `/revocations` for
//! Prometheus, health checks and the gateway itself. A broad route (a prefix
//! with `strip_prefix`, say) can put them on the public site without anyone
//! noticing; `check` and every reload warn about each one found. The test is
//! the router's own: the public path that would map onto the internal one is
//! worked out from the route's rewrite, then routed like a request.

use std::sync::Arc;

use http::Method;

use super::{Action, HostRoutes, Route, RouteMatch, Router};
use crate::config::{PathMatch, Rewrite};

/// Backend paths that are never for the public.
pub const INTERNAL_PATHS: &[&str] = &[
    "/metrics",
    "/health",
    "/health/live",
    "/health/ready",
    "/revocations",
];

/// A route that proxies a public path to an internal one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposure {
    pub host: String,
    pub route: String,
    pub upstream: String,
    /// What a client asks for…
    pub public_path: String,
    /// …and what the backend is asked for.
    pub internal_path: String,
}

impl std::fmt::Display for Exposure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "hosts.{:?} route {:?}: GET {} reaches upstream {:?} at {}, an internal endpoint \
             (add a `deny` route for it, or narrow this route)",
            self.host, self.route, self.public_path, self.upstream, self.internal_path
        )
    }
}

pub fn exposures(router: &Router) -> Vec<Exposure> {
    let mut out = Vec::new();
    for h in &router.hosts {
        for r in &h.routes {
            let Action::Upstream(pool) = &r.action else {
                continue;
            };
            for internal in INTERNAL_PATHS {
                if let Some(public) = reaches(h, r, internal) {
                    out.push(Exposure {
                        host: h.name.to_string(),
                        route: r.name.to_string(),
                        upstream: pool.name.to_string(),
                        public_path: public,
                        internal_path: (*internal).to_owned(),
                    });
                }
            }
        }
    }
    out
}

/// The public path through which `route` sends a GET to `internal`, if any.
fn reaches(h: &HostRoutes, route: &Arc<Route>, internal: &str) -> Option<String> {
    let public = public_path_for(route, internal)?;
    let RouteMatch::Found(found) = h.find(&public, &Method::GET) else {
        return None;
    };
    if !Arc::ptr_eq(found, route) {
        // Another route (a `deny`, a narrower one) takes the path first.
        return None;
    }
    let sent = route
        .rewritten_path(&public)
        .unwrap_or_else(|| public.clone());
    (sent == internal).then_some(public)
}

/// Inverts the route's rewrite for one backend path. A regex with a rewrite
/// cannot be inverted in general; its candidates are the path itself only.
fn public_path_for(r: &Route, internal: &str) -> Option<String> {
    match (&r.rewrite, &r.matcher) {
        (Rewrite::None, _) | (Rewrite::Replace(_), PathMatch::Regex(_)) => {
            Some(internal.to_owned())
        }
        (Rewrite::StripPrefix, PathMatch::Prefix(p)) => {
            Some(format!("{}{internal}", p.trim_end_matches('/')))
        }
        (Rewrite::Replace(to), PathMatch::Prefix(p)) => internal
            .strip_prefix(to.as_str())
            .map(|rest| format!("{p}{rest}")),
        (Rewrite::Replace(to), PathMatch::Exact(e)) => (to == internal).then(|| e.clone()),
        (Rewrite::StripPrefix, _) => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::Path;

    use crate::config::load_str;
    use crate::snapshot::Snapshot;

    fn found(routes: &str) -> Vec<String> {
        let conf = format!(
            "listen: {{ http: \"127.0.0.1:0\" }}\nupstreams:\n  auth: {{ servers: [\"127.0.0.1:1\"] }}\n\
             hosts:\n  galion.app:\n    routes:\n{routes}"
        );
        let l = load_str(&conf, Path::new("t.yaml")).unwrap();
        let s = Snapshot::build(l.config, None);
        super::exposures(&s.router)
            .into_iter()
            .map(|e| format!("{} {} {}", e.route, e.public_path, e.internal_path))
            .collect()
    }

    #[test]
    fn strip_prefix_catch_all_is_found() {
        let got = found(
            "      - { name: auth-other, prefix: /api/v1/auth/, strip_prefix: true, upstream: auth }\n",
        );
        assert!(
            got.contains(&"auth-other /api/v1/auth/metrics /metrics".to_owned()),
            "{got:?}"
        );
        assert!(got.contains(&"auth-other /api/v1/auth/revocations /revocations".to_owned()));
        assert_eq!(got.len(), super::INTERNAL_PATHS.len());
    }

    #[test]
    fn a_deny_route_in_front_hides_them() {
        let got = found(
            "      - { name: internal, regex: '^/api/v1/[^/]+/(metrics|health|revocations)(/|$)', deny: 404 }\n\
             \x20     - { name: auth-other, prefix: /api/v1/auth/, strip_prefix: true, upstream: auth }\n",
        );
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn rewrites_and_plain_routes() {
        let got = found(
            "      - { name: root, prefix: /, upstream: auth }\n\
             \x20     - { name: narrow, exact: /api/me, upstream: auth, rewrite: /me }\n",
        );
        assert!(
            got.contains(&"root /metrics /metrics".to_owned()),
            "{got:?}"
        );
        assert!(!got.iter().any(|g| g.starts_with("narrow")));
    }
}
