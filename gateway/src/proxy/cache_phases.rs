//! The proxy phases' side of the response cache and of compression: enabling the
//! cache for a request, its key, the cacheability of a response, and on the way
//! out `X-Cache-Status` and the choice to compress.

use std::time::SystemTime;

use pingora::cache::{CacheKey, NoCacheReason, RespCacheable};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::RequestCtx;
use crate::cache::{self, store::FreshHit};
use crate::fields::{self, Edits};

/// Turns the cache on for this request when its route asks for it and nothing
/// forbids it (method, credentials).
pub fn enable(session: &mut Session, ctx: &mut RequestCtx) {
    let Some(route) = ctx.route() else {
        return;
    };
    let Some(rc) = route.cache.as_ref() else {
        return;
    };
    let req = session.req_header();
    if cache::bypass(&req.method, &req.headers, rc).is_some() {
        ctx.cache_status = Some("BYPASS");
        return;
    }
    let c = cache::get().unwrap_or_else(|| cache::init(&ctx.snapshot.config.cache));
    session
        .cache
        .enable(c.store, Some(c.eviction), None, Some(c.lock), None);
    session
        .cache
        .set_max_file_size_bytes(c.config.max_object_size as usize);
}

/// Writes a fresh hit (`pipeline::cached::fresh_hit`) straight from the
/// store, before pingora-cache's hit path (which costs about as much as
/// proxying): the stored head with the hit's and the pipeline's edits
/// (`Age`, `Accept-Ranges`, our decorations, `X-Cache-Status: HIT`), the
/// stored body.
pub async fn write_hit(
    session: &mut Session,
    ctx: &mut RequestCtx,
    hit: FreshHit,
    https: bool,
) -> Result<()> {
    let mut resp = hit.header().clone();
    resp.set_version(http::Version::HTTP_11);
    let mut edits = Edits::new();
    crate::pipeline::cached::hit_edits(&hit, &mut edits);
    crate::head::edit_response(&mut resp, edits.len(), |h| fields::apply(h, &mut edits))?;
    super::decorate::response(session, &mut resp, ctx, https)?;
    let header_only = session.req_header().method == http::Method::HEAD;
    // A failed write is the client's doing (gone, stream reset), not a 5xx.
    session
        .write_response_header(Box::new(resp), header_only)
        .await
        .map_err(|e| e.into_down())?;
    if !header_only {
        session
            .write_response_body(Some(hit.body().clone()), true)
            .await
            .map_err(|e| e.into_down())?;
    }
    Ok(())
}

pub fn key(session: &Session, ctx: &RequestCtx) -> Result<CacheKey> {
    let Some(route) = ctx.route() else {
        return Error::e_explain(ErrorType::InternalError, "cache key without a route");
    };
    let Some(rc) = route.cache.as_ref() else {
        return Error::e_explain(ErrorType::InternalError, "cache key without cache settings");
    };
    let req = session.req_header();
    let (path, query) = (req.uri.path(), req.uri.query());
    let identity = ctx.identity.as_deref().map(|i| i.subject.as_str());
    Ok(cache::request_key(&route.host, path, query, rc, identity)
        // An anonymous caller of a private route: the object every anonymous
        // caller shares.
        .unwrap_or_else(|| cache::key(cache::url_key(&route.host, path, query, rc), None)))
}

pub fn cacheable(resp: &ResponseHeader, ctx: &RequestCtx) -> RespCacheable {
    match ctx.route().and_then(|r| r.cache.as_ref()) {
        Some(rc) => cache::cacheable(resp, rc, SystemTime::now()),
        None => RespCacheable::Uncacheable(NoCacheReason::NeverEnabled),
    }
}
