//! The client's request head on the fast path: parsed in place with httparse,
//! checked against everything `request_filter` checks, and — when it qualifies —
//! turned into the upstream request head with the same forwarding headers as
//! `proxy::forward` sets on pingora's path. Anything unusual is left to pingora
//! (`Prep::Delegate`), which parses the same bytes again and answers as always.

use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;

use http::{HeaderValue, Method};

use crate::cluster::Shield;
use crate::proxy::RequestCtx;
use crate::request_id;
use crate::routing::{needs_normalizing, path_is_safe, Route, RouteMatch};
use crate::snapshot::Snapshot;

/// Headers per request the fast path parses; a request with more goes to pingora.
pub const MAX_HEADERS: usize = 64;
const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

/// What the request phase needs of the connection.
pub struct Env<'a> {
    pub snap: &'a Arc<Snapshot>,
    pub peer: Option<IpAddr>,
    pub https: bool,
    pub shield: &'a Shield,
}

/// A request the fast path proxies.
pub struct Plan {
    pub route: Arc<Route>,
    /// The route's pool (fast-path routes always proxy).
    pub pool: Arc<crate::upstream::Pool>,
    pub head_len: usize,
    pub method: Method,
    /// Where the `Host` value and the path (without query) are in the read buffer.
    pub host: Range<usize>,
    pub path: Range<usize>,
    pub ctx: RequestCtx,
}

pub enum Prep {
    /// The head is not complete yet.
    Partial,
    /// Not for the fast path: pingora handles this request.
    Delegate,
    Ready(Box<Plan>),
}

/// Headers never forwarded upstream: hop-by-hop fields (as pingora strips
/// them), and the fields the gateway sets itself.
fn dropped(name: &str, host_overridden: bool, trusted: bool) -> bool {
    let n = name.as_bytes();
    match n.len() {
        2 => name.eq_ignore_ascii_case("te"),
        4 => host_overridden && name.eq_ignore_ascii_case("host"),
        7 => name.eq_ignore_ascii_case("trailer") || name.eq_ignore_ascii_case("upgrade"),
        9 => name.eq_ignore_ascii_case("x-real-ip"),
        10 => name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("keep-alive"),
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

/// Request-target bytes the fast path takes as they are; anything else (which
/// pingora may refuse or normalise) goes to pingora.
fn target_byte_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

/// Route settings the fast path does not implement: those routes stay on pingora.
fn route_qualifies(route: &Route) -> bool {
    let Some(pool) = route.pool() else {
        // Answered at the gateway: pingora's path renders those.
        return false;
    };
    route.access.mode == crate::config::AuthMode::Public
        && route.rate_limit.is_none()
        && route.cors.is_none()
        && route.cache.is_none()
        && route.compress.is_none()
        && route.request_headers.is_empty()
        && route.response_headers.is_empty()
        && !pool.is_tls()
        && !matches!(
            pool.config.balance,
            crate::config::Balance::ConsistentHash(crate::config::HashKey::Header(_))
        )
}

/// Parses `buf` and, for a qualifying request, writes the upstream head into `out`.
pub fn prepare(buf: &[u8], env: &Env<'_>, out: &mut Vec<u8>) -> Prep {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Prep::Partial,
        Err(httparse::Error::TooManyHeaders) if !head_is_whole(buf) => return Prep::Partial,
        Err(_) => return Prep::Delegate,
    };
    match prepare_parsed(buf, &req, head_len, env, out) {
        Some(plan) => Prep::Ready(Box::new(plan)),
        None => Prep::Delegate,
    }
}

/// With the fast path off: only whether the head is whole (pingora takes
/// every request, read here first for the head's deadline).
pub fn framed(buf: &[u8]) -> Prep {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::Request::new(&mut headers).parse(buf) {
        Ok(httparse::Status::Partial) => Prep::Partial,
        Err(httparse::Error::TooManyHeaders) if !head_is_whole(buf) => Prep::Partial,
        // Complete, or something pingora will refuse in its own words.
        _ => Prep::Delegate,
    }
}

/// Whether the blank line ending a head is in `buf`. For heads with more
/// headers than the parser's array: handed to pingora before they are whole,
/// the rest could trickle in with no deadline.
fn head_is_whole(buf: &[u8]) -> bool {
    buf.windows(2).any(|w| w == b"\n\n") || buf.windows(3).any(|w| w == b"\n\r\n")
}

/// What one pass over the client's headers found.
#[derive(Default)]
struct Seen<'b> {
    host: Option<&'b [u8]>,
    hosts: usize,
    request_id: Option<&'b [u8]>,
    cf_ip: Option<&'b [u8]>,
    true_client_ip: Option<&'b [u8]>,
    xff: usize,
    size: usize,
}

fn scan<'b>(headers: &[httparse::Header<'b>]) -> Option<Seen<'b>> {
    let mut s = Seen::default();
    for h in headers {
        let name = h.name;
        s.size += name.len() + h.value.len() + 4;
        match name.len() {
            4 if name.eq_ignore_ascii_case("host") => {
                s.host = Some(h.value);
                s.hosts += 1;
            }
            // Bodies, upgrades and expectations are pingora's.
            6 if name.eq_ignore_ascii_case("expect") => return None,
            7 if name.eq_ignore_ascii_case("upgrade") => return None,
            // `keep-alive` only: `close` and nominated hop-by-hop fields go to pingora.
            10 if name.eq_ignore_ascii_case("connection")
                && !h.value.trim_ascii().eq_ignore_ascii_case(b"keep-alive") =>
            {
                return None
            }
            12 if name.eq_ignore_ascii_case("x-request-id") => {
                s.request_id.get_or_insert(h.value);
            }
            14 if name.eq_ignore_ascii_case("content-length") => return None,
            15 if name.eq_ignore_ascii_case("x-forwarded-for") => s.xff += 1,
            16 if name.eq_ignore_ascii_case("cf-connecting-ip") => {
                s.cf_ip.get_or_insert(h.value);
            }
            14 if name.eq_ignore_ascii_case("true-client-ip") => {
                s.true_client_ip.get_or_insert(h.value);
            }
            17 if name.eq_ignore_ascii_case("transfer-encoding") => return None,
            _ => {}
        }
    }
    (s.hosts == 1).then_some(s)
}

fn prepare_parsed(
    buf: &[u8],
    req: &httparse::Request<'_, '_>,
    head_len: usize,
    env: &Env<'_>,
    out: &mut Vec<u8>,
) -> Option<Plan> {
    if req.version != Some(1) {
        return None;
    }
    let method = match req.method? {
        "GET" => Method::GET,
        "HEAD" => Method::HEAD,
        _ => return None,
    };
    let target = req.path?;
    if !target.bytes().all(target_byte_ok) {
        return None;
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let seen = scan(req.headers)?;
    let host = std::str::from_utf8(seen.host?).ok()?;
    // Userinfo, a bad port…: pingora's path refuses those (400).
    if !crate::routing::valid_authority(host) {
        return None;
    }
    let snap = env.snap;
    let limits = &snap.config.limits;
    // Routing first: requests for routes the fast path does not take (cached
    // ones, say) are handed over before any other work.
    // A path to normalize (rare) is left to pingora, which routes on the
    // normal form and sends it upstream.
    if !path_is_safe(path) || needs_normalizing(path) {
        return None;
    }
    let host_routes = snap.router.host(Some(host))?;
    if !env.https && path.starts_with(ACME_PREFIX) {
        return None;
    }
    if (target.len() + 16 + seen.size) as u64 > limits.max_header_bytes {
        return None;
    }
    let RouteMatch::Found(route) = host_routes.find(path, &method) else {
        return None;
    };
    if !route_qualifies(route) {
        return None;
    }
    let tls = &snap.config.tls;
    if !env.https && !route.allow_plain && tls.redirect_http && snap.config.listen.https.is_some() {
        return None;
    }
    let rewritten = route.rewritten_path(path);
    if rewritten
        .as_deref()
        .is_some_and(|p| !p.bytes().all(target_byte_ok) || p.contains('?'))
    {
        return None;
    }

    let mut ctx = RequestCtx::new();
    if let Some(peer) = env.peer {
        let xff = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
            .map(|h| h.value);
        // An unreadable chain is answered (400) by pingora's path.
        ctx.identify(
            peer,
            &snap.trusted_proxies,
            xff,
            seen.cf_ip.or(seen.true_client_ip),
        )
        .ok()?;
        // A banned client gets pingora's path, which answers or drops it.
        if let Some(ip) = ctx.chargeable_ip() {
            if env.shield.bans.check(ip, limits.ipv6_prefix).is_some() {
                return None;
            }
        }
    }
    ctx.request_id = Some(match seen.request_id {
        Some(v) if request_id::is_sane(v) => HeaderValue::from_bytes(v).ok()?,
        _ => request_id::generate(),
    });
    ctx.security = Some(host_routes.security.clone());
    ctx.snapshot = Some(snap.clone());
    ctx.route = Some(route.clone());

    out.clear();
    write_request_line(out, &method, target, rewritten.as_deref());
    write_request_headers(out, req.headers, &seen, &ctx, route, env.https);

    let offset = |s: &str| s.as_ptr() as usize - buf.as_ptr() as usize;
    let host_at = offset(host);
    let path_at = offset(path);
    Some(Plan {
        route: route.clone(),
        pool: route.pool()?.clone(),
        head_len,
        method,
        host: host_at..host_at + host.len(),
        path: path_at..path_at + path.len(),
        ctx,
    })
}

fn write_request_line(out: &mut Vec<u8>, method: &Method, target: &str, rewritten: Option<&str>) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    match rewritten {
        Some(p) => {
            out.extend_from_slice(p.as_bytes());
            if let Some((_, q)) = target.split_once('?') {
                out.push(b'?');
                out.extend_from_slice(q.as_bytes());
            }
        }
        None => out.extend_from_slice(target.as_bytes()),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// One `name: value` line of a head.
pub(super) fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The client's end-to-end headers, then `X-Forwarded-*`, `X-Real-IP`,
/// `X-Request-Id` and the pool's `Host` (see `proxy::forward::forwarded_headers`).
fn write_request_headers(
    out: &mut Vec<u8>,
    headers: &[httparse::Header<'_>],
    seen: &Seen<'_>,
    ctx: &RequestCtx,
    route: &Route,
    https: bool,
) {
    let host_header = route.pool().and_then(|p| p.host_header.as_ref());
    let trusted = ctx.peer_trusted;
    let mut kept_proto = false;
    let mut kept_host = false;
    for h in headers {
        // Forged identity and client-IP headers never reach the upstream
        // (public routes set none of their own).
        if crate::proxy::is_forged(h.name, trusted) {
            continue;
        }
        if dropped(h.name, host_header.is_some(), trusted) {
            continue;
        }
        if trusted {
            kept_proto |= h.name.eq_ignore_ascii_case("x-forwarded-proto");
            kept_host |= h.name.eq_ignore_ascii_case("x-forwarded-host");
        }
        header(out, h.name.as_bytes(), h.value);
    }
    let peer_value = ctx.peer_ip.and_then(crate::proxy::ip_value);
    if let Some(peer_value) = &peer_value {
        out.extend_from_slice(b"X-Forwarded-For: ");
        if trusted && seen.xff > 0 {
            // A trusted proxy's chain is extended; anyone else's is replaced.
            for h in headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
            {
                out.extend_from_slice(h.value);
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(peer_value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let real = match (ctx.client_ip, ctx.peer_ip) {
        (Some(c), Some(p)) if c == p => peer_value,
        (Some(c), _) => crate::proxy::ip_value(c),
        (None, _) => None,
    };
    if let Some(v) = real {
        header(out, b"X-Real-IP", v.as_bytes());
    }
    if !kept_proto {
        header(
            out,
            b"X-Forwarded-Proto",
            if https { b"https" } else { b"http" },
        );
    }
    if !kept_host {
        if let Some(h) = seen.host {
            header(out, b"X-Forwarded-Host", h);
        }
    }
    if let Some(id) = &ctx.request_id {
        header(out, b"X-Request-Id", id.as_bytes());
    }
    if let Some(v) = host_header {
        header(out, b"Host", v.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}
