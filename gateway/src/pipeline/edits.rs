//! The header edits the pipeline decides for a forwarded request: what the
//! upstream request gets besides the forwarding fields (identity, the pool's
//! `Host`, the route's `request_headers`), what the client's response gets
//! (request id, security headers, `RateLimit` fields, CORS, the route's
//! `response_headers`), and which client fields never go upstream. Each
//! transport applies them to its own head (`fields::apply` on a map, the
//! fast path on bytes).

use http::HeaderValue;

use super::RequestCtx;
use crate::fields::{Edit, Edits};
use crate::routing::Route;

/// Edits of the upstream request, after the forwarding fields: the verified
/// identity's fields, the pool's `Host`, then the route's `request_headers`.
pub fn request(ctx: &RequestCtx, route: &Route, out: &mut Edits) {
    if let Some(id) = &ctx.identity {
        for (k, v) in &id.headers {
            out.push(Edit::Set(k.clone(), v.clone()));
        }
    }
    if let Some(v) = route.pool().and_then(|p| p.host_header.as_ref()) {
        out.push(Edit::Set(http::header::HOST, v.clone()));
    }
    let ops = &route.request_headers;
    out.extend(ops.remove.iter().map(|n| Edit::Remove(n.clone())));
    out.extend(ops.set.iter().map(|(n, v)| Edit::Set(n.clone(), v.clone())));
    out.extend(
        ops.add
            .iter()
            .map(|(n, v)| Edit::Append(n.clone(), v.clone())),
    );
}

/// Edits of the response to the client. `origin`: the request's `Origin`.
pub fn response(ctx: &RequestCtx, https: bool, origin: Option<&[u8]>, out: &mut Edits) {
    static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
    if let Some(id) = &ctx.request_id {
        out.push(Edit::Set(X_REQUEST_ID.clone(), id.clone()));
    }
    if let Some(sec) = &ctx.security {
        crate::security_headers::edits(sec, https, out);
    }
    if let Some((policy, outcome)) = &ctx.rate {
        crate::limits::headers::edits(policy, outcome, out);
    }
    if let Some(route) = &ctx.route {
        if let Some(cors) = &route.cors {
            crate::cors::response_edits(cors, origin, out);
        }
        let ops = &route.response_headers;
        out.extend(ops.remove.iter().map(|n| Edit::Remove(n.clone())));
        out.extend(ops.set.iter().map(|(n, v)| Edit::Set(n.clone(), v.clone())));
        out.extend(
            ops.add
                .iter()
                .map(|(n, v)| Edit::Append(n.clone(), v.clone())),
        );
    }
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
/// [`CLIENT_FORGED`]. `name` in any case.
pub fn is_forged(name: &str, peer_trusted: bool) -> bool {
    let b = name.as_bytes();
    (b.len() >= 7 && b[..7].eq_ignore_ascii_case(b"x-user-"))
        || b.contains(&b'_')
        || (!peer_trusted && CLIENT_FORGED.iter().any(|f| f.eq_ignore_ascii_case(name)))
}

/// An IP address as a header value. IPv4 (the common case) is written digit by
/// digit: `Display` through `fmt` cost more than the rest of the forwarding
/// fields.
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

/// The client address the upstream is told (`X-Real-IP`): the resolved client,
/// reusing the peer's value when they are the same.
pub fn real_ip(ctx: &RequestCtx, peer_value: Option<&HeaderValue>) -> Option<HeaderValue> {
    match (ctx.client_ip, ctx.peer_ip) {
        (Some(c), Some(p)) if c == p => peer_value.cloned(),
        (Some(c), _) => ip_value(c),
        (None, _) => None,
    }
}
