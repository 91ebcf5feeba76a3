//! The client's request on the fast path: the head parsed in place with
//! httparse, its shape checked against what this transport renders, handed
//! to the pipeline, and — when the pipeline forwards it — turned into the
//! upstream request head. Requests of another shape (HTTP/1.0,
//! `Transfer-Encoding` or large bodies, `Expect`, upgrades, a path to
//! normalize) and routes the fast path does not render (cache, compression,
//! TLS upstreams, static files) go to pingora (`Decision::Delegate`), which
//! parses the same bytes again and runs the same pipeline.

use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;

use http::{Method, Version};
use smallvec::SmallVec;

use crate::cache::store::FreshHit;
use crate::fields::{self, Edit, Edits, Parsed};
use crate::pipeline::{self, Env, Reply, Request, RequestCtx, Step};
use crate::routing::{needs_normalizing, Route};

pub use super::wire::MAX_HEADERS;
use super::wire::{header, write_edits};

/// Bodies (with one valid `Content-Length`) up to this size are read whole
/// and forwarded here, as nginx buffers them; larger ones go to pingora,
/// which streams them.
pub const MAX_BODY: u64 = 64 * 1024;

/// Where the head's parts are in the read buffer, and what the transport
/// needs of them after the pipeline is done with the head.
pub struct Head {
    pub head_len: usize,
    /// The `Content-Length` of the body after the head (0 without one).
    pub body: u64,
    pub method: Method,
    /// Where the `Host` value and the path (without query) are in the read buffer.
    pub host: Range<usize>,
    pub path: Range<usize>,
}

/// A request the fast path forwards.
pub struct Plan {
    pub head: Head,
    pub route: Arc<Route>,
    pub pool: Arc<crate::upstream::Pool>,
    pub ctx: RequestCtx,
    /// The pipeline's edits of the response head.
    pub response: Edits,
}

/// A request answered from the response cache: the stored head and body,
/// with these edits.
pub struct Hit {
    pub head: Head,
    pub hit: FreshHit,
    pub ctx: RequestCtx,
    /// The hit's edits, the pipeline's response edits, `X-Cache-Status`.
    pub response: Edits,
}

/// A request the pipeline answered.
pub struct Local {
    pub head: Head,
    pub reply: Reply,
    pub ctx: RequestCtx,
}

/// A `static` route's answer (`pipeline::statics`).
pub struct FileLocal {
    pub head: Head,
    pub reply: pipeline::statics::FileReply,
    pub ctx: RequestCtx,
}

pub enum Decision {
    /// The head is not whole yet.
    Partial,
    /// Not for this transport: pingora takes the request (nothing was
    /// counted for it yet).
    Delegate,
    /// Close the connection unanswered (`action: drop` ban).
    Drop,
    Answer(Box<Local>),
    Hit(Box<Hit>),
    File(Box<FileLocal>),
    Forward(Box<Plan>),
}

/// Request-target bytes the fast path takes as they are; anything else (which
/// pingora may refuse or normalise) goes to pingora.
fn target_byte_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

/// What the fast path, when it is off, needs of a head: whether it is whole
/// (pingora takes every request, read here first for the head's deadline).
pub enum Framed {
    Partial,
    /// Whole, or something pingora will refuse in its own words; with how
    /// many bytes of the buffer the first request takes, when that can be told
    /// ([`first_request_len`]).
    Whole(Option<usize>),
}

/// With the fast path off: one parse says both whether the head is whole
/// and how long the first request is.
pub fn framed(buf: &[u8]) -> Framed {
    // Nearly every head comes alone, in one read: when the buffer ends with
    // its first blank line it holds one head and nothing after it, so
    // pingora gets all of it whatever a parse would say (a bad head is
    // pingora's to refuse), and pingora parses it anyway.
    if !matches!(buf.first(), None | Some(b'\r' | b'\n')) && blank_line_end(buf) == Some(buf.len())
    {
        return Framed::Whole(Some(buf.len()));
    }
    parsed_frame(buf)
}

/// [`framed`] by a parse of the head.
fn parsed_frame(buf: &[u8]) -> Framed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Framed::Partial,
        Ok(httparse::Status::Complete(head)) => Framed::Whole(request_len(&req, head, buf.len())),
        Err(httparse::Error::TooManyHeaders) if !head_is_whole(buf) => Framed::Partial,
        Err(_) => Framed::Whole(None),
    }
}

/// How many bytes of `buf` the first request takes when they are all there:
/// its head and a `Content-Length` body. `None` when that cannot be told
/// (a chunked body, a head pingora will refuse, a body still arriving):
/// then everything read goes with the first request.
pub fn first_request_len(buf: &[u8]) -> Option<usize> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head) = req.parse(buf).ok()? else {
        return None;
    };
    request_len(&req, head, buf.len())
}

/// The first request's length from its parsed head (`head` bytes) when the
/// `read` bytes hold all of its body.
fn request_len(req: &httparse::Request<'_, '_>, head: usize, read: usize) -> Option<usize> {
    let mut body = 0;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return None;
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            body = usize::try_from(parse_length(h.value)?).ok()?;
        }
    }
    let end = head.checked_add(body)?;
    (end <= read).then_some(end)
}

/// Whether the blank line ending a head is in `buf`. For heads with more
/// headers than the parser's array: handed to pingora before they are whole,
/// the rest could trickle in with no deadline.
fn head_is_whole(buf: &[u8]) -> bool {
    blank_line_end(buf).is_some()
}

/// Where the first blank line of `buf` (`\n\n` or `\n\r\n`) ends.
fn blank_line_end(buf: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', buf).find_map(|i| match buf.get(i + 1..)? {
        [b'\n', ..] => Some(i + 2),
        [b'\r', b'\n', ..] => Some(i + 3),
        _ => None,
    })
}

/// What one pass over the client's headers found.
#[derive(Default)]
struct Seen<'b> {
    host: Option<&'b [u8]>,
    hosts: usize,
    /// `Content-Length` as sent (the pipeline refuses several).
    length: Option<&'b [u8]>,
    size: usize,
}

/// `None`: a head of a shape pingora renders (bodies other than a
/// `Content-Length` one, upgrades, expectations, `Connection` other than
/// keep-alive, no or several `Host`s).
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
            6 if name.eq_ignore_ascii_case("expect") => return None,
            7 if name.eq_ignore_ascii_case("upgrade") => return None,
            // `keep-alive` only: `close` and nominated hop-by-hop fields go to pingora.
            10 if name.eq_ignore_ascii_case("connection")
                && !h.value.trim_ascii().eq_ignore_ascii_case(b"keep-alive") =>
            {
                return None
            }
            14 if name.eq_ignore_ascii_case("content-length") => {
                s.length.get_or_insert(h.value);
            }
            17 if name.eq_ignore_ascii_case("transfer-encoding") => return None,
            _ => {}
        }
    }
    (s.hosts == 1).then_some(s)
}

fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Parses the head at the start of `buf`, runs the pipeline on it and, for
/// a request to forward, writes the upstream head into `out` (the body, if
/// any, is appended by the caller once read).
pub async fn decide(
    buf: &[u8],
    env: &Env<'_>,
    peer: Option<IpAddr>,
    out: &mut Vec<u8>,
) -> Decision {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut storage);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Decision::Partial,
        Err(httparse::Error::TooManyHeaders) if !head_is_whole(buf) => return Decision::Partial,
        Err(_) => return Decision::Delegate,
    };
    if req.version != Some(1) {
        return Decision::Delegate;
    }
    let method = match req.method {
        Some("GET") => Method::GET,
        Some("HEAD") => Method::HEAD,
        Some("POST") => Method::POST,
        Some("PUT") => Method::PUT,
        Some("PATCH") => Method::PATCH,
        Some("DELETE") => Method::DELETE,
        Some("OPTIONS") => Method::OPTIONS,
        _ => return Decision::Delegate,
    };
    let Some(target) = req.path.filter(|t| t.bytes().all(target_byte_ok)) else {
        return Decision::Delegate;
    };
    // memchr: a `str` search for a char costs several times as much on a
    // target this short.
    let path = memchr::memchr(b'?', target.as_bytes())
        .and_then(|i| target.get(..i))
        .unwrap_or(target);
    let Some(seen) = scan(req.headers) else {
        return Decision::Delegate;
    };
    let body = match seen.length {
        None => 0,
        Some(v) => match parse_length(v) {
            Some(n) => n,
            // pingora refuses an unreadable length in its own words.
            None => return Decision::Delegate,
        },
    };
    // Userinfo, a bad port…: pingora's parser refuses those before any
    // phase runs; its answer is the one both transports give.
    let Some(host) = seen
        .host
        .and_then(|h| std::str::from_utf8(h).ok())
        .filter(|h| crate::routing::valid_authority(h))
    else {
        return Decision::Delegate;
    };
    // A path to normalize (rare) is left to pingora, which routes on the
    // normal form and sends it upstream.
    if needs_normalizing(path) {
        return Decision::Delegate;
    }
    let offset = |s: &str| s.as_ptr() as usize - buf.as_ptr() as usize;
    let head = Head {
        head_len,
        body,
        method: method.clone(),
        host: offset(host)..offset(host) + host.len(),
        path: offset(path)..offset(path) + path.len(),
    };
    let fields = Parsed(req.headers);
    let view = Request {
        method: &method,
        version: Version::HTTP_11,
        target,
        path,
        host: Some(host),
        fields: &fields,
        peer,
        head_size: (target.len() + 16 + seen.size) as u64,
    };
    let mut ctx = RequestCtx::new(env.snap.clone());
    let route = match pipeline::route(env, &view, &mut ctx) {
        Step::Route(r) => r,
        Step::Answer(reply) => return Decision::Answer(Box::new(Local { head, reply, ctx })),
        Step::Drop => return Decision::Drop,
        Step::Acme => return Decision::Delegate,
    };
    let rewritten = route.rewritten_path(path);
    // Before the policies: nothing has been counted for the request yet.
    if route.pingora_only.is_some()
        || body > MAX_BODY
        || rewritten
            .as_deref()
            .is_some_and(|p| !p.bytes().all(|b| target_byte_ok(b) && b != b'?'))
    {
        return Decision::Delegate;
    }
    // Looked up before the policies, so that a miss (pingora-cache's) goes
    // to pingora uncounted; a hit is answered only once they pass.
    let hit = match &route.cache {
        Some(_) => match pipeline::cached::fresh_hit(&view, &mut ctx, &route) {
            Some(hit) => Some(hit),
            None => return Decision::Delegate,
        },
        None => None,
    };
    if let Some(reply) = pipeline::policies(env, &view, &mut ctx, &route).await {
        ctx.cache_status = None;
        return Decision::Answer(Box::new(Local { head, reply, ctx }));
    }
    if let crate::routing::Action::Static(site) = &route.action {
        let reply = pipeline::statics::serve(env, &view, &mut ctx, &route, site).await;
        return Decision::File(Box::new(FileLocal { head, reply, ctx }));
    }
    if let Some(hit) = hit {
        let mut response = Edits::new();
        pipeline::cached::hit_edits(&hit, &mut response);
        pipeline::edits::response(&ctx, env.https, &fields, &mut response);
        pipeline::cached::status_edit(&mut response);
        return Decision::Hit(Box::new(Hit {
            head,
            hit,
            ctx,
            response,
        }));
    }
    let Some(pool) = route.pool().cloned() else {
        return Decision::Delegate;
    };
    let mut edits = Edits::new();
    pipeline::edits::request(&route, &mut edits);
    out.clear();
    // The query as sent (`?…`, or nothing), after the path.
    let query = target.get(path.len()..).unwrap_or_default();
    write_request_line(
        out,
        &method,
        target,
        rewritten.as_deref().map(|p| (p, query)),
    );
    write_request_headers(out, &fields, &ctx, env.https, &edits);
    let mut response = Edits::new();
    pipeline::edits::response(&ctx, env.https, &fields, &mut response);
    // The body forwarded with the head (its whole declared length), as
    // pingora's transport counts it chunk by chunk.
    ctx.body_bytes = body;
    Decision::Forward(Box::new(Plan {
        head,
        route,
        pool,
        ctx,
        response,
    }))
}

/// The request line: `target` as sent, or a rewritten path with the target's
/// query (`?…` or empty).
fn write_request_line(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    rewritten: Option<(&str, &str)>,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    match rewritten {
        Some((path, query)) => {
            out.extend_from_slice(path.as_bytes());
            out.extend_from_slice(query.as_bytes());
        }
        None => out.extend_from_slice(target.as_bytes()),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// The client's fields the pipeline lets through, then its forwarding and
/// identity fields, then its request edits (the pool's `Host`, header
/// rules).
fn write_request_headers(
    out: &mut Vec<u8>,
    fields: &Parsed<'_, '_>,
    ctx: &RequestCtx,
    https: bool,
    edits: &[Edit],
) {
    let trusted = ctx.client.peer_trusted;
    let start = out.len();
    // Where each line went, for the edits: no second pass over the bytes
    // (a bearer token alone is a few hundred of them).
    let mut lines = Lines::new();
    for h in fields.0 {
        if !pipeline::edits::not_forwarded(h.name, trusted) {
            line_at(out, &mut lines, h.name.as_bytes(), h.value);
        }
    }
    let mut forwarding = Edits::new();
    pipeline::edits::forwarding(ctx, https, fields, None, &mut forwarding);
    // Every field they set was left out above: nothing to resolve.
    for e in &forwarding {
        if let Edit::Set(n, v) = e {
            line_at(out, &mut lines, n.as_str().as_bytes(), v.as_bytes());
        }
    }
    // Lines like the head's own, so the edits after them can still replace
    // or remove them.
    for (n, v) in pipeline::edits::identity(ctx) {
        line_at(out, &mut lines, n.as_str().as_bytes(), v.as_bytes());
    }
    apply_edits(out, start, &lines, edits);
    out.extend_from_slice(b"\r\n");
}

/// (line start, name end, line end) of each header line written.
type Lines = SmallVec<[(usize, usize, usize); 40]>;

/// Writes one header line and records where it is.
fn line_at(out: &mut Vec<u8>, lines: &mut Lines, name: &[u8], value: &[u8]) {
    let s = out.len();
    header(out, name, value);
    lines.push((s, s + name.len(), out.len()));
}

/// Applies `edits` to the header lines written from `start` on (`lines`):
/// lines an edit replaces or removes are cut out, the edits' own lines
/// appended.
fn apply_edits(out: &mut Vec<u8>, start: usize, lines: &Lines, edits: &[Edit]) {
    if Edit::only_adds(edits) {
        // No edit (no header rule, no pool `Host`) or only added fields:
        // every line stays, every edit is written, nothing to resolve.
        for e in edits {
            if let Edit::Append(n, v) = e {
                header(out, n.as_str().as_bytes(), v.as_bytes());
            }
        }
        return;
    }
    let mut keep: SmallVec<[bool; 40]> = SmallVec::from_elem(true, lines.len());
    let mut live: SmallVec<[bool; 16]> = SmallVec::from_elem(false, edits.len());
    {
        let names: SmallVec<[&[u8]; 40]> = lines.iter().map(|&(s, c, _)| &out[s..c]).collect();
        fields::resolve(&names, edits, &mut keep, &mut live);
    }
    let mut w = start;
    for (&(s, _, e), _) in lines.iter().zip(&keep).filter(|(_, k)| **k) {
        if w != s {
            out.copy_within(s..e, w);
        }
        w += e - s;
    }
    out.truncate(w);
    write_edits(out, edits, &live);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// How many bytes pingora is handed for the first request ([`framed`]'s
    /// caller: everything read when the length cannot be told).
    fn handed(f: &Framed, read: usize) -> Option<usize> {
        match f {
            Framed::Partial => None,
            Framed::Whole(len) => Some(len.unwrap_or(read)),
        }
    }

    fn agrees(buf: &[u8]) {
        assert_eq!(
            handed(&framed(buf), buf.len()),
            handed(&parsed_frame(buf), buf.len()),
            "{:?}",
            String::from_utf8_lossy(buf)
        );
    }

    #[test]
    fn a_lone_head_is_handed_whole_without_a_parse() {
        for head in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r",
        ] {
            agrees(head);
        }
        assert!(matches!(
            framed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"),
            Framed::Whole(Some(27))
        ));
    }

    proptest! {
        #[test]
        fn the_shortcut_hands_pingora_what_the_parse_would(
            lines in proptest::collection::vec(
                prop_oneof![
                    Just("GET / HTTP/1.1".to_owned()),
                    Just("Host: a".to_owned()),
                    Just("Content-Length: 3".to_owned()),
                    Just(String::new()),
                    "[ -~]{0,12}",
                ],
                0..8,
            ),
            ends in proptest::collection::vec(prop_oneof![Just("\r\n"), Just("\n"), Just("\r")], 8),
            tail in "(abc)?(\r\n)?",
        ) {
            let mut buf = String::new();
            for (l, e) in lines.iter().zip(&ends) {
                buf.push_str(l);
                buf.push_str(e);
            }
            buf.push_str(&tail);
            agrees(buf.as_bytes());
        }
    }
}
