//! The header edits the pipeline decides for a forwarded request: what the
//! upstream request gets besides the forwarding fields (identity, the pool's
//! `Host`, the route's `request_headers`), what the client's response gets
//! (request id, security headers, `RateLimit` fields, CORS, the route's
//! `response_headers`), and which client fields never go upstream. Each
//! transport applies them to its own head (`fields::apply` on a map, the
//! fast path on bytes).

use http::{HeaderName, HeaderValue};

use super::RequestCtx;
use crate::fields::{Edit, Edits, Fields};
use crate::routing::Route;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static HTTP: HeaderValue = HeaderValue::from_static("http");
static HTTPS: HeaderValue = HeaderValue::from_static("https");

/// The forwarding fields of the upstream request, from the client's
/// `fields`: `X-Forwarded-For` (a trusted proxy's chain extended with the
/// peer, anyone else's replaced, so the upstream never sees a client-forged
/// hop), `X-Real-IP` (the client as resolved), `X-Forwarded-Proto` and
/// `-Host` (a trusted proxy's kept), `X-Request-Id`. `authority`: the
/// request URI's, for a request without `Host` (h2). Every field set here
/// is one [`not_forwarded`] takes out of the client's head, so a transport
/// that writes the kept fields as they are can write these after them.
pub fn forwarding<F: Fields>(
    ctx: &RequestCtx,
    https: bool,
    fields: &F,
    authority: Option<&str>,
    out: &mut Edits,
) {
    let trusted = ctx.client.peer_trusted;
    let peer_value = ctx.client.peer.and_then(ip_value);
    if let Some(peer_value) = &peer_value {
        // A chain is kept only from a trusted proxy: not even looked up otherwise.
        let mut prior = trusted
            .then(|| fields.all("x-forwarded-for"))
            .into_iter()
            .flatten()
            .peekable();
        let chain = if prior.peek().is_some() {
            let mut chain = Vec::with_capacity(64);
            for p in prior {
                chain.extend_from_slice(p);
                chain.extend_from_slice(b", ");
            }
            chain.extend_from_slice(peer_value.as_bytes());
            // A value the client sent is a valid field value, and so is the chain.
            HeaderValue::from_bytes(&chain).ok()
        } else {
            None
        };
        let v = chain.unwrap_or_else(|| peer_value.clone());
        out.push(Edit::Set(X_FORWARDED_FOR.clone(), v));
    }
    match real_ip(ctx, peer_value.as_ref()) {
        Some(v) => out.push(Edit::Set(X_REAL_IP.clone(), v)),
        None => out.push(Edit::Remove(X_REAL_IP.clone())),
    }
    if !(trusted && fields.has("x-forwarded-proto")) {
        let proto = if https { &HTTPS } else { &HTTP };
        out.push(Edit::Set(X_FORWARDED_PROTO.clone(), proto.clone()));
    }
    if !(trusted && fields.has("x-forwarded-host")) {
        let host = match fields.get("host") {
            Some(h) => HeaderValue::from_bytes(h).ok(),
            None => authority.and_then(|a| HeaderValue::from_str(a).ok()),
        };
        if let Some(v) = host {
            out.push(Edit::Set(X_FORWARDED_HOST.clone(), v));
        }
    }
    if let Some(id) = &ctx.request_id {
        out.push(Edit::Set(X_REQUEST_ID.clone(), id.clone()));
    }
}

/// Whether a client field never goes upstream as sent: a [forged](is_forged)
/// one, a forwarding field the gateway sets itself ([`forwarding`]), or a
/// hop-by-hop field (pingora's transport drops those itself: it frames the
/// upstream request from the rest).
pub fn not_forwarded(name: &str, trusted: bool) -> bool {
    is_forged(name, trusted) || {
        let n = name.as_bytes();
        match n.len() {
            2 => name.eq_ignore_ascii_case("te"),
            7 => name.eq_ignore_ascii_case("trailer") || name.eq_ignore_ascii_case("upgrade"),
            9 => name.eq_ignore_ascii_case("x-real-ip"),
            10 => {
                name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("keep-alive")
            }
            12 => name.eq_ignore_ascii_case("x-request-id"),
            14 => name.eq_ignore_ascii_case("http2-settings"),
            15 => name.eq_ignore_ascii_case("x-forwarded-for"),
            16 => {
                name.eq_ignore_ascii_case("proxy-connection")
                    || (!trusted && name.eq_ignore_ascii_case("x-forwarded-host"))
            }
            17 => {
                name.eq_ignore_ascii_case("transfer-encoding")
                    || (!trusted && name.eq_ignore_ascii_case("x-forwarded-proto"))
            }
            18 => name.eq_ignore_ascii_case("proxy-authenticate"),
            19 => name.eq_ignore_ascii_case("proxy-authorization"),
            _ => false,
        }
    }
}

/// The verified identity's fields (`X-User-Id`, `-Email`, `-Role`) the
/// upstream request gets after the [forwarding](forwarding) fields and
/// before [`request`]'s edits (which may still replace or remove them).
/// Added, not set: the client's own `X-User-*` never get this far
/// ([`is_forged`]), so there is nothing to replace. Borrowed from the
/// identity, built when its token was verified: a transport that writes
/// bytes copies them as they are, with no clone and no edit per request.
pub fn identity(ctx: &RequestCtx) -> &[(HeaderName, HeaderValue)] {
    ctx.identity.as_deref().map_or(&[], |id| &id.headers)
}

/// Edits of the upstream request, after the forwarding and [`identity`]
/// fields: the pool's `Host`, then the route's `request_headers`.
pub fn request(route: &Route, out: &mut Edits) {
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

/// Edits of the response to the client; `fields`: the request's.
pub fn response(ctx: &RequestCtx, https: bool, fields: &impl Fields, out: &mut Edits) {
    if let Some(id) = &ctx.request_id {
        out.push(Edit::Set(X_REQUEST_ID.clone(), id.clone()));
    }
    if let Some(sec) = &ctx.security {
        crate::security_headers::edits(sec, https, out);
    }
    if let Some((policy, outcome)) = &ctx.rate {
        crate::limits::headers::edits(policy, outcome, out);
    }
    if let Some(route) = ctx.route() {
        if let Some(cors) = &route.cors {
            // Only CORS reads `Origin`: not looked up on other routes.
            crate::cors::response_edits(cors, fields.get("origin"), out);
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
    match (ctx.client.ip, ctx.client.peer) {
        (Some(c), Some(p)) if c == p => peer_value.cloned(),
        (Some(c), _) => ip_value(c),
        (None, _) => None,
    }
}
