//! Headers the gateway sets on the way to the upstream and back.

use http::header::HeaderName;
use http::{HeaderValue, Uri};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

use super::ctx::RequestCtx;
use crate::config::HeaderOps;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// An IP address as a header value, formatted on the stack (one allocation: the
/// value's own buffer).
fn ip_value(ip: std::net::IpAddr) -> Option<HeaderValue> {
    use std::io::Write;
    let mut buf = [0u8; 48];
    let mut cur = std::io::Cursor::new(&mut buf[..]);
    write!(cur, "{ip}").ok()?;
    let n = cur.position() as usize;
    HeaderValue::from_bytes(&buf[..n]).ok()
}

static HTTP: HeaderValue = HeaderValue::from_static("http");
static HTTPS: HeaderValue = HeaderValue::from_static("https");

/// `X-Forwarded-*`, `X-Real-IP` and `X-Request-Id` for the upstream request.
pub fn forwarded_headers(req: &mut RequestHeader, ctx: &RequestCtx, https: bool) -> Result<()> {
    let peer_value = ctx.peer_ip.and_then(ip_value);
    if let Some(peer_value) = &peer_value {
        // A trusted proxy's chain is extended; anyone else's is replaced, so the
        // upstream never sees a client-forged hop.
        let prior = req.headers.get_all(&X_FORWARDED_FOR);
        if ctx.peer_trusted && prior.iter().next().is_some() {
            let mut chain = Vec::with_capacity(64);
            for p in prior {
                chain.extend_from_slice(p.as_bytes());
                chain.extend_from_slice(b", ");
            }
            chain.extend_from_slice(peer_value.as_bytes());
            let v = HeaderValue::from_bytes(&chain)
                .or_err(ErrorType::InternalError, "X-Forwarded-For chain")?;
            req.insert_header(X_FORWARDED_FOR.clone(), v)?;
        } else {
            req.insert_header(X_FORWARDED_FOR.clone(), peer_value.clone())?;
        }
    }
    // The client IP as the gateway resolved it (trusted proxies applied); any
    // client-sent value is replaced.
    let real = match (ctx.client_ip, ctx.peer_ip) {
        (Some(c), Some(p)) if c == p => peer_value.clone(),
        (Some(c), _) => ip_value(c),
        (None, _) => None,
    };
    match real {
        Some(v) => {
            req.insert_header(X_REAL_IP.clone(), v)?;
        }
        None => {
            req.remove_header(&X_REAL_IP);
        }
    }
    if !(ctx.peer_trusted && req.headers.contains_key(&X_FORWARDED_PROTO)) {
        let proto = if https { &HTTPS } else { &HTTP };
        req.insert_header(X_FORWARDED_PROTO.clone(), proto.clone())?;
    }
    if !(ctx.peer_trusted && req.headers.contains_key(&X_FORWARDED_HOST)) {
        let host = req.headers.get(http::header::HOST).cloned().or_else(|| {
            req.uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        if let Some(h) = host {
            req.insert_header(X_FORWARDED_HOST.clone(), h)?;
        }
    }
    if let Some(id) = &ctx.request_id {
        req.insert_header(X_REQUEST_ID.clone(), id.clone())?;
    }
    Ok(())
}

pub fn apply_request_ops(req: &mut RequestHeader, ops: &HeaderOps) -> Result<()> {
    for n in &ops.remove {
        req.remove_header(n);
    }
    for (n, v) in &ops.set {
        req.insert_header(n.clone(), v.clone())?;
    }
    for (n, v) in &ops.add {
        req.append_header(n.clone(), v.clone())?;
    }
    Ok(())
}

pub fn apply_response_ops(resp: &mut ResponseHeader, ops: &HeaderOps) -> Result<()> {
    for n in &ops.remove {
        resp.remove_header(n);
    }
    for (n, v) in &ops.set {
        resp.insert_header(n.clone(), v.clone())?;
    }
    for (n, v) in &ops.add {
        resp.append_header(n.clone(), v.clone())?;
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

/// Removes every client-sent `X-User-*` header, then sets the verified identity's.
/// Upstreams can trust these headers only because of this.
pub fn identity_headers(req: &mut RequestHeader, id: Option<&crate::auth::Identity>) -> Result<()> {
    let forged: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-user-"))
        .cloned()
        .collect();
    for k in &forged {
        req.remove_header(k);
    }
    if let Some(id) = id {
        for (k, v) in &id.headers {
            req.insert_header(k.clone(), v.clone())?;
        }
    }
    Ok(())
}
