//! The route's policies in request order (rate limits keyed by IP or header,
//! CORS preflight, access control, the other rate limits, body limit), the
//! gateway's own error replies, and request-head sanity checks.

use std::sync::Arc;

use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::{respond, GatewayProxy, LocalReply, RequestCtx};
use crate::auth::IdentityKind;
use crate::client_ip;
use crate::config::{LimitKey, RatePolicy};
use crate::limits::KeyValue;

impl GatewayProxy {
    /// Applies the route's rate limit; `Ok(true)` when the request was refused.
    async fn rate_limit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snap: &crate::snapshot::Snapshot,
        policy: &Arc<RatePolicy>,
    ) -> Result<bool> {
        // A trusted proxy's own requests (and unknown clients) are never
        // counted by address: everyone behind the proxy would share its budget.
        let ip_key = ctx
            .chargeable_ip()
            .map(|ip| KeyValue::Ip(client_ip::group(ip, snap.config.limits.ipv6_prefix).network()));
        let id = ctx.identity.clone();
        let req = session.req_header();
        let key = match &policy.key {
            LimitKey::Ip => ip_key,
            LimitKey::User => match id.as_deref() {
                Some(i) if i.kind == IdentityKind::Jwt => {
                    Some(KeyValue::Text(i.subject.as_bytes()))
                }
                _ => ip_key,
            },
            LimitKey::ApiKey => match id.as_deref() {
                Some(i) if i.kind == IdentityKind::ApiKey => {
                    Some(KeyValue::Text(i.subject.as_bytes()))
                }
                _ => ip_key,
            },
            LimitKey::Header(h) => match req.headers.get(h) {
                Some(v) => Some(KeyValue::Text(v.as_bytes())),
                None => ip_key,
            },
        };
        let Some(key) = key else {
            return Ok(false);
        };
        let outcome = self
            .shield
            .limiter
            .check(policy, key, snap.redis.as_deref())
            .await;
        ctx.rate = Some((policy.clone(), outcome));
        if outcome.allowed {
            return Ok(false);
        }
        crate::metrics::metrics()
            .rate_limited
            .with_label_values(&[policy.name.as_ref()])
            .inc();
        ctx.local = Some(LocalReply::RateLimited);
        respond::rate_limited(session, policy, &outcome, ctx.request_id.as_ref()).await?;
        Ok(true)
    }

    /// CORS preflight, access control and body limit of the matched route.
    /// Returns `Ok(true)` when the gateway answered.
    pub(super) async fn route_policies(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snap: &crate::snapshot::Snapshot,
        route: &crate::routing::Route,
    ) -> Result<bool> {
        // Limits keyed by IP or header run before access control, so a flood of bad
        // tokens is throttled before any signature is checked.
        let limit = route.rate_limit.as_ref();
        let early = limit.filter(|p| matches!(p.key, LimitKey::Ip | LimitKey::Header(_)));
        if let Some(p) = early {
            if self.rate_limit(session, ctx, snap, p).await? {
                return Ok(true);
            }
        }
        let req = session.req_header();
        if let Some(cors) = &route.cors {
            // Preflights carry no credentials: answered before access control.
            if crate::cors::is_preflight(&req.method, &req.headers) {
                let resp = crate::cors::preflight_response(cors, &req.headers)?;
                ctx.local = Some(LocalReply::Preflight);
                session.write_response_header(Box::new(resp), true).await?;
                return Ok(true);
            }
        }
        if route.access.mode != crate::config::AuthMode::Public {
            match snap.auth.check(&req.headers, &route.access).await {
                Ok(id) => ctx.identity = id,
                Err(reason) => {
                    snap.auth.count(reason);
                    ctx.auth_reject = Some(reason);
                    let forbidden = reason == crate::auth::Reject::Forbidden;
                    ctx.local = Some(if forbidden {
                        LocalReply::Forbidden
                    } else {
                        LocalReply::Unauthorized
                    });
                    respond::auth_error(session, forbidden, ctx.request_id.as_ref()).await?;
                    return Ok(true);
                }
            }
        }
        if let Some(p) = limit.filter(|_| early.is_none()) {
            if self.rate_limit(session, ctx, snap, p).await? {
                return Ok(true);
            }
        }
        if let Some(max) = route.max_body {
            let declared = session
                .req_header()
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > max) {
                return Self::reply(session, ctx, LocalReply::BodyTooLarge).await;
            }
        }
        Ok(false)
    }

    /// 405 with the path's `Allow`.
    pub(super) async fn method_not_allowed(
        session: &mut Session,
        ctx: &mut RequestCtx,
        allow: Option<http::HeaderValue>,
    ) -> Result<bool> {
        ctx.local = Some(LocalReply::MethodNotAllowed);
        let extra = allow
            .map(|v| vec![(http::header::ALLOW.as_str(), v)])
            .unwrap_or_default();
        respond::json_error_with(
            session,
            405,
            "method_not_allowed",
            "this method is not allowed here",
            ctx.request_id.as_ref(),
            extra,
        )
        .await?;
        Ok(true)
    }

    /// A `deny` route: the same answer as no route (404) or a refusal.
    pub(super) async fn deny(
        session: &mut Session,
        ctx: &mut RequestCtx,
        status: u16,
    ) -> Result<bool> {
        let (code, msg) = match status {
            403 => ("forbidden", "you are not allowed to do this"),
            410 => ("gone", "this resource is gone"),
            _ => ("not_found", "no route matches this path"),
        };
        ctx.local = Some(LocalReply::RouteAction);
        respond::json_error(session, status, code, msg, ctx.request_id.as_ref()).await?;
        Ok(true)
    }

    pub(super) async fn reply(
        session: &mut Session,
        ctx: &mut RequestCtx,
        why: LocalReply,
    ) -> Result<bool> {
        let (status, code, msg) = match why {
            LocalReply::UnknownHost => (404, "unknown_host", "no site is served under this name"),
            LocalReply::NoRoute => (404, "not_found", "no route matches this path"),
            LocalReply::MethodNotAllowed => {
                (405, "method_not_allowed", "this method is not allowed here")
            }
            LocalReply::BadRequest => (400, "bad_request", "malformed request"),
            LocalReply::HeadersTooLarge => {
                (431, "headers_too_large", "request headers are too large")
            }
            LocalReply::BodyTooLarge => (413, "payload_too_large", "the request body is too large"),
            LocalReply::Banned => (403, "forbidden", "access from this address is blocked"),
            LocalReply::BadForwarding => (
                400,
                "bad_request",
                "the forwarding chain of this request cannot be read",
            ),
            LocalReply::Unauthorized
            | LocalReply::Forbidden
            | LocalReply::Preflight
            | LocalReply::Redirect
            | LocalReply::Acme
            | LocalReply::RateLimited
            | LocalReply::RouteAction
            | LocalReply::TooSlow
            | LocalReply::Dropped => (400, "bad_request", "malformed request"),
        };
        ctx.local = Some(why);
        respond::json_error(session, status, code, msg, ctx.request_id.as_ref()).await?;
        Ok(true)
    }
}

/// Requests that different HTTP parsers could frame differently (request smuggling):
/// both `Content-Length` and `Transfer-Encoding`, or several `Content-Length`s.
pub(super) fn is_ambiguous(req: &RequestHeader) -> bool {
    let h = &req.headers;
    let cl = h.get_all(http::header::CONTENT_LENGTH).iter().count();
    cl > 1 || (cl == 1 && h.contains_key(http::header::TRANSFER_ENCODING))
}

/// Total size of the request head as the client sent it (approximately: names,
/// values and separators).
pub(super) fn headers_size(req: &RequestHeader) -> u64 {
    let mut n = req.uri.path_and_query().map_or(0, |p| p.as_str().len()) + 16;
    for (k, v) in req.headers.iter() {
        n += k.as_str().len() + v.len() + 4;
    }
    n as u64
}
