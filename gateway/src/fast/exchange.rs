//! One request on the fast path: pick a server, send the prepared head, read
//! the response head, write the client's head and relay the body.

use std::time::Duration;

use http::Method;
use pingora::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::deadline::Deadline;
use super::request::{FileLocal, Head, Hit, Local, Plan};
use super::response::{self, Chunked, Decorations, Framing, Parsed, RespHead};
use super::upstream::{self, ConnectError, Held};
use super::wire::header as line;
use super::{Conn, GatewayApp, BODY_BUF};
use crate::access_log::Line;
use crate::files::{self, Body};
use crate::pipeline::{
    attempt_answered, attempt_failed, finish, pick_server, Failure, LocalReply, Reply, RequestCtx,
};

const TIMEOUT: (u16, &str, &str) = (
    504,
    "upstream_timeout",
    "the upstream did not answer in time",
);
const BAD_GATEWAY: (u16, &str, &str) = (502, "bad_gateway", "the upstream failed to answer");
const TOO_LARGE: (u16, &str, &str) = (
    502,
    "bad_gateway",
    "the upstream response head is too large",
);

/// The client's answer when no attempt may follow a failed one.
fn gave_up(timeout: bool) -> (u16, &'static str, &'static str) {
    if timeout {
        TIMEOUT
    } else {
        BAD_GATEWAY
    }
}

/// Smaller than the smallest `server.write_buffer` allowed (1 KiB): such a pair is
/// always copied into the buffer.
const SMALL_PAIR: usize = 1024;

/// Writes to the client (into its write buffer, sent when full); `false` when
/// the client is gone or took longer than `limit` (`server.send_timeout`) to
/// take more: a client that stops reading does not hold the upstream connection
/// for ever. The timer only starts if the write waits.
async fn send(stream: &mut Stream, bytes: &[u8], limit: Duration) -> bool {
    matches!(
        pingora_timeout::tokio_timeout(limit, stream.write_all(bytes)).await,
        Ok(Ok(()))
    )
}

/// `head` and `body` in one vectored write. tokio's write buffer (pingora's
/// `server.write_buffer`) passes a pair at least its size straight to the
/// socket, one `writev` without copying the body; a smaller pair joins the
/// buffer and leaves with the next flush.
async fn send_pair(stream: &mut Stream, head: &[u8], body: &[u8], limit: Duration) -> bool {
    if head.len() + body.len() < SMALL_PAIR {
        // Joins the buffer either way; two plain writes cost less than
        // gathering the slices.
        return send(stream, head, limit).await && send(stream, body, limit).await;
    }
    let mut both = bytes::Buf::chain(head, body);
    matches!(
        pingora_timeout::tokio_timeout(limit, stream.write_all_buf(&mut both)).await,
        Ok(Ok(()))
    )
}

async fn flush(stream: &mut Stream, limit: Duration) -> bool {
    matches!(
        pingora_timeout::tokio_timeout(limit, stream.flush()).await,
        Ok(Ok(()))
    )
}

/// How an attempt at the upstream ended before its response head.
enum Failed {
    /// Nothing came back on a reused connection: it was closed under us.
    Stale,
    Timeout,
    Broken,
    /// The response head is larger than pingora-proxy accepts either. The
    /// server is not broken (one URL answering a huge head, say with a cookie
    /// a client made it set, must not eject it), and another server would
    /// answer the same: 502 without a retry.
    TooLarge,
}

/// The largest response head read: pingora-proxy's limit, so a route answers
/// the same on both paths.
const MAX_RESPONSE_HEAD: usize = 1024 * 1024;

/// Reads with the pool's read timeout; a timeout is an error of its own kind.
async fn read_timed(
    up: &mut TcpStream,
    buf: &mut [u8],
    limit: Duration,
    timer: &mut Deadline,
) -> Result<usize, Failed> {
    match timer.within(limit, up.read(buf)).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(_)) => Err(Failed::Broken),
        Err(_) => Err(Failed::Timeout),
    }
}

/// Sends `request` and reads the final response head into `ubuf` (the client's
/// head goes into `head_out`). Returns the head, where it starts in `ubuf`
/// (after dropped 1xx heads) and how many bytes were read.
async fn attempt(
    up: &mut TcpStream,
    reused: bool,
    request: &[u8],
    ubuf: &mut Vec<u8>,
    head_out: &mut Vec<u8>,
    deco: &Decorations<'_>,
    (limit, timer): (Duration, &mut Deadline),
) -> Result<(RespHead, usize, usize), Failed> {
    let stale = |e| if reused { Failed::Stale } else { e };
    // The head fits in an idle socket's buffer; the read timeout bounds the
    // rare write that waits (a server that stopped reading).
    match pingora_timeout::tokio_timeout(limit, up.write_all(request)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err(stale(Failed::Broken)),
        Err(_) => return Err(Failed::Timeout),
    }
    let mut filled = 0;
    let mut start = 0;
    loop {
        if filled == ubuf.len() {
            // A head past the body buffer: grown (geometrically, so a large
            // head is parsed a few times, not once per read), shrunk after.
            if ubuf.len() >= MAX_RESPONSE_HEAD {
                return Err(Failed::TooLarge);
            }
            ubuf.resize((ubuf.len() * 2).min(MAX_RESPONSE_HEAD), 0);
        }
        let n = match read_timed(up, &mut ubuf[filled..], limit, timer).await {
            // A pooled connection the server reset before answering is stale,
            // like one it closed (pingora retries both).
            Err(Failed::Broken) if filled == 0 => return Err(stale(Failed::Broken)),
            r => r?,
        };
        if n == 0 {
            return Err(if filled == 0 {
                stale(Failed::Broken)
            } else {
                Failed::Broken
            });
        }
        filled += n;
        loop {
            match response::parse(&ubuf[start..filled], deco, head_out) {
                Parsed::Partial => break,
                Parsed::Invalid => return Err(Failed::Broken),
                Parsed::Informational(len) => start += len,
                Parsed::Ready(head) => return Ok((head, start, filled)),
            }
        }
    }
}

/// `HTTP/1.1 <status> <reason>\r\n`.
fn status_line(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A reply of the pipeline as bytes: its fields, `Content-Length`, `Date`,
/// and `Connection: close` unless the connection stays open.
fn render(out: &mut Vec<u8>, reply: &Reply, head_request: bool, keepalive: bool) {
    out.clear();
    status_line(out, reply.status);
    for (n, v) in &reply.fields {
        line(out, n.as_str().as_bytes(), v.as_bytes());
    }
    let mut len = itoa::Buffer::new();
    line(
        out,
        b"Content-Length",
        len.format(reply.body.len()).as_bytes(),
    );
    line(
        out,
        b"Date",
        pingora_core::protocols::http::date::get_cached_date().as_bytes(),
    );
    if !keepalive {
        line(out, b"Connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    if !head_request {
        out.extend_from_slice(&reply.body);
    }
}

/// How the body relay ended.
struct Relayed {
    sent: usize,
    /// The upstream sent the whole body (and nothing after it).
    complete: bool,
    client_ok: bool,
    reusable: bool,
    /// The first body bytes were malformed: nothing went to the client.
    refused: bool,
}

/// Writes the client's head and the body bytes read along with it, then relays
/// the rest of the body. `limits`: the upstream's read timeout, the client's
/// send timeout, the connection's timer for upstream reads.
async fn relay(
    stream: &mut Stream,
    up: &mut TcpStream,
    head: &RespHead,
    head_out: &[u8],
    ubuf: &mut [u8],
    early: std::ops::Range<usize>,
    (limit, send_limit, timer): (Duration, Duration, &mut Deadline),
) -> Relayed {
    let mut r = Relayed {
        sent: 0,
        complete: false,
        client_ok: true,
        reusable: head.reusable,
        refused: false,
    };
    let body = &ubuf[early];
    let mut chunked = Chunked::default();
    let mut remaining = 0u64;
    let take = match head.framing {
        Framing::Empty => {
            r.complete = true;
            0
        }
        Framing::Length(n) => {
            let t = (body.len() as u64).min(n) as usize;
            remaining = n - t as u64;
            r.complete = remaining == 0;
            t
        }
        Framing::Chunked => match chunked.feed(body) {
            Ok(Some(end)) => {
                r.complete = true;
                end
            }
            Ok(None) => body.len(),
            Err(()) => {
                r.refused = true;
                return r;
            }
        },
        Framing::UntilClose => body.len(),
    };
    if take < body.len() {
        // Bytes after the response: the upstream broke the protocol.
        r.reusable = false;
    }
    r.sent = take;
    if !send_pair(stream, head_out, &body[..take], send_limit).await {
        r.client_ok = false;
        return r;
    }
    // A streamed body (server-sent events, a long poll) reaches the client as
    // it comes, not when the write buffer fills; a Content-Length body is
    // written in as few sends as the buffer allows.
    let streamed = matches!(head.framing, Framing::Chunked | Framing::UntilClose);
    if streamed && !r.complete && !flush(stream, send_limit).await {
        r.client_ok = false;
        return r;
    }
    while !r.complete {
        let n = match read_timed(up, ubuf, limit, timer).await {
            Ok(0) if head.framing == Framing::UntilClose => {
                r.complete = true;
                break;
            }
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut end = n;
        match head.framing {
            Framing::Length(_) => {
                if n as u64 > remaining {
                    // More than the Content-Length: relayed up to it, and the
                    // connection is not used again.
                    end = remaining as usize;
                    r.reusable = false;
                }
                remaining -= end as u64;
                r.complete = remaining == 0;
            }
            Framing::Chunked => match chunked.feed(&ubuf[..n]) {
                Ok(Some(e)) => {
                    r.complete = true;
                    r.reusable &= e == n;
                    end = e;
                }
                Ok(None) => {}
                Err(()) => break,
            },
            Framing::UntilClose | Framing::Empty => {}
        }
        if !send(stream, &ubuf[..end], send_limit).await
            || (streamed && !r.complete && !flush(stream, send_limit).await)
        {
            r.client_ok = false;
            return r;
        }
        r.sent += end;
    }
    if !flush(stream, send_limit).await {
        r.client_ok = false;
    }
    r
}

impl<P: pingora::apps::HttpServerApp + Send + Sync + 'static> GatewayApp<P> {
    /// Refuses a head that cannot be read: 408 (not whole within
    /// `server.header_timeout`) or 431 (larger than the limit). Nothing of it
    /// is known, so nothing is routed, logged per route or charged.
    pub(super) async fn refuse_head(&self, stream: &mut Stream, resp: &mut Vec<u8>, status: u16) {
        let (code, message) = match status {
            408 => ("request_timeout", "the request took too long to arrive"),
            _ => ("headers_too_large", "request headers are too large"),
        };
        tracing::debug!(status, "request head refused");
        let reply = Reply::json_error(LocalReply::BadRequest, status, (code, message), None, &[]);
        render(resp, &reply, false, false);
        let limit = self.send_timeout;
        let _ = send(stream, resp, limit).await && flush(stream, limit).await;
        let _ = pingora_timeout::tokio_timeout(Duration::from_secs(1), stream.shutdown()).await;
    }

    /// Answers with an error of the gateway's own and ends the request.
    async fn answer(
        &self,
        stream: &mut Stream,
        resp: &mut Vec<u8>,
        ctx: &mut RequestCtx,
        line: &Line<'_>,
        (status, code, message): (u16, &str, &str),
    ) {
        let reply = Reply::json_error(
            LocalReply::BadRequest,
            status,
            (code, message),
            ctx.request_id.as_ref(),
            &[],
        );
        render(resp, &reply, false, false);
        let limit = self.send_timeout;
        let _ = send(stream, resp, limit).await && flush(stream, limit).await;
        finish(&self.shield, ctx, line, status).await;
    }

    /// Answers with the pipeline's reply; `true` when the client connection
    /// stays open.
    pub(super) async fn answer_local(
        &self,
        stream: &mut Stream,
        c: &mut Conn,
        local: Box<Local>,
    ) -> bool {
        let Local {
            head,
            reply,
            mut ctx,
        } = *local;
        ctx.local = Some(reply.why);
        let (whole, keepalive) = self.keeps_open(c, &head, reply.close);
        let head_request = head.method == Method::HEAD;
        render(&mut c.resp, &reply, head_request, keepalive);
        let bytes = if head_request { 0 } else { reply.body.len() };
        self.send_answer(
            stream,
            c,
            &head,
            &mut ctx,
            (reply.status, bytes),
            (whole, keepalive),
        )
        .await
    }

    /// How much of the read buffer the request takes, and whether the
    /// connection stays open after its local answer (an unread body is not
    /// skipped: the connection closes after the answer).
    fn keeps_open(&self, c: &Conn, head: &Head, close: bool) -> (usize, bool) {
        let whole = head
            .head_len
            .saturating_add(usize::try_from(head.body).unwrap_or(usize::MAX));
        let keepalive = !close
            && !c.closing
            && self.keepalive_requests.is_none_or(|n| c.served < n)
            && c.len >= whole;
        (whole, keepalive)
    }

    /// Sends the answer in `c.resp` and ends the request; `true` when the
    /// client connection stays open.
    async fn send_answer(
        &self,
        stream: &mut Stream,
        c: &mut Conn,
        head: &Head,
        ctx: &mut RequestCtx,
        (status, bytes): (u16, usize),
        (whole, keepalive): (usize, bool),
    ) -> bool {
        let limit = self.send_timeout;
        let sent = send(stream, &c.resp, limit).await && flush(stream, limit).await;
        let line = Line {
            host: std::str::from_utf8(&c.buf[head.host.clone()]).unwrap_or(""),
            method: &head.method,
            path: std::str::from_utf8(&c.buf[head.path.clone()]).unwrap_or("/"),
            bytes,
        };
        finish(&self.shield, ctx, &line, status).await;
        c.served = c.served.saturating_add(1);
        if keepalive {
            c.consume(whole);
        }
        keepalive && sent
    }

    /// Answers from the response cache: the stored head, rewritten as an
    /// upstream's would be (`response::parse`: our `Date`, the edits), then
    /// the stored body. `true` when the client connection stays open.
    pub(super) async fn answer_hit(
        &self,
        stream: &mut Stream,
        c: &mut Conn,
        hit: Box<Hit>,
    ) -> bool {
        let Hit {
            head,
            hit,
            mut ctx,
            response: edits,
        } = *hit;
        let (whole, keepalive) = self.keeps_open(c, &head, false);
        let head_request = head.method == Method::HEAD;
        let deco = Decorations {
            edits: &edits,
            keepalive,
            head_request,
        };
        let status = match response::parse(hit.wire(), &deco, &mut c.resp) {
            Parsed::Ready(rh) => rh.status,
            // Stored heads are whole and valid (`cache::store`): not reached.
            _ => return false,
        };
        let (bytes, complete) = if head_request {
            (0, true)
        } else {
            let body = hit.body();
            (body.len(), self.body_after_head(stream, c, body).await)
        };
        let open = self
            .send_answer(
                stream,
                c,
                &head,
                &mut ctx,
                (status, bytes),
                (whole, keepalive && complete),
            )
            .await;
        open && complete
    }

    /// A body held in memory after the head in `c.resp`: a small one joins the
    /// head (one write), a larger one is written from where it is (the cache's
    /// or the file cache's buffer) instead of being copied behind the head
    /// first, head and body in one vectored write (a body larger than the
    /// connection's write buffer then leaves with its head in one send, not
    /// after it in a second). `false` when the client stopped taking it.
    async fn body_after_head(&self, stream: &mut Stream, c: &mut Conn, body: &[u8]) -> bool {
        if body.len() <= 4096 {
            c.resp.extend_from_slice(body);
            return true;
        }
        let complete = send_pair(stream, &c.resp, body, self.send_timeout).await;
        c.resp.clear();
        complete
    }

    /// Answers with a file (`pipeline::statics`): its head rewritten with the
    /// route's edits as an upstream's is, then the bytes in memory, or the
    /// file streamed from its open handle. `true` when the client connection
    /// stays open.
    pub(super) async fn answer_file(
        &self,
        stream: &mut Stream,
        c: &mut Conn,
        file: Box<FileLocal>,
    ) -> bool {
        let FileLocal {
            head,
            reply,
            mut ctx,
        } = *file;
        let (whole, keepalive) = self.keeps_open(c, &head, false);
        let head_request = head.method == Method::HEAD;
        let mut own = Vec::with_capacity(256);
        status_line(&mut own, reply.status);
        for (n, v) in &reply.fields {
            line(&mut own, n.as_str().as_bytes(), v.as_bytes());
        }
        if reply.status != 304 {
            line(
                &mut own,
                b"Content-Length",
                itoa::Buffer::new().format(reply.body.len()).as_bytes(),
            );
        }
        own.extend_from_slice(b"\r\n");
        let deco = Decorations {
            edits: &reply.edits,
            keepalive,
            head_request,
        };
        if !matches!(response::parse(&own, &deco, &mut c.resp), Parsed::Ready(_)) {
            // Our own head: always whole and valid.
            return false;
        }
        let mut bytes = 0;
        let mut complete = true;
        match (&reply.body, head_request) {
            (_, true) | (Body::Empty, _) => {}
            (Body::Bytes(b), false) => {
                complete = self.body_after_head(stream, c, b).await;
                bytes = b.len();
            }
            (Body::File { file, offset, len }, false) => {
                let limit = self.send_timeout;
                complete = send(stream, &c.resp, limit).await;
                c.resp.clear();
                let mut sent = 0u64;
                while complete && sent < *len {
                    let want = (len - sent).min(files::CHUNK);
                    match files::read_chunk(file, offset + sent, want).await {
                        // An empty read: the file shrank after its length was
                        // sent; the response cannot be completed.
                        Ok(chunk) if !chunk.is_empty() => {
                            sent += chunk.len() as u64;
                            complete = send(stream, &chunk, limit).await;
                        }
                        _ => complete = false,
                    }
                }
                bytes = usize::try_from(sent).unwrap_or(usize::MAX);
            }
        }
        let open = self
            .send_answer(
                stream,
                c,
                &head,
                &mut ctx,
                (reply.status, bytes),
                (whole, keepalive && complete),
            )
            .await;
        open && complete
    }

    /// Proxies one planned request; `true` when the client connection stays open.
    pub(super) async fn serve(&self, stream: &mut Stream, c: &mut Conn, plan: Box<Plan>) -> bool {
        let Plan {
            head,
            route,
            pool,
            mut ctx,
            response: edits,
        } = *plan;
        let Head {
            head_len,
            body,
            method,
            host,
            path,
        } = head;
        let whole = head_len.saturating_add(usize::try_from(body).unwrap_or(usize::MAX));
        if body > 0 {
            match c.read_body(stream, whole).await {
                Ok(()) => {}
                Err(too_slow) => {
                    if too_slow {
                        ctx.local = Some(LocalReply::TooSlow);
                        let line = Line {
                            host: std::str::from_utf8(&c.buf[host.clone()]).unwrap_or(""),
                            method: &method,
                            path: std::str::from_utf8(&c.buf[path.clone()]).unwrap_or("/"),
                            bytes: 0,
                        };
                        let answer = (
                            408,
                            "request_timeout",
                            "the request took too long to arrive",
                        );
                        self.answer(stream, &mut c.resp, &mut ctx, &line, answer)
                            .await;
                    }
                    return false;
                }
            }
            // The upstream gets the head and the body in one write.
            c.out.extend_from_slice(&c.buf[head_len..whole]);
        }
        let keepalive = !c.closing && self.keepalive_requests.is_none_or(|n| c.served < n);
        if c.ubuf.is_empty() {
            c.ubuf = vec![0; BODY_BUF];
        }
        let Conn {
            buf,
            out,
            resp,
            ubuf,
            upstream: held,
            up_wait,
            ..
        } = c;
        let path_str = std::str::from_utf8(&buf[path]).unwrap_or("/");
        let host_str = std::str::from_utf8(&buf[host]).unwrap_or("");
        let pool = &pool;
        let deco = Decorations {
            edits: &edits,
            keepalive,
            head_request: method == Method::HEAD,
        };
        let limit = pool.config.timeouts.read;
        // Whether another attempt follows a failed one is the pipeline's
        // (`attempt_failed`), as on pingora's transport.
        let idempotent = crate::pipeline::is_idempotent(&method);
        let result = 'servers: loop {
            let Some(i) = pick_server(&route, &mut ctx, path_str, |_| None) else {
                break Err((
                    503,
                    "no_healthy_upstream",
                    "no upstream server is available",
                ));
            };
            let mut stale = 0;
            loop {
                // After two stale pooled connections, a new one.
                let pooled = if stale < 2 {
                    upstream::take(held, pool, i)
                } else {
                    None
                };
                let (mut up, reused) = match pooled {
                    Some(s) => (s, true),
                    None => match upstream::connect(pool, i).await {
                        Ok(s) => (s, false),
                        Err(e) => {
                            let timeout = matches!(e, ConnectError::Timeout);
                            let failure = Failure::Connect { timeout };
                            if attempt_failed(&ctx, &method, failure) {
                                continue 'servers;
                            }
                            break 'servers Err(gave_up(timeout));
                        }
                    },
                };
                match attempt(
                    &mut up,
                    reused,
                    out,
                    ubuf,
                    resp,
                    &deco,
                    (limit, &mut *up_wait),
                )
                .await
                {
                    Ok((head, start, filled)) => break 'servers Ok((i, up, head, start, filled)),
                    // A pooled connection closed under us: pingora retries
                    // it only for requests that cannot have been processed.
                    Err(Failed::Stale) if idempotent => stale += 1,
                    Err(Failed::TooLarge) => {
                        pool.metrics.error.inc();
                        break 'servers Err(TOO_LARGE);
                    }
                    Err(e) => {
                        let timeout = matches!(e, Failed::Timeout);
                        if attempt_failed(&ctx, &method, Failure::Exchange { timeout }) {
                            continue 'servers;
                        }
                        break 'servers Err(gave_up(timeout));
                    }
                }
            }
        };
        let no_body = Line {
            host: host_str,
            method: &method,
            path: path_str,
            bytes: 0,
        };
        let (i, mut up, head, start, filled) = match result {
            Ok(r) => r,
            Err(answer) => {
                self.answer(stream, resp, &mut ctx, &no_body, answer).await;
                return false;
            }
        };
        attempt_answered(&mut ctx);
        let early = start + head.head_len..filled;
        let limits = (limit, self.send_timeout, up_wait);
        let r = relay(stream, &mut up, &head, resp, ubuf, early, limits).await;
        if ubuf.len() > BODY_BUF {
            // A large head was read: the connection keeps the usual buffer.
            ubuf.truncate(BODY_BUF);
            ubuf.shrink_to_fit();
        }
        if !r.complete && r.client_ok {
            // The body broke off: counted as a failed exchange (too late to retry).
            attempt_failed(&ctx, &method, Failure::Exchange { timeout: false });
        }
        if r.refused {
            self.answer(stream, resp, &mut ctx, &no_body, BAD_GATEWAY)
                .await;
            return false;
        }
        if r.complete && r.reusable {
            *held = Some(Held {
                pool: pool.clone(),
                server: i,
                stream: up,
            });
        }
        let line = Line {
            host: host_str,
            method: &method,
            path: path_str,
            bytes: r.sent,
        };
        finish(&self.shield, &mut ctx, &line, head.status).await;
        c.served = c.served.saturating_add(1);
        c.consume(whole);
        r.complete && r.client_ok && keepalive && head.framing != Framing::UntilClose
    }
}
