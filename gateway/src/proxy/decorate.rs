//! What the gateway writes into the heads going each way: the upstream
//! request's forwarding and identity headers and header rules, and the
//! response's request id, security, rate-limit, cache, CORS and header rules.
//!
//! Plain functions called from the async phases: an async body would keep all
//! of these locals in the phase's boxed future.

use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;

use super::{forward, shaping};
use crate::fields::{self, Edits};
use crate::head;
use crate::pipeline::RequestCtx;

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
    upstream_head(upstream_request, ctx, https)
}

/// The upstream request's head from the client's: the routed or rewritten
/// path in origin form, then the pipeline's forwarding and request edits.
pub fn upstream_head(
    upstream_request: &mut RequestHeader,
    ctx: &RequestCtx,
    https: bool,
) -> Result<()> {
    // Only an h2 request has no Host; its authority then names the site.
    let authority = if upstream_request.headers.contains_key(http::header::HOST) {
        None
    } else {
        upstream_request
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
    };
    let routed = ctx.normalized_path();
    let path = routed.unwrap_or(upstream_request.uri.path());
    match ctx.route().and_then(|r| r.rewritten_path(path)) {
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
    let mut edits = Edits::new();
    let client = &upstream_request.headers;
    crate::pipeline::edits::forwarding(ctx, https, client, authority.as_deref(), &mut edits);
    for (n, v) in crate::pipeline::edits::identity(ctx) {
        edits.push(fields::Edit::Append(n.clone(), v.clone()));
    }
    if let Some(route) = ctx.route() {
        crate::pipeline::edits::request(route, &mut edits);
    }
    head::edit_request(upstream_request, edits.len(), |h| {
        forward::strip_forged(h, ctx.client.peer_trusted);
        fields::apply(h, &mut edits)
    })
}

pub fn response(
    session: &mut Session,
    resp: &mut ResponseHeader,
    ctx: &mut RequestCtx,
    https: bool,
) -> Result<()> {
    let mut edits = Edits::new();
    crate::pipeline::edits::response(ctx, https, &session.req_header().headers, &mut edits);
    // One pass over the map: after it the head has no case map, so every
    // edit is cheap.
    head::edit_response(resp, edits.len(), |h| fields::apply(h, &mut edits))?;
    shaping::response(session, resp, ctx)
}
