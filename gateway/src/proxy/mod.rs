//! The Pingora `ProxyHttp` implementation: the request phases of the gateway.
//!
//! `request_filter` loads the snapshot, resolves the client IP, request id, host
//! and route; `upstream_peer` picks a server; the filters set forwarding headers
//! and header rules; `fail_to_connect`/`error_while_proxy` decide retries and
//! passive ejection; `logging` writes metrics and the access log, once.

mod cache_phases;
pub mod decorate;
mod files;
mod forward;
pub mod respond;
mod shaping;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use std::sync::Arc;

use crate::access_log;
use crate::pipeline::{
    self, finish, is_idempotent, pick_server, Env, Failure, LocalReply, Request, RequestCtx, Step,
};
use crate::shield::Shield;
use crate::snapshot::SnapshotHandle;

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

/// The pipeline's view of a request pingora parsed.
pub fn view(req: &RequestHeader, peer: Option<std::net::IpAddr>) -> Request<'_, http::HeaderMap> {
    Request {
        method: &req.method,
        version: req.version,
        target: req.uri.path_and_query().map_or("/", |p| p.as_str()),
        path: client_path(req),
        host: host_of(req),
        fields: &req.headers,
        peer,
        head_size: headers_size(req),
    }
}

/// The path the client sent, for the pipeline and the access line alike: the
/// URI's path for origin-form (`/…`), absolute-form (`http://host/…`) and `*`.
/// pingora takes a target of none of these forms (`GET x?y HTTP/1.1`,
/// `GET ?y HTTP/1.1`), keeps its bytes and gives its URI the path `/`: routed
/// as `/`, it would reach the root route and go upstream as `GET /`. Such a
/// target's own bytes up to `?` have no leading slash, so the pipeline refuses
/// them (400, RFC 9112 §3.2) and the access line names them, as on the fast
/// path.
fn client_path(req: &RequestHeader) -> &str {
    let raw = req.raw_path();
    if has_path(raw) {
        return req.uri.path();
    }
    let path = raw.split(|&b| b == b'?').next().unwrap_or(raw);
    std::str::from_utf8(path).unwrap_or("")
}

/// Whether a request-target is of a form pingora's URI holds the path of.
fn has_path(raw: &[u8]) -> bool {
    use pingora::http::authority::{raw_target_authority, RawTargetAuthority};
    raw.first() == Some(&b'/')
        || raw == b"*"
        || matches!(
            raw_target_authority(raw),
            RawTargetAuthority::Absolute { .. }
        )
}

/// The site a request names: its `Host`, else (h2) its URI's authority.
fn host_of(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.host())
}

#[async_trait]
impl ProxyHttp for GatewayProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.snapshot.load_full())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // pingora has no write timeout of its own: a client that stopped
        // reading would hold the response (and its upstream) for ever.
        session.set_write_timeout(Some(self.send_timeout));
        let snap = ctx.snapshot.clone();
        let tls = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .map_or("", |t| pipeline::tls_name(&t.version));
        let env = Env {
            snap: &snap,
            shield: &self.shield,
            https: self.https,
            tls,
        };
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let view = view(session.req_header(), peer);
        let reply = match pipeline::route(&env, &view, ctx) {
            Step::Answer(r) => r,
            Step::Drop => return Error::e_explain(ErrorType::ConnectionClosed, "client is banned"),
            Step::Acme => pipeline::acme(&snap, view.path, ctx).await,
            Step::Route(route) => match pipeline::policies(&env, &view, ctx, &route).await {
                Some(r) => r,
                None => {
                    if let crate::routing::Action::Static(site) = &route.action {
                        // Boxed: the file answer's state stays out of this
                        // phase's future.
                        let reply =
                            Box::pin(pipeline::statics::serve(&env, &view, ctx, &route, site))
                                .await;
                        files::write(session, reply).await?;
                        respond::drain_h2_body(session).await;
                        return Ok(true);
                    }
                    let hit = route
                        .cache
                        .as_ref()
                        .and_then(|_| pipeline::cached::fresh_hit(&view, ctx, &route));
                    return match hit {
                        Some(hit) => {
                            cache_phases::write_hit(session, ctx, hit, self.https).await?;
                            respond::drain_h2_body(session).await;
                            Ok(true)
                        }
                        None => Ok(false),
                    };
                }
            },
        };
        ctx.local = Some(reply.why);
        respond::write(session, &reply).await?;
        respond::drain_h2_body(session).await;
        Ok(true)
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
        if let Some(max) = ctx.route().and_then(|r| r.max_body) {
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
            let server = &ctx.snapshot.config.server;
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
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(route) = ctx.route().cloned() else {
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
        let rc = ctx.route()?.cache.as_ref()?;
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
        pipeline::attempt_answered(ctx);
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
            shaping::brotli_body(body, end_of_stream, ctx)?;
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let timeout = matches!(e.etype(), ErrorType::ConnectTimedout);
        let failure = Failure::Connect { timeout };
        e.set_retry(pipeline::attempt_failed(
            ctx,
            &session.req_header().method,
            failure,
        ));
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
        if ctx.route().and_then(|r| r.pool()).is_some() && ctx.attempts.current.is_some() {
            let timeout = matches!(
                e.etype(),
                ErrorType::ReadTimedout | ErrorType::WriteTimedout
            );
            let method = &session.req_header().method;
            let retry_allowed = upstream_fault
                && pipeline::attempt_failed(ctx, method, Failure::Exchange { timeout })
                && !session.as_ref().retry_buffer_truncated();
            if retry_allowed {
                e.set_retry(true);
            } else if client_reused && upstream_fault && !ctx.attempts.response_started {
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
                respond::proxy_error(session, (status, code, msg), ctx.request_id.as_ref()).await
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
        // Only the access log line names the host: not looked up without it.
        let host = if ctx.snapshot.config.access_log.enabled {
            host_of(req).unwrap_or("")
        } else {
            ""
        };
        let line = access_log::Line {
            host,
            method: &req.method,
            path: client_path(req),
            bytes: session.body_bytes_sent(),
        };
        finish(&self.shield, ctx, &line, status).await;
    }
}

/// Total size of the request head as the client sent it (approximately: names,
/// values and separators).
fn headers_size(req: &RequestHeader) -> u64 {
    let mut n = req.uri.path_and_query().map_or(0, |p| p.as_str().len()) + 16;
    for (k, v) in req.headers.iter() {
        n += k.as_str().len() + v.len() + 4;
    }
    n as u64
}
