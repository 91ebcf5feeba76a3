//! The proxy phases' side of the response cache and of compression: enabling the
//! cache for a request, its key, the cacheability of a response, and on the way
//! out `X-Cache-Status` and the choice to compress.

use std::time::SystemTime;

use http::{header, HeaderValue};
use pingora::cache::{CacheKey, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::compression::ResponseCompression;
use pingora::prelude::*;
use pingora::protocols::http::compression::Algorithm;
use pingora::proxy::Session;

use super::RequestCtx;
use crate::cache;

pub const X_CACHE_STATUS: &str = "x-cache-status";

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

/// `X-Cache-Status` on cached routes, and compression when the route wants it.
pub fn response(
    session: &mut Session,
    resp: &mut ResponseHeader,
    ctx: &mut RequestCtx,
) -> Result<()> {
    let (cached, compress) = match ctx.route.as_deref() {
        Some(r) if r.cache.is_some() || r.compress.is_some() => {
            (r.cache.is_some(), r.compress.clone())
        }
        _ => return Ok(()),
    };
    if cached {
        let status = if session.cache.enabled() {
            cache::status(&session.cache.phase())
        } else {
            ctx.cache_status.unwrap_or("BYPASS")
        };
        ctx.cache_status = Some(status);
        resp.insert_header(X_CACHE_STATUS, status)?;
    }
    if let Some(comp) = &compress {
        let length = resp
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let already = resp.headers.contains_key(header::CONTENT_ENCODING);
        let ct = resp.headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes());
        let accepts = |enc: &str| accepts(session.req_header(), enc);
        // Only responses that carry a body.
        let bodyless = session.req_header().method == http::Method::HEAD
            || resp.status.is_informational()
            || matches!(resp.status.as_u16(), 204 | 304);
        if bodyless {
            return Ok(());
        }
        if !already && comp.wants(ct, length) && comp.br && accepts("br") {
            // Streamed: the length is unknown and byte ranges no longer apply.
            resp.remove_header(&header::CONTENT_LENGTH);
            resp.remove_header(&header::ACCEPT_RANGES);
            resp.insert_header(header::CONTENT_ENCODING, "br")?;
            resp.insert_header(header::TRANSFER_ENCODING, "chunked")?;
            add_vary(resp)?;
            if let Some(etag) = resp.headers.get(header::ETAG).cloned() {
                // A different representation: a strong validator becomes weak.
                if !etag.as_bytes().starts_with(b"W/") {
                    let mut weak = b"W/".to_vec();
                    weak.extend_from_slice(etag.as_bytes());
                    resp.insert_header(header::ETAG, weak)?;
                }
            }
            ctx.brotli = Some(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                comp.level.min(11),
                22,
            )));
        } else if !already && comp.wants(ct, length) {
            // The module read Accept-Encoding while it was off: hand it over now.
            let mut req = RequestHeader::build("GET", b"/", None)?;
            for v in session
                .req_header()
                .headers
                .get_all(header::ACCEPT_ENCODING)
            {
                req.append_header(header::ACCEPT_ENCODING, HeaderValue::clone(v))?;
            }
            if let Some(m) = session
                .downstream_modules_ctx
                .get_mut::<ResponseCompression>()
            {
                let level = |on: bool| if on { comp.level } else { 0 };
                m.adjust_algorithm_level(Algorithm::Gzip, level(comp.gzip));
                m.adjust_algorithm_level(Algorithm::Zstd, level(comp.zstd));
                m.request_filter(&req);
            }
        }
    }
    Ok(())
}

fn add_vary(resp: &mut ResponseHeader) -> Result<()> {
    let has = resp.headers.get_all(header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("accept-encoding"))
        })
    });
    if !has {
        resp.append_header(header::VARY, "Accept-Encoding")?;
    }
    Ok(())
}

/// Whether `Accept-Encoding` accepts `enc` (listed without `q=0`).
fn accepts(req: &RequestHeader, enc: &str) -> bool {
    req.headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            let q_zero = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            name.eq_ignore_ascii_case(enc) && !q_zero
        })
}

/// Streams the body through the brotli encoder chosen in [`response`].
pub fn brotli_body(body: &mut Option<bytes::Bytes>, end: bool, ctx: &mut RequestCtx) -> Result<()> {
    use std::io::Write;
    let Some(enc) = ctx.brotli.as_mut() else {
        return Ok(());
    };
    if let Some(b) = body.as_ref() {
        enc.write_all(b)
            .or_err(ErrorType::InternalError, "brotli compression")?;
    }
    let out = if end {
        let Some(enc) = ctx.brotli.take() else {
            return Ok(());
        };
        // into_inner() writes the final, last-block marker.
        enc.into_inner()
    } else {
        enc.flush()
            .or_err(ErrorType::InternalError, "brotli compression")?;
        std::mem::take(enc.get_mut())
    };
    *body = if out.is_empty() && !end {
        None
    } else {
        Some(bytes::Bytes::from(out))
    };
    Ok(())
}
