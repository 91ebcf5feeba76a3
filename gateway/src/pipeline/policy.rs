//! The second stage: the matched route's policies in request order (rate
//! limits keyed by IP or header, CORS preflight, access control, the other
//! rate limits, body limit), then the route's own answer (`respond`,
//! `redirect`; a `static` route's files are [`super::statics::serve`]'s).

use std::sync::Arc;

use super::{Env, LocalReply, Reply, Request, RequestCtx};
use crate::auth::IdentityKind;
use crate::client_ip;
use crate::config::{AuthMode, LimitKey, RatePolicy};
use crate::fields::Fields;
use crate::limits::KeyValue;
use crate::routing::{Action, Route};

/// `Some`: answer it. `None`: the route's action goes on: forward the
/// request to its upstream, or serve its files ([`super::statics::serve`]).
pub async fn policies<F: Fields>(
    env: &Env<'_>,
    req: &Request<'_, F>,
    ctx: &mut RequestCtx,
    route: &Route,
) -> Option<Reply> {
    // Limits keyed by IP or header run before access control, so a flood of
    // bad tokens is throttled before any signature is checked.
    let limit = route.rate_limit.as_ref();
    let early = limit.filter(|p| matches!(p.key, LimitKey::Ip | LimitKey::Header(_)));
    if let Some(p) = early {
        if let Some(r) = rate_limit(env, req.fields, ctx, p).await {
            return Some(r);
        }
    }
    if let Some(cors) = &route.cors {
        // Preflights carry no credentials: answered before access control.
        if crate::cors::is_preflight(req.method, req.fields) {
            return Some(Reply::preflight(crate::cors::preflight_fields(
                cors, req.fields,
            )));
        }
    }
    if route.access.mode != AuthMode::Public {
        let auth = &env.snap.auth;
        // A token seen before is decided without a future; only a new one
        // (a signature to check, maybe keys to fetch) waits, in its own box so
        // every request's state stays small.
        let checked = match auth.check_cached(req.fields, &route.access) {
            Some(decided) => decided,
            None => Box::pin(auth.check(req.fields, &route.access)).await,
        };
        match checked {
            Ok(id) => ctx.identity = id,
            Err(reason) => {
                env.snap.auth.count(reason);
                ctx.auth_reject = Some(reason);
                let forbidden = reason == crate::auth::Reject::Forbidden;
                return Some(Reply::auth(forbidden, ctx.request_id.as_ref()));
            }
        }
    }
    if let Some(p) = limit.filter(|_| early.is_none()) {
        if let Some(r) = rate_limit(env, req.fields, ctx, p).await {
            return Some(r);
        }
    }
    if let Some(max) = route.max_body {
        let declared = req
            .fields
            .get("content-length")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return Some(Reply::error(
                LocalReply::BodyTooLarge,
                ctx.request_id.as_ref(),
            ));
        }
    }
    match &route.action {
        Action::Upstream(_) | Action::Static(_) => None,
        Action::Respond(f) => Some(Reply::fixed(f, ctx.request_id.as_ref())),
        Action::Redirect(rd) => {
            let location = crate::routing::redirect_location(rd, req.target);
            Some(Reply::redirect(
                LocalReply::RouteAction,
                rd.status,
                &location,
                ctx.request_id.as_ref(),
            ))
        }
        Action::Deny { status } => Some(Reply::deny(*status, ctx.request_id.as_ref())),
    }
}

/// Applies a rate limit; `Some` (a 429) when the request is refused.
async fn rate_limit(
    env: &Env<'_>,
    fields: &impl Fields,
    ctx: &mut RequestCtx,
    policy: &Arc<RatePolicy>,
) -> Option<Reply> {
    let snap = env.snap;
    // A load generator the operator named: not limited, still banned if it
    // misbehaves (bans are checked before any policy).
    if let Some(ip) = ctx.client.ip {
        if snap
            .config
            .rate_limits
            .exempt
            .iter()
            .any(|n| n.contains(&ip))
        {
            return None;
        }
    }
    // A trusted proxy's own requests (and unknown clients) are never counted
    // by address: everyone behind the proxy would share its budget.
    let ip_key = ctx
        .client
        .chargeable()
        .map(|ip| KeyValue::Ip(client_ip::group(ip, snap.config.limits.ipv6_prefix).network()));
    let id = ctx.identity.clone();
    let key = match &policy.key {
        LimitKey::Ip => ip_key,
        LimitKey::User => match id.as_deref() {
            Some(i) if i.kind == IdentityKind::Jwt => Some(KeyValue::Text(i.subject.as_bytes())),
            _ => ip_key,
        },
        LimitKey::ApiKey => match id.as_deref() {
            Some(i) if i.kind == IdentityKind::ApiKey => Some(KeyValue::Text(i.subject.as_bytes())),
            _ => ip_key,
        },
        LimitKey::Header(h) => match fields.get(h.as_str()) {
            Some(v) => Some(KeyValue::Text(v)),
            None => ip_key,
        },
    };
    let key = key?;
    let outcome = env
        .shield
        .limiter
        .check(policy, key, snap.redis.as_deref())
        .await;
    ctx.rate = Some((policy.clone(), outcome));
    if outcome.allowed {
        return None;
    }
    crate::metrics::metrics()
        .rate_limited
        .with_label_values(&[policy.name.as_ref()])
        .inc();
    Some(Reply::rate_limited(
        policy,
        &outcome,
        ctx.request_id.as_ref(),
    ))
}
