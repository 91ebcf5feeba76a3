//! Response shaping on pingora's transport: `X-Cache-Status` on cached
//! routes and the choice to compress (gzip/zstd by pingora's module, brotli
//! here).

use http::{header, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::compression::ResponseCompression;
use pingora::prelude::*;
use pingora::protocols::http::compression::Algorithm;
use pingora::proxy::Session;

use crate::cache;
use crate::pipeline::RequestCtx;

/// `X-Cache-Status` on cached routes, and compression when the route wants it.
pub fn response(
    session: &mut Session,
    resp: &mut ResponseHeader,
    ctx: &mut RequestCtx,
) -> Result<()> {
    let (cached, compress) = match ctx.route().map(|r| &**r) {
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
        resp.insert_header(crate::pipeline::cached::X_CACHE_STATUS.clone(), status)?;
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
