//! Per-request state carried through Pingora's phases.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;

use crate::auth::{Identity, Reject};
use crate::client_ip;
use crate::config::{RatePolicy, SecurityHeaders, TrustedProxies};
use crate::fields::Fields;
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

impl LocalReply {
    /// The name the access log writes.
    pub fn as_str(self) -> &'static str {
        match self {
            LocalReply::UnknownHost => "unknown_host",
            LocalReply::NoRoute => "no_route",
            LocalReply::MethodNotAllowed => "method_not_allowed",
            LocalReply::BadRequest => "bad_request",
            LocalReply::HeadersTooLarge => "headers_too_large",
            LocalReply::BodyTooLarge => "body_too_large",
            LocalReply::Unauthorized => "unauthorized",
            LocalReply::Forbidden => "forbidden",
            LocalReply::Preflight => "cors_preflight",
            LocalReply::Redirect => "https_redirect",
            LocalReply::Acme => "acme_challenge",
            LocalReply::RateLimited => "rate_limited",
            LocalReply::Banned => "banned",
            LocalReply::Dropped => "banned_drop",
            LocalReply::BadForwarding => "bad_forwarding",
            LocalReply::RouteAction => "route_action",
            LocalReply::TooSlow => "too_slow",
        }
    }
}

/// Per-request state, in the stages a request goes through: the
/// configuration it is served by (`snapshot`, from its start), who sent it
/// ([`Client`]) and where it goes ([`Routed`]), both set by
/// `pipeline::route`, what the policies decided (`identity`, `rate`,
/// `local`), and the upstream [`Attempts`]. Pingora's phases share one value
/// of this type, so a stage that comes later is an `Option` there, one per
/// stage; the pipeline's own functions take the stages they need.
pub struct RequestCtx {
    pub start: Instant,
    /// Loaded once when the request begins; the whole request uses this
    /// snapshot, even if a reload swaps another in meanwhile.
    pub snapshot: Arc<Snapshot>,
    /// The route found for the request.
    pub routed: Option<Routed>,
    pub client: Client,
    pub request_id: Option<HeaderValue>,
    pub attempts: Attempts,
    /// What only the access log needs of the request, copied once when it is on.
    pub log: Option<Box<LogFields>>,
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

/// Where a request goes: its route, and the path it was routed on when the
/// client's differs from it (`routing::normalize_path`), which is what the
/// upstream gets.
pub struct Routed {
    pub route: Arc<Route>,
    pub normalized_path: Option<String>,
}

/// Who sent the request: the TCP peer and the client it speaks for
/// (`client_ip::resolve`). All empty when the peer is unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Client {
    pub peer: Option<IpAddr>,
    /// The peer is a configured trusted proxy.
    pub peer_trusted: bool,
    /// Who the request is charged to; `None` when the peer is unknown or a
    /// trusted proxy sent an unreadable chain.
    pub ip: Option<IpAddr>,
    /// `ip` is a trusted proxy's own address: never limited or jailed.
    pub is_proxy: bool,
}

impl Client {
    /// The client whose limits, jails and bans apply: `None` for a trusted
    /// proxy's own requests and for unknown clients.
    pub fn chargeable(&self) -> Option<IpAddr> {
        self.ip.filter(|_| !self.is_proxy)
    }
}

/// The attempts at the route's upstream servers (retries, in-flight counts,
/// failure accounting, timings), the same for both transports.
#[derive(Debug, Default)]
pub struct Attempts {
    /// The server of the current attempt, counted in flight until released.
    pub current: Option<usize>,
    /// The server of the last attempt, kept for the access log.
    pub last: Option<usize>,
    pub tried: Tried,
    pub count: u32,
    /// When the current attempt picked its server (upstream response time).
    pub started: Option<Instant>,
    /// The last attempt's time to the response head, for the access log.
    pub upstream_time: Option<std::time::Duration>,
    /// The upstream's response head arrived: no retry after that.
    pub response_started: bool,
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
    /// A request served by `snapshot`.
    pub fn new(snapshot: Arc<Snapshot>) -> Self {
        RequestCtx {
            start: Instant::now(),
            snapshot,
            routed: None,
            client: Client::default(),
            request_id: None,
            attempts: Attempts::default(),
            log: None,
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

    /// The request's route, once `pipeline::route` found it.
    pub fn route(&self) -> Option<&Arc<Route>> {
        self.routed.as_ref().map(|r| &r.route)
    }

    /// The path the upstream gets when it differs from the client's.
    pub fn normalized_path(&self) -> Option<&str> {
        self.routed.as_ref()?.normalized_path.as_deref()
    }

    /// Records the peer and resolves the client from the request's
    /// forwarding fields (the same for every transport); `Err` when the
    /// forwarding chain cannot be read (answer 400, charge nobody).
    pub fn identify(
        &mut self,
        peer: IpAddr,
        trusted: &TrustedProxies,
        fields: &impl Fields,
    ) -> Result<(), client_ip::BadChain> {
        let peer = client_ip::canonical(peer);
        self.client.peer = Some(peer);
        self.client.peer_trusted = trusted.is_trusted(peer);
        // Only a trusted proxy's forwarding fields count: from anyone else
        // they are not even looked up.
        let (xff, cdn) = if self.client.peer_trusted {
            let cdn = fields
                .get("cf-connecting-ip")
                .or_else(|| fields.get("true-client-ip"));
            (Some(fields.all("x-forwarded-for")), cdn)
        } else {
            (None, None)
        };
        let c = client_ip::resolve(peer, trusted, xff.into_iter().flatten(), cdn)?;
        self.client.ip = Some(c.ip);
        self.client.is_proxy = c.is_proxy;
        Ok(())
    }

    /// Ends the in-flight count of the current attempt (least-connections).
    pub fn release_server(&mut self) {
        if let (Some(i), Some(route)) = (self.attempts.current.take(), self.route()) {
            if let Some(s) = route.pool().and_then(|p| p.servers.get(i)) {
                s.inflight
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}
