//! Wraps the proxy application to see whole client connections.
//!
//! Pingora hands a kept-alive connection back to its service loop after each
//! request; this wrapper keeps that loop inside itself so it knows when a
//! connection opens and closes: for `gateway_open_connections` and for
//! `limits.max_connections_per_ip` (counted on the TCP peer address — IPv6 by its
//! `limits.ipv6_prefix` group — since no request has been read yet; trusted
//! proxies are not counted, their clients are limited per request).

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

use std::net::SocketAddr;

use pingora::listeners::ConnectionFilter;

use crate::config::BanAction;
use crate::metrics::metrics;
use crate::sharded::ShardedMap;
use crate::shield::Shield;
use crate::snapshot::SnapshotHandle;

const SHARDS: usize = 16;

/// Open connections per client IP, sharded so accepts on different workers rarely
/// meet on one lock. An IP holding no slot has no entry.
pub struct PerIp {
    counts: ShardedMap<IpAddr, u32>,
}

impl Default for PerIp {
    fn default() -> Self {
        PerIp {
            counts: ShardedMap::new(SHARDS, None),
        }
    }
}

impl PerIp {
    /// Takes a slot for `ip` unless it already holds `max`.
    pub fn acquire(&self, ip: IpAddr, max: u32) -> bool {
        self.counts.update(ip, |n| {
            let held = n.unwrap_or(0);
            if held >= max {
                return false;
            }
            *n = Some(held + 1);
            true
        })
    }

    pub fn release(&self, ip: IpAddr) {
        self.counts.update(ip, |n| {
            *n = n.map(|n| n.saturating_sub(1)).filter(|&n| n > 0);
        });
    }
}

pub struct Counted<A> {
    inner: Arc<A>,
    snapshot: SnapshotHandle,
    per_ip: Arc<PerIp>,
    /// `gateway_open_connections{listener}` of this listener.
    open: prometheus::IntGauge,
}

impl<A> Counted<A> {
    /// `listener`: `http` or `https`, the label of its open connections.
    pub fn new(inner: A, snapshot: SnapshotHandle, listener: &str) -> Self {
        Counted {
            inner: Arc::new(inner),
            snapshot,
            per_ip: Arc::new(PerIp::default()),
            open: metrics().open_connections.with_label_values(&[listener]),
        }
    }
}

/// Releases the gauge and the per-IP slot even if the connection task is cancelled.
struct OpenGuard {
    open: prometheus::IntGauge,
    per_ip: Option<(Arc<PerIp>, IpAddr)>,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.open.dec();
        if let Some((p, ip)) = self.per_ip.take() {
            p.release(ip);
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Counted<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let snap = self.snapshot.load_full();
        let (max, v6) = {
            let l = &snap.config.limits;
            (l.max_connections_per_ip, l.ipv6_prefix)
        };
        let mut slot = None;
        if let Some(max) = max {
            let peer = stream
                .get_socket_digest()
                .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
                .map(crate::client_ip::canonical);
            // A trusted proxy carries many clients on its connections: capping
            // its address would let one client behind it lock out the rest.
            // Its clients' own limits apply per request (rate limits, bans).
            let counted = peer.filter(|ip| !snap.trusted_proxies.is_trusted(*ip));
            // Counted per client group: an IPv6 client owns a whole /64 (by default).
            if let Some(ip) = counted.map(|ip| crate::client_ip::group(ip, v6).network()) {
                if !self.per_ip.acquire(ip, max) {
                    tracing::debug!(%ip, max, "connection refused: too many from this IP");
                    return None;
                }
                slot = Some((self.per_ip.clone(), ip));
            }
        }
        drop(snap);
        self.open.inc();
        let _open = OpenGuard {
            open: self.open.clone(),
            per_ip: slot,
        };
        let mut next = self.inner.process_new(stream, shutdown).await;
        while let Some(stream) = next {
            next = self.inner.process_new(stream, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// Refuses connections from clients banned with `action: drop` right after
/// accept, before any TLS handshake or byte of HTTP (pingora's connection filter).
/// Trusted proxies are never refused: the banned client is behind them, and gets
/// a 403 per request instead.
pub struct BanFilter {
    snapshot: SnapshotHandle,
    shield: Arc<Shield>,
}

impl BanFilter {
    pub fn new(snapshot: SnapshotHandle, shield: Arc<Shield>) -> Self {
        BanFilter { snapshot, shield }
    }
}

impl std::fmt::Debug for BanFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BanFilter")
    }
}

#[async_trait]
impl ConnectionFilter for BanFilter {
    async fn should_accept(&self, addr: Option<&SocketAddr>) -> bool {
        // Unix sockets have no address to ban.
        let Some(addr) = addr else { return true };
        if self.shield.bans.table.is_empty() {
            return true;
        }
        let snap = self.snapshot.load();
        let ip = addr.ip().to_canonical();
        if snap.trusted_proxies.is_trusted(ip) {
            return true;
        }
        match self.shield.bans.check(ip, snap.config.limits.ipv6_prefix) {
            Some(ban) if ban.action == BanAction::Drop => {
                tracing::debug!(%ip, jail = %ban.jail, "connection dropped: banned");
                false
            }
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_slots() {
        let p = PerIp::default();
        let ip: IpAddr = [192, 0, 2, 1].into();
        assert!(p.acquire(ip, 2));
        assert!(p.acquire(ip, 2));
        assert!(!p.acquire(ip, 2));
        assert!(p.acquire([192, 0, 2, 2].into(), 2));
        p.release(ip);
        assert!(p.acquire(ip, 2));
    }
}
