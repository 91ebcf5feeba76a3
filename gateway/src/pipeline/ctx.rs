//! Per-request state carried through Pingora's phases.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;

use crate::auth::{Identity, Reject};
use crate::client_ip;
use crate::config::{RatePolicy, SecurityHeaders, TrustedProxies};
use crate::limits::Outcome;
use crate::routing::Route;
use crate::snapshot::Snapshot;
use crate::upstream::Tried;

/// Why the gateway answered by itself (for the access log and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalReply {
    UnknownHost,
    NoRoute,
    MethodNotAllowed,
    BadRequest,
    HeadersTooLarge,
    BodyTooLarge,
    Unauthorized,
    Forbidden,
    Preflight,
    Redirect,
    Acme,
    /// Refused by a rate limit (429).
    RateLimited,
    /// A trusted proxy sent a forwarding chain that cannot be read (400,
    /// charged to nobody).
    BadForwarding,
    /// The request head or body came too slowly (408).
    TooSlow,
    /// The route's own answer (`deny`, `respond`, `redirect`).
    RouteAction,
    /// The client is banned (403).
    Banned,
    /// The client is banned with `action: drop`: the connection is closed unanswered.
    Dropped,
}

pub struct RequestCtx {
    pub start: Instant,
    /// Loaded once in `request_filter`; the whole request uses this snapshot.
    pub snapshot: Option<Arc<Snapshot>>,
    pub route: Option<Arc<Route>>,
    /// The path routed on, when the client's differs from it (`routing::normalize_path`);
    /// it is what the upstream gets.
    pub normalized_path: Option<String>,
    /// Who the request is charged to (`client_ip::resolve`); `None` when the
    /// peer is unknown or a trusted proxy sent an unreadable chain.
    pub client_ip: Option<IpAddr>,
    /// `client_ip` is a trusted proxy's own address: never limited or jailed.
    pub client_is_proxy: bool,
    pub peer_ip: Option<IpAddr>,
    pub peer_trusted: bool,
    pub request_id: Option<HeaderValue>,
    /// Index of the server of the current attempt in the route's pool.
    pub server: Option<usize>,
    /// The server of the last attempt, kept for the access log.
    pub last: Option<usize>,
    pub tried: Tried,
    pub attempts: u32,
    /// When the current attempt picked its server (upstream response time).
    pub attempt_start: Option<Instant>,
    /// The last attempt's time to the response head, for the access log.
    pub upstream_time: Option<std::time::Duration>,
    /// What only the access log needs of the request, copied once when it is on.
    pub log: Option<Box<LogFields>>,
    /// Set when the upstream's response header arrived: no retry after that.
    pub response_started: bool,
    pub local: Option<LocalReply>,
    /// The verified caller, when the route is not public.
    pub identity: Option<Arc<Identity>>,
    pub auth_reject: Option<Reject>,
    pub security: Option<Arc<SecurityHeaders>>,
    /// Request body bytes seen so far (for `max_body`).
    pub body_bytes: u64,
    /// The rate-limit decision, for the response's `RateLimit` fields.
    pub rate: Option<(Arc<RatePolicy>, Outcome)>,
    /// `X-Cache-Status` on cached routes (also logged and counted).
    pub cache_status: Option<&'static str>,
    /// Brotli done here rather than by pingora's module, whose brotli stream is
    /// never terminated (clients see a truncated body).
    pub brotli: Option<Box<brotli::CompressorWriter<Vec<u8>>>>,
}

/// Request facts for the access log (nginx's combined format and more),
/// taken from the transport-neutral request view.
#[derive(Debug, Default)]
pub struct LogFields {
    pub protocol: &'static str,
    /// The query string, with the configured parameters' values redacted.
    pub query: String,
    pub user_agent: String,
    pub referer: String,
    /// `TLSv1.3`, `TLSv1.2`, or empty on plain HTTP.
    pub tls: &'static str,
}

impl RequestCtx {
    pub fn new() -> Self {
        RequestCtx {
            start: Instant::now(),
            snapshot: None,
            route: None,
            normalized_path: None,
            client_ip: None,
            client_is_proxy: false,
            peer_ip: None,
            peer_trusted: false,
            request_id: None,
            server: None,
            last: None,
            tried: Tried::default(),
            attempts: 0,
            attempt_start: None,
            upstream_time: None,
            log: None,
            response_started: false,
            local: None,
            identity: None,
            auth_reject: None,
            security: None,
            body_bytes: 0,
            rate: None,
            cache_status: None,
            brotli: None,
        }
    }

    /// Records the peer and resolves the client (the same for every
    /// transport); `Err` when the forwarding chain cannot be read (answer 400,
    /// charge nobody).
    pub fn identify<'a>(
        &mut self,
        peer: IpAddr,
        trusted: &TrustedProxies,
        xff: impl DoubleEndedIterator<Item = &'a [u8]>,
        cdn: Option<&[u8]>,
    ) -> Result<(), client_ip::BadChain> {
        let peer = client_ip::canonical(peer);
        self.peer_ip = Some(peer);
        self.peer_trusted = trusted.is_trusted(peer);
        let c = client_ip::resolve(peer, trusted, xff, cdn)?;
        self.client_ip = Some(c.ip);
        self.client_is_proxy = c.is_proxy;
        Ok(())
    }

    /// The client whose limits, jails and bans apply: `None` for a trusted
    /// proxy's own requests and for unknown clients.
    pub fn chargeable_ip(&self) -> Option<IpAddr> {
        self.client_ip.filter(|_| !self.client_is_proxy)
    }

    pub fn last_server(&self) -> Option<usize> {
        self.last
    }

    /// Ends the in-flight count of the current attempt (least-connections).
    pub fn release_server(&mut self) {
        if let (Some(i), Some(route)) = (self.server.take(), self.route.as_ref()) {
            if let Some(s) = route.pool().and_then(|p| p.servers.get(i)) {
                s.inflight
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}
