//! The proxy phases' side of the response cache and of compression: enabling the
//! cache for a request, its key, the cacheability of a response, and on the way
//! out `X-Cache-Status` and the choice to compress.

use std::time::SystemTime;

use http::header;
use pingora::cache::{CacheKey, NoCacheReason, RespCacheable};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::RequestCtx;
use crate::cache;

/// Turns the cache on for this request when its route asks for it and nothing
/// forbids it (method, credentials).
pub fn enable(session: &mut Session, ctx: &mut RequestCtx) {
    let Some(route) = ctx.route.as_ref() else {
        return;
    };
    let Some(rc) = route.cache.as_ref() else {
        return;
    };
    if cache::bypass(session.req_header(), rc).is_some() {
        ctx.cache_status = Some("BYPASS");
        return;
    }
    let Some(snap) = ctx.snapshot.as_ref() else {
        return;
    };
    let c = cache::get().unwrap_or_else(|| cache::init(&snap.config.cache));
    session
        .cache
        .enable(c.store, Some(c.eviction), None, Some(c.lock), None);
    session
        .cache
        .set_max_file_size_bytes(c.config.max_object_size as usize);
}

/// Answers a fresh, invariant cached object straight from the store, before
/// pingora-cache's hit path (which costs about as much as proxying): same
/// headers as that path (`Age`, our response decorations, `X-Cache-Status:
/// HIT`), same eviction bookkeeping. Everything else (stale objects, variants,
/// conditional and range requests, compressed routes, misses) is left to
/// pingora-cache. Returns `Ok(true)` when the response was sent.
pub async fn fast_hit(session: &mut Session, ctx: &mut RequestCtx, https: bool) -> Result<bool> {
    let Some(route) = ctx.route.as_ref() else {
        return Ok(false);
    };
    let Some(rc) = route.cache.as_ref() else {
        return Ok(false);
    };
    let req = session.req_header();
    // Routes that vary by request headers are left to pingora, which compares
    // the variance on every lookup (entries stored before a reload added
    // `vary_headers` carry none).
    if route.compress.is_some()
        || !rc.vary_headers.is_empty()
        || !cache::fast_path_allowed(req)
        || cache::bypass(req, rc).is_some()
    {
        return Ok(false);
    }
    let Some(c) = cache::get() else {
        return Ok(false);
    };
    let k = key(session, ctx)?;
    let Some(hit) = c.store.fresh_hit(&k, SystemTime::now(), c.eviction) else {
        return Ok(false);
    };
    // Objects stored without a length are left to pingora (it writes them
    // chunked), and so are varying ones.
    let h = &hit.header.headers;
    if !h.contains_key(header::CONTENT_LENGTH) || h.contains_key(header::VARY) {
        return Ok(false);
    }
    let mut resp = hit.header;
    resp.set_version(http::Version::HTTP_11);
    resp.insert_header(header::AGE, hit.age)?;
    // As pingora's hit path: advertises `Accept-Ranges: bytes` (no Range here).
    pingora::proxy::range_header_filter(session.req_header(), &mut resp, None);
    ctx.cache_status = Some("HIT");
    super::decorate::response(session, &mut resp, ctx, https)?;
    let header_only = session.req_header().method == http::Method::HEAD;
    // A failed write is the client's doing (gone, stream reset), not a 5xx.
    session
        .write_response_header(Box::new(resp), header_only)
        .await
        .map_err(|e| e.into_down())?;
    if !header_only {
        session
            .write_response_body(Some(hit.body), true)
            .await
            .map_err(|e| e.into_down())?;
    }
    Ok(true)
}

pub fn key(session: &Session, ctx: &RequestCtx) -> Result<CacheKey> {
    let Some(route) = ctx.route.as_ref() else {
        return Error::e_explain(ErrorType::InternalError, "cache key without a route");
    };
    let Some(rc) = route.cache.as_ref() else {
        return Error::e_explain(ErrorType::InternalError, "cache key without cache settings");
    };
    let url = cache::url_key(&route.host, session.req_header(), rc);
    let identity = if rc.private {
        ctx.identity.as_deref().map(|i| i.subject.as_str())
    } else {
        None
    };
    Ok(cache::key(url, identity))
}

pub fn cacheable(resp: &ResponseHeader, ctx: &RequestCtx) -> RespCacheable {
    match ctx.route.as_ref().and_then(|r| r.cache.as_ref()) {
        Some(rc) => cache::cacheable(resp, rc, SystemTime::now()),
        None => RespCacheable::Uncacheable(NoCacheReason::NeverEnabled),
    }
}
