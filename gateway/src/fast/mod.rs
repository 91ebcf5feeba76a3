//! The fast path: the gateway's own HTTP/1.1 transport in front of
//! pingora-proxy.
//!
//! pingora-proxy spends several times nginx's instructions per proxied
//! request before any of our code runs (phase machinery, header maps built
//! and cloned, a task and a channel per request, a pooled upstream
//! connection handed out and back with a watcher task). HTTP/1.1 requests
//! are therefore read here, on raw bytes, and handed to the same
//! [`pipeline`](crate::pipeline) as pingora's phases: every decision (client
//! identity, bans, routing, rate limits, authentication, CORS, header edits,
//! upstream choice, metrics, access log, jails) is the pipeline's; this
//! module renders its answers and edits as bytes, and proxies to plain-HTTP
//! upstreams with the same retry and failure accounting as
//! `GatewayProxy::fail_to_connect`/`error_while_proxy`.
//!
//! What stays on pingora-proxy (`request::decide` says `Delegate` before
//! anything is counted): HTTP/2, `Transfer-Encoding` bodies and bodies over
//! `request::MAX_BODY`, `Expect`, upgrades/WebSockets, ACME challenges, paths
//! to normalize, cache misses and cache lookups of another kind than a fresh
//! hit (`pipeline::cached`), and the routes `routing::pingora_only` names
//! (compression, TLS upstreams, hashing by header, private or varying cache). The bytes read are put
//! back in front of the connection (`rewind`) and pingora reads the request
//! as if it came first; the connection then returns here for its next
//! request. `server.fast_path: false` sends every request to pingora: heads
//! are still read here first, so that every HTTP/1 head meets
//! `server.header_timeout` (pingora times each read, not the whole head).
//!
//! Timeouts here are tokio's (`pingora_timeout::tokio_timeout`: armed only when
//! the I/O waits, kept in the runtime's own timer wheel), not pingora's fast
//! timeouts, whose clock thread wakes every 10 ms on the proxy's core and takes
//! each worker's timer lock. The two waits every request has (the client's
//! next head, the upstream's answer) reuse one timer each per connection
//! (`deadline`).

mod deadline;
mod exchange;
// Public for the fuzz targets (`fuzz/`), which feed them arbitrary bytes.
pub mod request;
pub mod response;
mod rewind;
mod upstream;
mod wire;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::limits::HeadDeadline;
use crate::pipeline::Env;
use crate::shield::Shield;
use crate::snapshot::SnapshotHandle;
use request::Decision;

/// How long a client connection may sit between requests (pingora's default).
const KEEPALIVE: Duration = Duration::from_secs(60);
/// How long an idle client connection keeps its upstream connection before it
/// goes back to the server's idle queue for other clients.
const HOLD: Duration = Duration::from_secs(1);
/// Request heads larger than this are left to pingora.
const HEAD_BUF: usize = 8 * 1024;
const BODY_BUF: usize = 32 * 1024;
/// Room beyond `limits.max_header_bytes` for the request line and separators:
/// a head that does not fit is refused (431) here rather than handed to a
/// reader without a deadline.
const HEAD_SLACK: usize = 8 * 1024;
/// How long closing a connection may wait for the client (TLS close_notify).
const SHUTDOWN: Duration = Duration::from_secs(1);

/// The proxy listener's application: the fast path, with pingora's
/// transport (`P`: the gateway's `HttpProxy`) behind it for what it hands over.
pub struct GatewayApp<P> {
    proxy: Arc<P>,
    snapshot: SnapshotHandle,
    shield: Arc<Shield>,
    https: bool,
    /// `server:` settings, fixed at start like the rest of that section.
    enabled: bool,
    keepalive_requests: Option<u32>,
    send_timeout: Duration,
}

impl<P: HttpServerApp + Send + Sync + 'static> GatewayApp<P> {
    pub fn new(proxy: P, snapshot: SnapshotHandle, shield: Arc<Shield>, https: bool) -> Self {
        let (enabled, keepalive_requests, send_timeout) = {
            let snap = snapshot.load();
            let s = &snap.config.server;
            (s.fast_path, s.keepalive_requests, s.send_timeout)
        };
        GatewayApp {
            proxy: Arc::new(proxy),
            snapshot,
            shield,
            https,
            enabled,
            keepalive_requests,
            send_timeout,
        }
    }
}

/// One client connection's buffers and state.
struct Conn {
    buf: Vec<u8>,
    /// Bytes of `buf` read and not yet used.
    len: usize,
    /// The upstream request head.
    out: Vec<u8>,
    /// The client's response head (and the first body bytes).
    resp: Vec<u8>,
    ubuf: Vec<u8>,
    upstream: Option<upstream::Held>,
    /// Requests answered on this connection (for `server.keepalive_requests`).
    served: u32,
    /// The server is shutting down: this response is the connection's last.
    closing: bool,
    peer: Option<IpAddr>,
    /// The head being read must be whole by then (`server.header_timeout`).
    head: HeadDeadline,
    /// Largest head accepted (`limits.max_header_bytes` and the request line).
    max_head: usize,
    /// `server.header_timeout` and `server.min_body_rate`, for bodies.
    pace: (Duration, u64),
    /// The wait for the client's next request (`HOLD`).
    hold: deadline::Deadline,
    /// The waits for the upstream's answer (the pool's read timeout).
    up_wait: deadline::Deadline,
}

impl Conn {
    fn release_upstream(&mut self) {
        if let Some(h) = self.upstream.take() {
            h.release();
        }
    }

    /// Drops the first `n` bytes of `buf` (a request already used).
    fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        self.buf.copy_within(n..self.len, 0);
        self.len -= n;
        if self.buf.len() > self.max_head && self.len <= HEAD_BUF {
            // A body was read: the connection keeps the usual buffer.
            self.buf.truncate(HEAD_BUF);
            self.buf.shrink_to_fit();
        }
    }

    /// Reads until the first `need` bytes of the next request (its head and
    /// body) are in `buf`. `Err(true)`: the body came too slowly (answer
    /// 408); `Err(false)`: the client is gone.
    async fn read_body(&mut self, stream: &mut Stream, need: usize) -> Result<(), bool> {
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
        let start = Instant::now();
        let (grace, rate) = self.pace;
        while self.len < need {
            let free = &mut self.buf[self.len..need];
            let body = self.len as u64;
            match pingora_timeout::tokio_timeout(grace, stream.read(free)).await {
                Ok(Ok(n)) if n > 0 => self.len += n,
                Ok(_) => return Err(false),
                Err(_) => return Err(true),
            }
            if crate::limits::body_too_slow(body, start.elapsed(), grace, rate) {
                return Err(true);
            }
        }
        Ok(())
    }

    /// Makes room for more of a head that filled the buffer; `false` when
    /// the head is over `max_head`.
    fn grow(&mut self) -> bool {
        if self.buf.len() >= self.max_head {
            return false;
        }
        let to = (self.buf.len() * 2).min(self.max_head);
        self.buf.resize(to, 0);
        true
    }

    /// Reads more of the client's next request. `false`: closed, timed out,
    /// failed or shutting down.
    async fn read_more(&mut self, stream: &mut Stream, shutdown: &ShutdownWatch) -> bool {
        if let Some(left) = self
            .head
            .is_started()
            .then(|| self.head.remaining(Instant::now()))
            .flatten()
        {
            // Part of a head is here: the rest comes within its deadline
            // (a slowloris trickling header lines gets no more).
            let free = &mut self.buf[self.len..];
            if free.is_empty() || left.is_zero() {
                return false;
            }
            return match pingora_timeout::tokio_timeout(left, stream.read(free)).await {
                Ok(Ok(n)) if n > 0 => {
                    self.len += n;
                    true
                }
                _ => false,
            };
        }
        let free = &mut self.buf[self.len..];
        if free.is_empty() {
            return false;
        }
        // A busy client's next request comes within HOLD: one timer, no shutdown
        // watch (registering one per request costs more than the timer).
        let n = match self.hold.within(HOLD, stream.read(free)).await {
            Ok(r) => r,
            Err(_) => {
                // Idle: the upstream connection and the body buffer go.
                self.release_upstream();
                self.ubuf = Vec::new();
                let free = &mut self.buf[self.len..];
                match idle_read(stream, free, KEEPALIVE - HOLD, shutdown).await {
                    Some(r) => r,
                    None => return false,
                }
            }
        };
        match n {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.len += n;
                true
            }
        }
    }
}

/// A read that also ends on shutdown (`None`) or after `limit` (`None`).
async fn idle_read(
    stream: &mut Stream,
    buf: &mut [u8],
    limit: Duration,
    shutdown: &ShutdownWatch,
) -> Option<std::io::Result<usize>> {
    if *shutdown.borrow() {
        return None;
    }
    let mut watch = shutdown.clone();
    tokio::select! {
        r = pingora_timeout::tokio_timeout(limit, stream.read(buf)) => r.ok(),
        _ = watch.changed() => None,
    }
}

#[async_trait]
impl<P: HttpServerApp + Send + Sync + 'static> ServerApp for GatewayApp<P> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.proxy.process_new(stream, shutdown).await;
        }
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let tls = stream
            .get_ssl_digest()
            .map_or("", |t| crate::pipeline::tls_name(&t.version));
        let (header_timeout, max_head, min_body_rate) = {
            let snap = self.snapshot.load();
            let max = snap.config.limits.max_header_bytes;
            (
                snap.config.server.header_timeout,
                usize::try_from(max)
                    .unwrap_or(usize::MAX)
                    .saturating_add(HEAD_SLACK),
                snap.config.server.min_body_rate,
            )
        };
        let mut c = Conn {
            buf: vec![0; HEAD_BUF],
            len: 0,
            out: Vec::with_capacity(1024),
            resp: Vec::with_capacity(1024),
            ubuf: Vec::new(),
            upstream: None,
            served: 0,
            closing: false,
            peer,
            head: HeadDeadline::new(header_timeout),
            max_head: max_head.max(HEAD_BUF),
            pace: (header_timeout, min_body_rate),
            hold: deadline::Deadline::new(),
            up_wait: deadline::Deadline::new(),
        };
        loop {
            // No return on shutdown here: the last answer may have promised
            // keep-alive (the shutdown came while it was being served), and a
            // busy client's next request is then already on its way. It is read
            // (`read_more` waits up to HOLD) and answered with `Connection:
            // close`; an idle connection is closed by `idle_read`. Closing here
            // instead failed that next request during graceful upgrades.
            // Every HTTP/1 head is read here, with or without the fast path:
            // pingora's reader times each read, not the whole head.
            // With the fast path off, the first request's length as the one
            // parse of its head found it.
            let mut first = None;
            let decision = loop {
                if c.len > 0 {
                    let d = if self.enabled {
                        let snap = self.snapshot.load_full();
                        let env = Env {
                            snap: &snap,
                            shield: &self.shield,
                            https: self.https,
                            tls,
                        };
                        request::decide(&c.buf[..c.len], &env, c.peer, &mut c.out).await
                    } else {
                        match request::framed(&c.buf[..c.len]) {
                            request::Framed::Partial => Decision::Partial,
                            request::Framed::Whole(len) => {
                                first = Some(len);
                                Decision::Delegate
                            }
                        }
                    };
                    match d {
                        Decision::Partial if c.len == c.buf.len() && !c.grow() => {
                            self.refuse_head(&mut stream, &mut c.resp, 431).await;
                            return None;
                        }
                        // The clock is read only for heads that did not come
                        // whole (nearly every head arrives in one read).
                        Decision::Partial => c.head.start(Instant::now()),
                        d => break d,
                    }
                }
                if !c.read_more(&mut stream, shutdown).await {
                    if c.head.expired(Instant::now()) {
                        self.refuse_head(&mut stream, &mut c.resp, 408).await;
                    }
                    return None;
                }
            };
            c.head.reset();
            c.closing = *shutdown.borrow();
            let open = match decision {
                Decision::Forward(plan) => self.serve(&mut stream, &mut c, plan).await,
                Decision::Answer(local) => self.answer_local(&mut stream, &mut c, local).await,
                Decision::Hit(hit) => self.answer_hit(&mut stream, &mut c, hit).await,
                Decision::File(file) => self.answer_file(&mut stream, &mut c, file).await,
                Decision::Drop => return None,
                Decision::Partial | Decision::Delegate => {
                    stream = self.delegate(stream, &mut c, first, shutdown).await?;
                    continue;
                }
            };
            if !open {
                // As pingora ends a connection: over TLS a close_notify,
                // so a client can tell a close-delimited body was whole.
                let _ = pingora_timeout::tokio_timeout(SHUTDOWN, stream.shutdown()).await;
                return None;
            }
        }
    }

    async fn cleanup(&self) {
        self.proxy.cleanup().await
    }
}

impl<P: HttpServerApp + Send + Sync + 'static> GatewayApp<P> {
    /// Hands the buffered request (and the connection) to pingora-proxy for one
    /// request; the connection comes back when pingora keeps it alive.
    /// `first`: the first request's length, when the head was parsed for it
    /// already.
    async fn delegate(
        &self,
        mut stream: Stream,
        c: &mut Conn,
        first: Option<Option<usize>>,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if c.len > 0 {
            // pingora gets this request only: what the client pipelined
            // behind it stays here for this loop (pingora would read it
            // along and drop it with the session).
            let first = first
                .unwrap_or_else(|| request::first_request_len(&c.buf[..c.len]))
                .unwrap_or(c.len);
            stream = rewind::rewind(stream, &c.buf[..first])?;
            c.consume(first);
        }
        // pingora may take long (uploads, WebSockets): the upstream
        // connection serves other clients meanwhile.
        c.release_upstream();
        let mut session = ServerSession::new_http1(stream);
        session.set_keepalive(if *shutdown.borrow() {
            None
        } else {
            Some(KEEPALIVE.as_secs())
        });
        session.set_keepalive_reuses_remaining(
            self.keepalive_requests.map(|n| n.saturating_sub(c.served)),
        );
        c.served = c.served.saturating_add(1);
        let (stream, _) = self
            .proxy
            .process_new_http(session, shutdown)
            .await?
            .consume();
        Some(stream)
    }
}
