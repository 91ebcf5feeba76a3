//! What happens around the upstream exchange, for every transport: which
//! server the next attempt goes to, and the end of each request (metrics,
//! access log, jails).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::{LocalReply, RequestCtx};
use crate::access_log;
use crate::bans::Event;
use crate::config::{Balance, HashKey};
use crate::shield::Shield;

/// Picks the server of the next attempt in the route's pool (retries avoid the
/// servers already tried) and counts it in flight; `None` when every server is down.
pub fn pick_server<'a>(
    route: &crate::routing::Route,
    ctx: &mut RequestCtx,
    path: &'a str,
    header: impl Fn(&http::HeaderName) -> Option<&'a [u8]>,
) -> Option<usize> {
    ctx.release_server();
    let pool = route.pool()?;
    if ctx.attempts.count > 0 {
        pool.metrics.retries.inc();
    }
    let ip_bytes;
    let key: &[u8] = match &pool.config.balance {
        Balance::ConsistentHash(HashKey::Ip) => {
            ip_bytes = ctx.client.ip.map(|ip| match ip {
                std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
                std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
            });
            ip_bytes.as_deref().unwrap_or(b"")
        }
        Balance::ConsistentHash(HashKey::Path) => path.as_bytes(),
        Balance::ConsistentHash(HashKey::Header(h)) => header(h).unwrap_or(b""),
        _ => b"",
    };
    let i = pool.select(key, ctx.attempts.tried)?;
    ctx.attempts.tried.add(i);
    ctx.attempts.count += 1;
    ctx.attempts.started = Some(std::time::Instant::now());
    pool.servers[i].inflight.fetch_add(1, Relaxed);
    ctx.attempts.current = Some(i);
    ctx.attempts.last = Some(i);
    Some(i)
}

/// How an attempt at an upstream server failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection (refused, unreachable, timed out): nothing reached the server.
    Connect { timeout: bool },
    /// The request was (or may have been) sent, and no whole answer came back.
    Exchange { timeout: bool },
}

/// Counts a failed attempt at the request's current server (passive
/// ejection, the pool's metrics) and says whether another attempt may
/// follow, for both transports: a failed connect goes to another server
/// while retries last, whatever the method; after the request was sent,
/// only an idempotent request that got no response yet (a POST may have
/// been processed).
pub fn attempt_failed(ctx: &RequestCtx, method: &http::Method, failure: Failure) -> bool {
    let (Some(pool), Some(i)) = (ctx.route().and_then(|r| r.pool()), ctx.attempts.current) else {
        return false;
    };
    pool.report_failure(i);
    let (timeout, sent) = match failure {
        Failure::Connect { timeout } => (timeout, false),
        Failure::Exchange { timeout } => (timeout, true),
    };
    if timeout {
        pool.metrics.timeout.inc();
    } else if sent {
        pool.metrics.error.inc();
    } else {
        pool.metrics.connect_error.inc();
    }
    let within = ctx.attempts.count <= pool.config.retries;
    within && (!sent || (is_idempotent(method) && !ctx.attempts.response_started))
}

/// Counts an attempt whose response head arrived.
pub fn attempt_answered(ctx: &mut RequestCtx) {
    ctx.attempts.response_started = true;
    if let (Some(pool), Some(i)) = (ctx.route().and_then(|r| r.pool()), ctx.attempts.current) {
        pool.report_success(i);
        pool.metrics.ok.inc();
        if let Some(t) = ctx.attempts.started {
            let took = t.elapsed();
            pool.metrics.response_duration.observe(took.as_secs_f64());
            ctx.attempts.upstream_time = Some(took);
        }
    }
}

/// The end of every request, proxied by pingora or by the fast path: ends the
/// attempt's in-flight count, records the route's metrics, writes the access log
/// line and feeds the jails.
pub async fn finish(
    shield: &Shield,
    ctx: &mut RequestCtx,
    line: &access_log::Line<'_>,
    status: u16,
) {
    ctx.release_server();
    let elapsed = ctx.start.elapsed();
    if let (Some(route), Some(cs)) = (ctx.route(), ctx.cache_status) {
        crate::metrics::metrics()
            .cache_lookups
            .with_label_values(&[route.name.as_ref(), cs])
            .inc();
    }
    let metrics = match ctx.route() {
        Some(route) => &route.metrics,
        None => crate::metrics::unrouted(),
    };
    metrics.record(line.method, status, elapsed.as_secs_f64());
    metrics.record_bytes(ctx.body_bytes, line.bytes as u64);
    if ctx.snapshot.config.access_log.enabled {
        log_line(line, ctx, status, elapsed);
    }
    if let Some(ip) = ctx.client.chargeable() {
        let snap = &ctx.snapshot;
        if !snap.config.jails.is_empty() && ctx.local != Some(LocalReply::Banned) {
            let ev = Event {
                route: ctx.route().map(|r| r.name.as_ref()),
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

/// Writes the request's access log line (when the log is on).
fn log_line(line: &access_log::Line<'_>, ctx: &RequestCtx, status: u16, elapsed: Duration) {
    if !tracing::enabled!(target: access_log::TARGET, tracing::Level::INFO) {
        return;
    }
    let host = line.host;
    let route = ctx.route().map_or("", |r| &r.name);
    // The pool the route forwards to; `upstream` is its server that answered.
    let pool = ctx.route().and_then(|r| r.pool()).map_or("", |p| &*p.name);
    let upstream = match (ctx.route(), ctx.attempts.last) {
        (Some(r), Some(i)) => r
            .pool()
            .and_then(|p| p.servers.get(i))
            .map_or("", |s| s.label.as_str()),
        _ => "",
    };
    let local = ctx.local.map_or("", LocalReply::as_str);
    let auth = match (&ctx.identity, ctx.auth_reject) {
        (_, Some(r)) => r.as_str(),
        (Some(id), None) => match id.kind {
            crate::auth::IdentityKind::Jwt => "jwt",
            crate::auth::IdentityKind::ApiKey => "api_key",
        },
        (None, None) => "public",
    };
    let user = ctx.identity.as_ref().map_or("", |i| i.subject.as_str());
    let empty = super::LogFields::default();
    let f = ctx.log.as_deref().unwrap_or(&empty);
    tracing::info!(
        target: access_log::TARGET,
        request_id = ctx.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
        client_ip = %access_log::OptIp(ctx.client.ip),
        host,
        route,
        method = line.method.as_str(),
        path = line.path,
        query = f.query.as_str(),
        protocol = f.protocol,
        status,
        bytes = line.bytes,
        bytes_in = ctx.body_bytes,
        pool,
        upstream,
        attempts = ctx.attempts.count,
        upstream_ms = ctx.attempts.upstream_time.map(|t| t.as_secs_f64() * 1000.0),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        cache = ctx.cache_status.unwrap_or(""),
        auth,
        user,
        user_agent = f.user_agent.as_str(),
        referer = f.referer.as_str(),
        tls = f.tls,
        local,
    );
}

/// Methods a failed attempt may be sent again for (RFC 9110 §9.2.2).
pub fn is_idempotent(m: &http::Method) -> bool {
    use http::Method;
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}
