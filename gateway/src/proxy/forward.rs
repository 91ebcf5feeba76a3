//! Headers the gateway sets on the way to the upstream and back.

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Uri};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

use super::ctx::RequestCtx;
use crate::config::HeaderOps;
use crate::head;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static CF_CONNECTING_IP: HeaderName = HeaderName::from_static("cf-connecting-ip");
pub static TRUE_CLIENT_IP: HeaderName = HeaderName::from_static("true-client-ip");

/// An IP address as a header value. IPv4 (the common case) is written digit by
/// digit: `Display` through `fmt` cost more than the rest of this module.
pub fn ip_value(ip: std::net::IpAddr) -> Option<HeaderValue> {
    let mut buf = [0u8; 48];
    let n = match ip {
        std::net::IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if o >= 100 {
                    buf[n] = b'0' + o / 100;
                    n += 1;
                }
                if o >= 10 {
                    buf[n] = b'0' + o / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + o % 10;
                n += 1;
            }
            n
        }
        std::net::IpAddr::V6(_) => {
            use std::io::Write;
            let mut cur = std::io::Cursor::new(&mut buf[..]);
            write!(cur, "{ip}").ok()?;
            cur.position() as usize
        }
    };
    HeaderValue::from_bytes(&buf[..n]).ok()
}

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
    let real = match (ctx.client_ip, ctx.peer_ip) {
        (Some(c), Some(p)) if c == p => peer_value,
        (Some(c), _) => ip_value(c),
        (None, _) => None,
    };
    match real {
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

pub fn apply_request_ops(h: &mut HeaderMap, ops: &HeaderOps) -> Result<()> {
    for n in &ops.remove {
        h.remove(n);
    }
    for (n, v) in &ops.set {
        head::set(h, n, v.clone())?;
    }
    for (n, v) in &ops.add {
        head::add(h, n, v.clone())?;
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

/// Client-IP and scheme headers other proxies set; from a peer that is not a
/// trusted proxy they are forged, and an upstream that reads them would be lied
/// to. (`X-Forwarded-For/-Proto/-Host`, `X-Real-IP` are replaced, not dropped.)
const CLIENT_FORGED: [&str; 6] = [
    "forwarded",
    "cf-connecting-ip",
    "true-client-ip",
    "x-client-ip",
    "x-forwarded-port",
    "x-forwarded-prefix",
];

/// Whether a client-sent header never goes upstream: `X-User-*` (the gateway's
/// identity headers), names with `_` (CGI-style servers read `X_User_Id` as
/// `X-User-Id`; nginx drops them by default too), and, from an untrusted peer,
/// [`CLIENT_FORGED`]. `name` in any case; shared with the fast path.
pub fn is_forged(name: &str, peer_trusted: bool) -> bool {
    let b = name.as_bytes();
    (b.len() >= 7 && b[..7].eq_ignore_ascii_case(b"x-user-"))
        || b.contains(&b'_')
        || (!peer_trusted && CLIENT_FORGED.iter().any(|f| f.eq_ignore_ascii_case(name)))
}

/// Removes every forged header ([`is_forged`]), then sets the verified
/// identity's. Upstreams can trust these headers only because of this.
pub fn identity_headers(
    h: &mut HeaderMap,
    id: Option<&crate::auth::Identity>,
    peer_trusted: bool,
) -> Result<()> {
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
    if let Some(id) = id {
        for (k, v) in &id.headers {
            head::set(h, k, v.clone())?;
        }
    }
    Ok(())
}
