//! Headers the gateway sets on the way to the upstream and back.

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Uri};
use pingora::http::RequestHeader;
use pingora::prelude::*;

use crate::head;
use crate::pipeline::edits::{ip_value, is_forged, real_ip};
use crate::pipeline::RequestCtx;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

static HTTP: HeaderValue = HeaderValue::from_static("http");
static HTTPS: HeaderValue = HeaderValue::from_static("https");

/// How many headers [`forwarded_headers`] may add (for reserving the map once).
pub const FORWARDED_COUNT: usize = 5;

/// `X-Forwarded-*`, `X-Real-IP` and `X-Request-Id` for the upstream request.
/// `authority` is the request URI's, used when there is no `Host` header (h2).
pub fn forwarded_headers(
    h: &mut HeaderMap,
    authority: Option<&str>,
    ctx: &RequestCtx,
    https: bool,
) -> Result<()> {
    let peer_value = ctx.peer_ip.and_then(ip_value);
    if let Some(peer_value) = &peer_value {
        // A trusted proxy's chain is extended; anyone else's is replaced, so the
        // upstream never sees a client-forged hop.
        let prior = h.get_all(&X_FORWARDED_FOR);
        if ctx.peer_trusted && prior.iter().next().is_some() {
            let mut chain = Vec::with_capacity(64);
            for p in prior {
                chain.extend_from_slice(p.as_bytes());
                chain.extend_from_slice(b", ");
            }
            chain.extend_from_slice(peer_value.as_bytes());
            let v = HeaderValue::from_bytes(&chain)
                .or_err(ErrorType::InternalError, "X-Forwarded-For chain")?;
            head::set(h, &X_FORWARDED_FOR, v)?;
        } else {
            head::set(h, &X_FORWARDED_FOR, peer_value.clone())?;
        }
    }
    // The client IP as the gateway resolved it (trusted proxies applied); any
    // client-sent value is replaced.
    match real_ip(ctx, peer_value.as_ref()) {
        Some(v) => head::set(h, &X_REAL_IP, v)?,
        None => {
            h.remove(&X_REAL_IP);
        }
    }
    if !(ctx.peer_trusted && h.contains_key(&X_FORWARDED_PROTO)) {
        let proto = if https { &HTTPS } else { &HTTP };
        head::set(h, &X_FORWARDED_PROTO, proto.clone())?;
    }
    if !(ctx.peer_trusted && h.contains_key(&X_FORWARDED_HOST)) {
        let host = h
            .get(http::header::HOST)
            .cloned()
            .or_else(|| authority.and_then(|a| HeaderValue::from_str(a).ok()));
        if let Some(v) = host {
            head::set(h, &X_FORWARDED_HOST, v)?;
        }
    }
    if let Some(id) = &ctx.request_id {
        head::set(h, &X_REQUEST_ID, id.clone())?;
    }
    Ok(())
}

/// Replaces the path of the request URI, keeping the query string.
pub fn set_path(req: &mut RequestHeader, path: &str) -> Result<()> {
    let pq = match req.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let uri: Uri = pq.parse().or_err(
        ErrorType::InternalError,
        "rewritten path is not a valid URI",
    )?;
    req.set_uri(uri);
    Ok(())
}

/// Removes every forged header ([`is_forged`]): upstreams can trust the
/// identity headers the pipeline sets only because of this.
pub fn strip_forged(h: &mut HeaderMap, peer_trusted: bool) {
    // Collected first: the map cannot be edited while iterated. Almost always
    // empty, and an empty Vec does not allocate.
    let forged: Vec<HeaderName> = h
        .keys()
        .filter(|k| is_forged(k.as_str(), peer_trusted))
        .cloned()
        .collect();
    for k in &forged {
        h.remove(k);
    }
}
