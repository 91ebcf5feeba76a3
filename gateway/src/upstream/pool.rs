//! One upstream pool as compiled into a snapshot.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use pingora::lb::discovery::Static;
use pingora::lb::selection::{Consistent, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::prelude::HttpPeer;
use pingora_core::upstreams::peer::Peer;

use crate::config::{Balance, UpstreamConfig};
use crate::metrics::PoolMetrics;

/// Runtime state of one server, shared by every request that picks it.
pub struct ServerState {
    pub addr: SocketAddr,
    pub label: String,
    /// Requests in flight (least-connections).
    pub inflight: AtomicUsize,
    consecutive_failures: AtomicU32,
    /// Mirror of the active health check, refreshed by the health checker, so the
    /// request path reads one atomic instead of pingora's readiness map.
    pub healthy: std::sync::atomic::AtomicBool,
    /// Milliseconds since the pool's epoch until which the server is ejected.
    ejected_until_ms: AtomicU64,
    /// Idle keep-alive connections of the fast path (lock-free; see `crate::fast`).
    pub idle: crossbeam_queue::ArrayQueue<(tokio::net::TcpStream, Instant)>,
}

/// Idle fast-path connections kept per server.
const IDLE_PER_SERVER: usize = 64;

enum Selector {
    RoundRobin(LoadBalancer<RoundRobin>),
    Hash(LoadBalancer<Consistent>),
}

/// The servers already tried by one request (pools are small; 64 is plenty).
#[derive(Default, Clone, Copy, Debug)]
pub struct Tried(u64);

impl Tried {
    pub fn add(&mut self, i: usize) {
        self.0 |= 1u64 << (i % 64);
    }
    pub fn contains(&self, i: usize) -> bool {
        self.0 & (1u64 << (i % 64)) != 0
    }
}

/// Upstream TLS material, built once per pool.
struct PeerTls {
    sni: String,
    verify: bool,
    ca: Option<Arc<pingora_core::protocols::tls::CaType>>,
    client: Option<Arc<pingora_core::utils::tls::CertKey>>,
}

impl PeerTls {
    fn new(t: &crate::config::UpstreamTls) -> Self {
        use pingora_core::utils::tls::{parse_x509, CertKey, WrappedX509};
        // The DER was parsed successfully during validation.
        let ca = t.ca.as_ref().map(|list| {
            let certs: Vec<WrappedX509> = list
                .iter()
                .map(|der| WrappedX509::new(der.clone(), parse_x509))
                .collect();
            Arc::from(certs.into_boxed_slice())
        });
        let client = t
            .client
            .as_ref()
            .map(|(chain, key)| Arc::new(CertKey::new(chain.clone(), key.clone())));
        PeerTls {
            sni: t.sni.clone(),
            verify: t.verify,
            ca,
            client,
        }
    }
}

pub struct Pool {
    pub name: Arc<str>,
    tls: Option<PeerTls>,
    pub config: UpstreamConfig,
    pub servers: Vec<ServerState>,
    selector: Selector,
    least_conn: bool,
    epoch: Instant,
    pub metrics: PoolMetrics,
    /// `host_header` as a ready value (validated with the config).
    pub host_header: Option<http::HeaderValue>,
}

impl Pool {
    pub fn new(config: UpstreamConfig) -> Self {
        let backends: BTreeSet<Backend> = config
            .servers
            .iter()
            .map(|s| Backend {
                addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(s.addr),
                weight: s.weight as usize,
                ext: Default::default(),
            })
            .collect();
        let make = || Backends::new(Static::new(backends.clone()));
        let selector = match &config.balance {
            Balance::ConsistentHash(_) => {
                Selector::Hash(build_lb(LoadBalancer::from_backends(make())))
            }
            _ => Selector::RoundRobin(build_lb(LoadBalancer::from_backends(make()))),
        };
        let servers = config
            .servers
            .iter()
            .map(|s| ServerState {
                addr: s.addr,
                label: s.addr.to_string(),
                inflight: AtomicUsize::new(0),
                consecutive_failures: AtomicU32::new(0),
                healthy: std::sync::atomic::AtomicBool::new(true),
                ejected_until_ms: AtomicU64::new(0),
                idle: crossbeam_queue::ArrayQueue::new(IDLE_PER_SERVER),
            })
            .collect();
        Pool {
            name: config.name.as_str().into(),
            tls: config.tls.as_ref().map(PeerTls::new),
            least_conn: matches!(config.balance, Balance::LeastConn),
            metrics: PoolMetrics::new(&config.name),
            host_header: config
                .host_header
                .as_deref()
                .and_then(|h| http::HeaderValue::from_str(h).ok()),
            config,
            servers,
            selector,
            epoch: Instant::now(),
        }
    }

    pub fn backends(&self) -> &Backends {
        match &self.selector {
            Selector::RoundRobin(lb) => lb.backends(),
            Selector::Hash(lb) => lb.backends(),
        }
    }

    pub(crate) fn set_health_check(
        &mut self,
        hc: Box<dyn pingora::lb::health_check::HealthCheck + Send + Sync>,
    ) {
        match &mut self.selector {
            Selector::RoundRobin(lb) => lb.set_health_check(hc),
            Selector::Hash(lb) => lb.set_health_check(hc),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn index_of(&self, addr: &pingora_core::protocols::l4::socket::SocketAddr) -> Option<usize> {
        let a = addr.as_inet()?;
        self.servers.iter().position(|s| s.addr == *a)
    }

    fn ejected(&self, i: usize, now: u64) -> bool {
        self.servers[i].ejected_until_ms.load(Relaxed) > now
    }

    /// Is the server healthy (active checks) and not ejected (passive)?
    pub fn available(&self, i: usize) -> bool {
        let b = self.backend_of(i);
        self.backends().ready(&b) && !self.ejected(i, self.now_ms())
    }

    /// Copies pingora's health verdicts into the per-server flags.
    pub fn refresh_health_flags(&self) {
        for (i, s) in self.servers.iter().enumerate() {
            let ready = self.backends().ready(&self.backend_of(i));
            if s.healthy.load(Relaxed) != ready {
                s.healthy.store(ready, Relaxed);
            }
        }
    }

    fn backend_of(&self, i: usize) -> Backend {
        Backend {
            addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(self.servers[i].addr),
            weight: self.config.servers[i].weight as usize,
            ext: Default::default(),
        }
    }

    /// Picks a server for an attempt. Prefers healthy, non-ejected servers not yet
    /// tried by this request; falls back to a tried one (a retry on a one-server
    /// pool) and then ignores passive ejection rather than failing outright.
    pub fn select(&self, key: &[u8], tried: Tried) -> Option<usize> {
        let now = self.now_ms();
        if self.servers.len() == 1 {
            // One server: no balancing to do; only health matters.
            let s = &self.servers[0];
            return s.healthy.load(Relaxed).then_some(0);
        }
        for pass in 0..3 {
            let ok = |i: usize, healthy: bool| {
                healthy && (pass >= 1 || !tried.contains(i)) && (pass >= 2 || !self.ejected(i, now))
            };
            let found = if self.least_conn {
                self.least_loaded(&ok)
            } else {
                let accept = |b: &Backend, healthy: bool| {
                    self.index_of(&b.addr).is_some_and(|i| ok(i, healthy))
                };
                let n = self.servers.len() * 2 + 1;
                let pick = match &self.selector {
                    Selector::RoundRobin(lb) => lb.select_with(key, n, accept),
                    Selector::Hash(lb) => lb.select_with(key, n, accept),
                };
                pick.and_then(|b| self.index_of(&b.addr))
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }

    fn least_loaded(&self, ok: &dyn Fn(usize, bool) -> bool) -> Option<usize> {
        let backends = self.backends();
        let mut best: Option<(usize, f64)> = None;
        for (i, s) in self.servers.iter().enumerate() {
            if !ok(i, backends.ready(&self.backend_of(i))) {
                continue;
            }
            // Load relative to weight; ties go to the earlier server.
            let load = s.inflight.load(Relaxed) as f64 / self.config.servers[i].weight as f64;
            if best.is_none_or(|(_, l)| load < l) {
                best = Some((i, load));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Whether the pool talks TLS to its servers.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A peer for server `i` with the pool's timeouts.
    pub fn peer(&self, i: usize) -> Box<HttpPeer> {
        let t = &self.config.timeouts;
        let mut peer = match &self.tls {
            None => HttpPeer::new(self.servers[i].addr, false, String::new()),
            Some(tls) => {
                let mut p = HttpPeer::new(self.servers[i].addr, true, tls.sni.clone());
                p.options.verify_cert = tls.verify;
                p.options.verify_hostname = tls.verify;
                p.options.ca = tls.ca.clone();
                p.client_cert_key = tls.client.clone();
                p
            }
        };
        peer.options.connection_timeout = Some(t.connect);
        peer.options.read_timeout = Some(t.read);
        peer.options.write_timeout = t.write;
        peer.options.idle_timeout = Some(t.idle);
        debug_assert!(peer.address().as_inet().is_some());
        Box::new(peer)
    }

    /// An attempt succeeded: clear the failure streak.
    pub fn report_success(&self, i: usize) {
        if let Some(s) = self.servers.get(i) {
            if s.consecutive_failures.load(Relaxed) != 0 {
                s.consecutive_failures.store(0, Relaxed);
            }
        }
    }

    /// An attempt failed (connect error, timeout, broken response). After
    /// `passive.max_fails` in a row the server is ejected for `passive.cooldown`.
    pub fn report_failure(&self, i: usize) {
        let p = &self.config.passive;
        let Some(s) = self.servers.get(i) else { return };
        let n = s.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if p.max_fails > 0 && n >= p.max_fails {
            let until = self.now_ms() + p.cooldown.as_millis() as u64;
            s.ejected_until_ms.store(until, Relaxed);
            s.consecutive_failures.store(0, Relaxed);
            tracing::warn!(
                upstream = %self.name,
                server = %s.label,
                cooldown = ?p.cooldown,
                "server ejected after {n} consecutive failures"
            );
        }
    }

    pub fn health_interval(&self) -> Option<Duration> {
        self.config.health_check.as_ref().map(|h| h.interval)
    }
}

fn build_lb<S>(lb: LoadBalancer<S>) -> LoadBalancer<S>
where
    S: pingora::lb::selection::BackendSelection + 'static,
    S::Iter: pingora::lb::selection::BackendIter,
{
    // Static discovery resolves immediately; this fills the selector.
    if let Some(Err(e)) = lb.update().now_or_never() {
        tracing::error!(error = %e, "building the upstream selector failed");
    }
    lb
}
