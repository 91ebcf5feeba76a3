//! The Pingora `ProxyHttp` implementation: the request phases of the gateway.
//!
//! `request_filter` loads the snapshot, resolves the client IP, request id, host
//! and route; `upstream_peer` picks a server; the filters set forwarding headers
//! and header rules; `fail_to_connect`/`error_while_proxy` decide retries and
//! passive ejection; `logging` writes metrics and the access log, once.

mod cache_phases;
mod ctx;
mod decorate;
mod forward;
mod plain;
mod policies;
pub mod respond;

use std::borrow::Cow;
use std::sync::atomic::Ordering::Relaxed;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

pub use ctx::{LocalReply, RequestCtx};
pub use forward::{ip_value, is_forged};

use std::sync::Arc;

use crate::access_log;
use crate::bans::Event;
use crate::cluster::Shield;
use crate::config::Balance;
use crate::config::BanAction;
use crate::config::HashKey;
use crate::request_id;
use crate::routing::{path_is_safe, Action, RouteMatch};
use crate::snapshot::SnapshotHandle;

const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

pub struct GatewayProxy {
    snapshot: SnapshotHandle,
    /// Whether this service terminates TLS (for `X-Forwarded-Proto`).
    https: bool,
    shield: Arc<Shield>,
    /// `server.send_timeout`, fixed at start like the rest of that section.
    send_timeout: std::time::Duration,
}

impl GatewayProxy {
    pub fn new(snapshot: SnapshotHandle, https: bool, shield: Arc<Shield>) -> Self {
        let send_timeout = snapshot.load().config.server.send_timeout;
        GatewayProxy {
            snapshot,
            https,
            shield,
            send_timeout,
        }
    }
}

fn is_idempotent(m: &http::Method) -> bool {
    use http::Method;
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

#[async_trait]
impl ProxyHttp for GatewayProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // pingora has no write timeout of its own: a client that stopped
        // reading would hold the response (and its upstream) for ever.
        session.set_write_timeout(Some(self.send_timeout));
        let snap = self.snapshot.load_full();
        let req = session.req_header();
        ctx.request_id = Some(request_id::from_request(
            req.headers.get(&forward::X_REQUEST_ID),
        ));
        if let Some(peer) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            let req = session.req_header();
            let xff = req.headers.get_all(&forward::X_FORWARDED_FOR);
            let cdn = req
                .headers
                .get(&forward::CF_CONNECTING_IP)
                .or_else(|| req.headers.get(&forward::TRUE_CLIENT_IP))
                .map(|v| v.as_bytes());
            let identified = ctx.identify(
                peer,
                &snap.trusted_proxies,
                xff.iter().map(|v| v.as_bytes()),
                cdn,
            );
            if identified.is_err() {
                ctx.snapshot = Some(snap.clone());
                return Self::reply(session, ctx, LocalReply::BadForwarding).await;
            }
        }
        ctx.snapshot = Some(snap.clone());
        if let Some(ip) = ctx.chargeable_ip() {
            if let Some(ban) = self.shield.bans.check(ip, snap.config.limits.ipv6_prefix) {
                if ban.action == BanAction::Drop && !ctx.peer_trusted {
                    // Close without an answer (the connection filter refuses new
                    // connections; this catches ones opened before the ban).
                    ctx.local = Some(LocalReply::Dropped);
                    return Error::e_explain(ErrorType::ConnectionClosed, "client is banned");
                }
                return Self::reply(session, ctx, LocalReply::Banned).await;
            }
        }

        let req = session.req_header();
        let path = req.uri.path();
        if !path_is_safe(path) || policies::is_ambiguous(req) {
            return Self::reply(session, ctx, LocalReply::BadRequest).await;
        }
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.host());
        if host.is_none() && req.version == http::Version::HTTP_11 {
            // RFC 9112 §3.2: an HTTP/1.1 request without Host is invalid (as nginx).
            return Self::reply(session, ctx, LocalReply::BadRequest).await;
        }
        if host.is_some_and(|h| !crate::routing::valid_authority(h)) {
            return Self::reply(session, ctx, LocalReply::BadRequest).await;
        }
        let Some(host_routes) = snap.router.host(host) else {
            return Self::reply(session, ctx, LocalReply::UnknownHost).await;
        };
        if !self.https && path.starts_with(ACME_PREFIX) {
            if let Some(root) = &snap.config.tls.acme_webroot {
                let token = path[ACME_PREFIX.len()..].to_owned();
                return plain::acme_challenge(session, ctx, root, &token).await;
            }
        }
        if policies::headers_size(req) > snap.config.limits.max_header_bytes {
            return Self::reply(session, ctx, LocalReply::HeadersTooLarge).await;
        }
        ctx.security = Some(host_routes.security.clone());
        let routed = crate::routing::normalize_path(path);
        let found = host_routes.find(&routed, &req.method);
        if let Cow::Owned(p) = routed {
            ctx.normalized_path = Some(p);
        }
        match found {
            RouteMatch::Found(route) => {
                let route = route.clone();
                ctx.route = Some(route.clone());
                if let Action::Deny { status } = route.action {
                    // As if nothing were there: before any policy or redirect.
                    return Self::deny(session, ctx, status).await;
                }
                if !self.https && !route.allow_plain && snap.config.tls.redirect_http {
                    if let Some(https) = snap.config.listen.https {
                        let host = host.map(|h| crate::routing::normalize_host(h).into_owned());
                        return plain::redirect_to_https(
                            session,
                            ctx,
                            host.as_deref(),
                            https.port(),
                        )
                        .await;
                    }
                }
                if req.method == http::Method::OPTIONS
                    && !route.lists_method(&req.method)
                    && !crate::cors::is_preflight(&req.method, &req.headers)
                {
                    // A CORS route takes OPTIONS for its preflights only.
                    let allow = host_routes.allow_of(&route).cloned();
                    return Self::method_not_allowed(session, ctx, allow).await;
                }
                if self.route_policies(session, ctx, &snap, &route).await? {
                    return Ok(true);
                }
                match &route.action {
                    Action::Upstream(_) => {}
                    Action::Respond(f) => {
                        ctx.local = Some(LocalReply::RouteAction);
                        respond::fixed(session, f, ctx.request_id.as_ref()).await?;
                        return Ok(true);
                    }
                    Action::Redirect(rd) => {
                        let pq = session
                            .req_header()
                            .uri
                            .path_and_query()
                            .map_or("/", |p| p.as_str());
                        let location = crate::routing::redirect_location(rd, pq);
                        ctx.local = Some(LocalReply::RouteAction);
                        respond::redirect(session, rd.status, &location, ctx.request_id.as_ref())
                            .await?;
                        return Ok(true);
                    }
                    Action::Deny { status } => return Self::deny(session, ctx, *status).await,
                }
                if route.cache.is_some() {
                    return cache_phases::fast_hit(session, ctx, self.https).await;
                }
                Ok(false)
            }
            RouteMatch::MethodNotAllowed(allow) => {
                let allow = allow.clone();
                Self::method_not_allowed(session, ctx, Some(allow)).await
            }
            RouteMatch::NotFound => Self::reply(session, ctx, LocalReply::NoRoute).await,
        }
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(b) = body.as_ref() {
            ctx.body_bytes += b.len() as u64;
        }
        if let Some(max) = ctx.route.as_ref().and_then(|r| r.max_body) {
            if ctx.body_bytes > max {
                // Stops the upload before the upstream gets the whole body.
                ctx.local = Some(LocalReply::BodyTooLarge);
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body over max_body");
            }
        }
        // A body trickled in to hold the connection and its upstream (slow
        // POST): once it has taken longer than a head may, it must keep up an
        // average rate. Not for upgraded connections: an idle WebSocket is fine.
        if !end_of_stream && !session.was_upgraded() && !session.is_upgrade_req() {
            if let Some(s) = ctx.snapshot.as_ref() {
                let server = &s.config.server;
                if crate::limits::body_too_slow(
                    ctx.body_bytes,
                    ctx.start.elapsed(),
                    server.header_timeout,
                    server.min_body_rate,
                ) {
                    ctx.local = Some(LocalReply::TooSlow);
                    return Error::e_explain(ErrorType::HTTPStatus(408), "request body too slow");
                }
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(route) = ctx.route.clone() else {
            return Error::e_explain(ErrorType::InternalError, "no route in context");
        };
        let req = session.req_header();
        let Some(i) = pick_server(&route, ctx, req.uri.path(), |h| {
            req.headers.get(h).map(|v| v.as_bytes())
        }) else {
            return Error::e_explain(
                ErrorType::Custom(respond::NO_UPSTREAM),
                "every server of the pool is down",
            );
        };
        match route.pool() {
            Some(pool) => Ok(pool.peer(i)),
            None => Error::e_explain(ErrorType::InternalError, "route has no upstream"),
        }
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        cache_phases::enable(session, ctx);
        Ok(())
    }

    fn cache_key_callback(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
    ) -> Result<pingora::cache::CacheKey> {
        cache_phases::key(session, ctx)
    }

    fn response_cache_filter(
        &self,
        _session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<pingora::cache::RespCacheable> {
        Ok(cache_phases::cacheable(resp, ctx))
    }

    fn cache_vary_filter(
        &self,
        meta: &pingora::cache::CacheMeta,
        ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<pingora::cache::key::HashBinary> {
        let rc = ctx.route.as_ref()?.cache.as_ref()?;
        crate::cache::variance(meta, req, rc)
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        // Revalidation in the background (stale-while-revalidate) or an upstream
        // failure (stale-if-error); the stored response's own windows still apply.
        error.is_none_or(|e| e.esource() == &ErrorSource::Upstream)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // The work is in a plain function: an async body keeps every local in the
        // boxed future, which made this phase's allocation a large one.
        decorate::upstream_request(session, upstream_request, ctx, self.https)
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.response_started = true;
        if let (Some(pool), Some(i)) = (ctx.route.as_ref().and_then(|r| r.pool()), ctx.server) {
            pool.report_success(i);
            pool.metrics.ok.inc();
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        decorate::response(session, resp, ctx, self.https)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if ctx.brotli.is_some() {
            cache_phases::brotli_body(body, end_of_stream, ctx)?;
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(pool), Some(i)) = (ctx.route.as_ref().and_then(|r| r.pool()), ctx.server) {
            pool.report_failure(i);
            if matches!(e.etype(), ErrorType::ConnectTimedout) {
                pool.metrics.timeout.inc();
            } else {
                pool.metrics.connect_error.inc();
            }
            // Nothing reached the server, so any method may go elsewhere.
            e.set_retry(ctx.attempts <= pool.config.retries);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        let upstream_fault = e.esource() == &ErrorSource::Upstream;
        if let (Some(pool), Some(i)) = (ctx.route.as_ref().and_then(|r| r.pool()), ctx.server) {
            if upstream_fault {
                pool.report_failure(i);
                if matches!(
                    e.etype(),
                    ErrorType::ReadTimedout | ErrorType::WriteTimedout
                ) {
                    pool.metrics.timeout.inc();
                } else {
                    pool.metrics.error.inc();
                }
            }
            let retry_allowed = upstream_fault
                && !ctx.response_started
                && is_idempotent(&session.req_header().method)
                && !session.as_ref().retry_buffer_truncated()
                && ctx.attempts <= pool.config.retries;
            if retry_allowed {
                e.set_retry(true);
            } else if client_reused && upstream_fault && !ctx.response_started {
                // A pooled connection closed under us: pingora's own rule retries only
                // when nothing can have been processed.
                e.retry.decide_reuse(client_reused);
                if !is_idempotent(&session.req_header().method) {
                    e.set_retry(false);
                }
            } else {
                e.set_retry(false);
            }
        } else {
            e.set_retry(false);
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        if ctx.local == Some(LocalReply::Dropped) {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let (status, code, msg) = respond::classify(e);
        if status > 0 && session.response_written().is_none() {
            if let Err(we) =
                respond::json_error(session, status, code, msg, ctx.request_id.as_ref()).await
            {
                tracing::debug!(error = %we, "could not send the error response");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or_else(|| e.map(|e| respond::classify(e).0))
            .unwrap_or(0);
        let req = session.req_header();
        let line = access_log::Line {
            host: req
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri.host())
                .unwrap_or(""),
            method: &req.method,
            path: req.uri.path(),
            bytes: session.body_bytes_sent(),
        };
        finish(&self.shield, ctx, &line, status).await;
    }
}

/// Picks the server of the next attempt in the route's pool (retries avoid the
/// servers already tried) and counts it in flight; `None` when every server is down.
pub(crate) fn pick_server<'a>(
    route: &crate::routing::Route,
    ctx: &mut RequestCtx,
    path: &'a str,
    header: impl Fn(&http::HeaderName) -> Option<&'a [u8]>,
) -> Option<usize> {
    ctx.release_server();
    let pool = route.pool()?;
    if ctx.attempts > 0 {
        pool.metrics.retries.inc();
    }
    let ip_bytes;
    let key: &[u8] = match &pool.config.balance {
        Balance::ConsistentHash(HashKey::Ip) => {
            ip_bytes = ctx.client_ip.map(|ip| match ip {
                std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
                std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
            });
            ip_bytes.as_deref().unwrap_or(b"")
        }
        Balance::ConsistentHash(HashKey::Path) => path.as_bytes(),
        Balance::ConsistentHash(HashKey::Header(h)) => header(h).unwrap_or(b""),
        _ => b"",
    };
    let i = pool.select(key, ctx.tried)?;
    ctx.tried.add(i);
    ctx.attempts += 1;
    pool.servers[i].inflight.fetch_add(1, Relaxed);
    ctx.server = Some(i);
    ctx.last = Some(i);
    Some(i)
}

/// The end of every request, proxied by pingora or by the fast path: ends the
/// attempt's in-flight count, records the route's metrics, writes the access log
/// line and feeds the jails.
pub(crate) async fn finish(
    shield: &Shield,
    ctx: &mut RequestCtx,
    line: &access_log::Line<'_>,
    status: u16,
) {
    ctx.release_server();
    let elapsed = ctx.start.elapsed();
    if let (Some(route), Some(cs)) = (&ctx.route, ctx.cache_status) {
        crate::metrics::metrics()
            .cache_lookups
            .with_label_values(&[route.name.as_ref(), cs])
            .inc();
    }
    if let Some(route) = &ctx.route {
        route
            .metrics
            .record(line.method, status, elapsed.as_secs_f64());
    } else {
        crate::metrics::unrouted().record(line.method, status, elapsed.as_secs_f64());
    }
    if ctx
        .snapshot
        .as_ref()
        .is_some_and(|s| s.config.access_log.enabled)
    {
        access_log::write(line, ctx, status, elapsed);
    }
    if let (Some(snap), Some(ip)) = (ctx.snapshot.clone(), ctx.chargeable_ip()) {
        if !snap.config.jails.is_empty() && ctx.local != Some(LocalReply::Banned) {
            let ev = Event {
                route: ctx.route.as_ref().map(|r| r.name.as_ref()),
                status,
                auth_reject: ctx.auth_reject.map(|r| r.as_str()),
                rate_limited: ctx.local == Some(LocalReply::RateLimited),
                malformed: matches!(
                    ctx.local,
                    Some(LocalReply::BadRequest | LocalReply::HeadersTooLarge)
                ),
            };
            let v6 = snap.config.limits.ipv6_prefix;
            shield
                .bans
                .observe(&snap.config.jails, ip, v6, &ev, snap.redis.as_deref())
                .await;
        }
    }
}
