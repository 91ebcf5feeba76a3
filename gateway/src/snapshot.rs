//! The compiled, immutable view of one configuration.
//!
//! A request loads the current snapshot once (`ArcSwap::load_full`) into its context
//! and uses it to the end, so a reload never changes the rules under a request in
//! flight. Pools whose definition did not change are carried over from the previous
//! snapshot, keeping their health and ejection state.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use indexmap::IndexMap;

use crate::auth::Authenticator;
use crate::cluster::RedisLink;
use crate::config::{Config, RouteAction};
use crate::metrics::RouteMetrics;
use crate::routing::{Action, HostRoutes, Route, Router};
use crate::upstream::{health::http_check, Pool};

pub struct Snapshot {
    pub config: Arc<Config>,
    /// Kept across reloads while `auth:` is unchanged (keys, token cache, revocations).
    pub auth: Arc<Authenticator>,
    /// Cluster mode: kept across reloads while `store.redis` is unchanged.
    pub redis: Option<Arc<RedisLink>>,
    pub router: Router,
    pub pools: IndexMap<String, Arc<Pool>>,
    pub trusted_proxies: crate::config::TrustedProxies,
    pub generation: u64,
    pub loaded_at: SystemTime,
}

pub type SnapshotHandle = Arc<ArcSwap<Snapshot>>;

impl Snapshot {
    pub fn build(config: Config, previous: Option<&Snapshot>) -> Snapshot {
        let mut pools = IndexMap::new();
        for (name, u) in &config.upstreams {
            let reused = previous
                .and_then(|p| p.pools.get(name))
                .filter(|p| p.config == *u)
                .cloned();
            let pool = reused.unwrap_or_else(|| {
                let mut pool = Pool::new(u.clone());
                if let Some(hc) = u
                    .health_check
                    .as_ref()
                    .and_then(|h| http_check(h, u.tls.as_ref()))
                {
                    pool.set_health_check(Box::new(hc));
                }
                Arc::new(pool)
            });
            pools.insert(name.clone(), pool);
        }
        let auth = previous
            .map(|p| p.auth.clone())
            .filter(|a| a.config == config.auth)
            .unwrap_or_else(|| {
                let fresh = Authenticator::new(config.auth.clone());
                // A changed `auth:` section must not forget who logged out: the
                // new set would be empty until its first poll.
                if let (Some(new), Some(old)) = (
                    &fresh.revocations,
                    previous.and_then(|p| p.auth.revocations.as_ref()),
                ) {
                    new.carry_over(old);
                }
                Arc::new(fresh)
            });
        let redis = config.store.redis.as_ref().and_then(|rc| {
            let same = previous
                .and_then(|p| p.redis.clone())
                .filter(|l| l.config == *rc);
            same.or_else(|| match RedisLink::new(rc.clone()) {
                Ok(l) => Some(Arc::new(l)),
                Err(e) => {
                    tracing::error!(error = ?e.kind(), "store.redis: cannot use this URL");
                    None
                }
            })
        });
        let mut compiled = Vec::new();
        for h in &config.hosts {
            let host: Arc<str> = h.name.as_str().into();
            let routes = h
                .routes
                .iter()
                .filter_map(|r| {
                    let action = match &r.action {
                        // Validation guarantees the upstream exists.
                        RouteAction::Upstream(u) => Action::Upstream(pools.get(u)?.clone()),
                        RouteAction::Deny { status } => Action::Deny { status: *status },
                        RouteAction::Respond(f) => Action::Respond(f.clone()),
                        RouteAction::Redirect(rd) => Action::Redirect(rd.clone()),
                        RouteAction::Static(site) => Action::Static(site.clone()),
                    };
                    let pingora_only = crate::routing::pingora_only(
                        r.cache.as_deref(),
                        r.compress.is_some(),
                        &action,
                    );
                    Some(Arc::new(Route {
                        name: r.name.as_str().into(),
                        host: host.clone(),
                        matcher: r.matcher.clone(),
                        methods: r.methods.clone(),
                        action,
                        rewrite: r.rewrite.clone(),
                        request_headers: r.request_headers.clone(),
                        response_headers: r.response_headers.clone(),
                        metrics: RouteMetrics::new(&h.name, &r.name),
                        access: r.access.clone(),
                        cors: r.cors.clone().map(Arc::new),
                        max_body: r.max_body,
                        allow_plain: r.allow_plain,
                        rate_limit: r.rate_limit.clone(),
                        cache: r.cache.clone(),
                        compress: r.compress.clone(),
                        pingora_only,
                    }))
                })
                .collect();
            compiled.push(HostRoutes::new(
                &h.name,
                routes,
                Arc::new(h.security.clone()),
            ));
        }
        crate::metrics::declare(
            config.jails.iter().map(|j| j.name.as_str()),
            compiled.iter().flat_map(|h| h.routes.iter()).map(|r| {
                (
                    r.name.as_ref(),
                    r.rate_limit.as_ref().map(|p| p.name.as_ref()),
                    r.cache.is_some(),
                )
            }),
        );
        let router = Router::new(&config.hosts, compiled);
        Snapshot {
            trusted_proxies: config.trusted_proxies.clone(),
            config: Arc::new(config),
            auth,
            redis,
            router,
            pools,
            generation: previous.map_or(1, |p| p.generation + 1),
            loaded_at: SystemTime::now(),
        }
    }

    /// A one-screen description: hosts, routes, upstreams (used by `check` and
    /// `/admin/config`).
    pub fn summary(&self) -> serde_json::Value {
        summary_of(&self.config)
    }
}

pub fn summary_of(c: &Config) -> serde_json::Value {
    use serde_json::json;
    let hosts: Vec<_> = c
        .hosts
        .iter()
        .map(|h| {
            json!({
                "name": h.name,
                "aliases": h.aliases,
                "default": h.is_default,
                "routes": h.routes.iter().map(|r| json!({
                    "name": r.name,
                    "match": r.matcher.describe(),
                    "methods": r.methods.as_ref().map(|m| m.iter().map(|m| m.as_str().to_owned()).collect::<Vec<_>>()),
                    "action": r.action.describe(),
                    "upstream": r.action.upstream(),
                    "rate_limit": r.rate_limit.as_ref().map(|p| format!(
                        "{}/{}s burst {} by {:?}{}",
                        p.count,
                        p.period.as_secs(),
                        p.burst,
                        p.key,
                        if p.per_route { "" } else { " (shared budget)" }
                    )),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let upstreams: serde_json::Map<String, serde_json::Value> = c
        .upstreams
        .iter()
        .map(|(n, u)| {
            (
                n.clone(),
                json!({
                    "servers": u.servers.iter().map(|s| format!("{} (weight {})", s.addr, s.weight)).collect::<Vec<_>>(),
                    "balance": format!("{:?}", u.balance),
                    "health_check": u.health_check.as_ref().map(|h| format!("GET {} every {:?}", h.path, h.interval)),
                    "retries": u.retries,
                }),
            )
        })
        .collect();
    let jails: Vec<_> = c
        .jails
        .iter()
        .map(|j| {
            json!({
                "name": j.name,
                "maxretry": j.maxretry,
                "findtime_seconds": j.findtime.as_secs(),
                "bantime_seconds": j.bantime.as_secs(),
                "action": j.action.as_str(),
            })
        })
        .collect();
    json!({
        "content_hash": c.content_hash,
        "jails": jails,
        "cluster": c.store.redis.is_some(),
        "listen": { "http": c.listen.http.map(|a| a.to_string()), "admin": c.listen.admin.to_string() },
        "hosts": hosts,
        "upstreams": upstreams,
    })
}
