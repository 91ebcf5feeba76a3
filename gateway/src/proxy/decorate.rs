//! What the gateway writes into the heads going each way: the upstream
//! request's forwarding and identity headers and header rules, and the
//! response's request id, security, rate-limit, cache, CORS and header rules.
//!
//! Plain functions called from the async phases: an async body would keep all
//! of these locals in the phase's boxed future.

use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;

use super::{cache_phases, forward, RequestCtx};
use crate::head;

pub fn upstream_request(
    session: &mut Session,
    upstream_request: &mut RequestHeader,
    ctx: &mut RequestCtx,
    https: bool,
) -> Result<()> {
    if session.cache.enabled() {
        // Fetch the whole object as GET (HEAD is answered from it), without the
        // client's conditions, with our validators when revalidating.
        let meta = session.cache.maybe_cache_meta();
        pingora::cache::filters::upstream::request_filter(upstream_request, meta);
    }
    // Only an h2 request has no Host; its authority then names the site.
    let authority = if upstream_request.headers.contains_key(http::header::HOST) {
        None
    } else {
        upstream_request
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
    };
    let routed = ctx.normalized_path.as_deref();
    let path = routed.unwrap_or(upstream_request.uri.path());
    match ctx.route.as_ref().and_then(|r| r.rewritten_path(path)) {
        Some(p) => forward::set_path(upstream_request, &p)?,
        None => {
            if let Some(p) = routed {
                let p = p.to_owned();
                forward::set_path(upstream_request, &p)?;
            } else if !upstream_request.raw_path().starts_with(b"/") {
                // An absolute-form target (`GET http://other.host/ HTTP/1.1`)
                // goes upstream in origin form: a server hosting several sites
                // would otherwise pick the one the client named.
                let p = upstream_request.uri.path().to_owned();
                forward::set_path(upstream_request, &p)?;
            }
        }
    }
    let route = ctx.route.as_deref();
    let extra = forward::FORWARDED_COUNT
        + ctx.identity.as_ref().map_or(0, |i| i.headers.len())
        + route.map_or(0, |r| {
            r.request_headers.set.len() + r.request_headers.add.len() + 1
        });
    head::edit_request(upstream_request, extra, |h| {
        forward::forwarded_headers(h, authority.as_deref(), ctx, https)?;
        forward::identity_headers(h, ctx.identity.as_deref(), ctx.peer_trusted)?;
        if let Some(route) = route {
            if let Some(v) = route.pool().and_then(|p| p.host_header.as_ref()) {
                head::set(h, &http::header::HOST, v.clone())?;
            }
            if !route.request_headers.is_empty() {
                forward::apply_request_ops(h, &route.request_headers)?;
            }
        }
        Ok(())
    })
}

pub fn response(
    session: &mut Session,
    resp: &mut ResponseHeader,
    ctx: &mut RequestCtx,
    https: bool,
) -> Result<()> {
    // One pass over the map for what nearly every response gets; after it the
    // head has no case map, so the rarer inserts below are cheap too.
    let extra = 1
        + ctx.security.as_ref().map_or(0, |s| s.always.len() + 1)
        + if ctx.rate.is_some() { 2 } else { 0 };
    head::edit_response(resp, extra, |h| {
        if let Some(id) = &ctx.request_id {
            head::set(h, &forward::X_REQUEST_ID, id.clone())?;
        }
        if let Some(sec) = &ctx.security {
            crate::security_headers::apply(sec, https, h)?;
        }
        if let Some((policy, outcome)) = &ctx.rate {
            crate::limits::headers::apply(h, policy, outcome)?;
        }
        Ok(())
    })?;
    cache_phases::response(session, resp, ctx)?;
    if let Some(route) = &ctx.route {
        if let Some(cors) = &route.cors {
            let origin = session.req_header().headers.get(http::header::ORIGIN);
            crate::cors::decorate(cors, origin, resp)?;
        }
        if !route.response_headers.is_empty() {
            forward::apply_response_ops(resp, &route.response_headers)?;
        }
    }
    Ok(())
}
