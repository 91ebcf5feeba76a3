//! The service manager (systemd `Type=notify`): `READY=1` once every listener
//! of this process is bound, `STATUS=` with the configuration generation,
//! `RELOADING=1` … `READY=1` around a reload, `STOPPING=1` when shutdown
//! starts, and the watchdog ping.
//!
//! Every call is a no-op without `NOTIFY_SOCKET` (not under systemd), so the
//! same binary runs from a shell, a container or a unit.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use sd_notify::NotifyState;

use crate::snapshot::SnapshotHandle;

/// Set once `READY=1` was sent: a reload before that must not announce
/// readiness on the listeners' behalf.
static READY: AtomicBool = AtomicBool::new(false);

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// Before a reload: `RELOADING=1` with the monotonic time systemd ≥ 253 asks for.
pub fn reloading() {
    if !READY.load(Ordering::Acquire) {
        return;
    }
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// After a reload, applied or refused: ready again, with what is serving.
pub fn reloaded(status: &str) {
    if !READY.load(Ordering::Acquire) {
        return;
    }
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Says `STOPPING=1` the moment `SIGTERM` or `SIGINT` arrives, from a thread
/// of its own: a task on a pingora runtime may never run again once the
/// shutdown starts (the runtimes are dropped after the grace period). Not on
/// a handover (`SIGQUIT`, `galion-gateway upgrade`): the successor is the
/// service then, and `STOPPING=1` would stop the unit under it.
pub fn watch_stop() -> std::io::Result<()> {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return Ok(());
    }
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("service-manager-stop".into())
        .spawn(move || {
            if signals.forever().next().is_some() && !crate::upgrade::handing_over() {
                send(&[
                    NotifyState::Stopping,
                    NotifyState::Status("draining connections"),
                ]);
            }
        })?;
    Ok(())
}

/// The status line for a generation that is serving.
pub fn serving(generation: u64) -> String {
    format!("serving configuration generation {generation}")
}

/// Announces readiness once the listeners are bound and pings the watchdog
/// (`STOPPING=1` comes from [`watch_stop`]).
pub struct ManagerService {
    listeners: Vec<SocketAddr>,
    snapshot: SnapshotHandle,
}

impl ManagerService {
    pub fn new(listeners: Vec<SocketAddr>, snapshot: SnapshotHandle) -> Self {
        ManagerService {
            listeners,
            snapshot,
        }
    }
}

#[async_trait]
impl BackgroundService for ManagerService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return;
        }
        // pingora binds each service's listeners in that service's runtime,
        // with no hook once all are up: the kernel's socket table is asked.
        let started = std::time::Instant::now();
        let mut warned = false;
        loop {
            match listening(&self.listeners) {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    // No procfs: say ready rather than never.
                    tracing::warn!(error = %e, "cannot read the socket table; announcing readiness now");
                    break;
                }
            }
            if !warned && started.elapsed() > Duration::from_secs(10) {
                tracing::warn!(listeners = ?self.listeners, "listeners not bound after 10 s");
                warned = true;
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        let status = serving(self.snapshot.load().generation);
        send(&[
            NotifyState::Ready,
            NotifyState::MainPid(std::process::id()),
            NotifyState::Status(&status),
        ]);
        READY.store(true, Ordering::Release);
        tracing::info!("service manager notified: ready");

        // The ping comes from a runtime that also has to get through a
        // snapshot load: a wedged process stops pinging and systemd restarts it.
        let period = sd_notify::watchdog_enabled().map(|d| d / 2);
        loop {
            let tick = async {
                match period {
                    Some(p) => tokio::time::sleep(p).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick => {
                    let _ = self.snapshot.load().generation;
                    send(&[NotifyState::Watchdog]);
                }
            }
        }
        if crate::upgrade::handing_over() {
            // The successor is the service now (it sent MAINPID=).
            send(&[NotifyState::Status(
                "handed the listeners to a new process; draining",
            )]);
        }
    }
}

/// Whether this process holds a listening TCP socket on every address
/// (port 0: any port on that IP).
fn listening(addrs: &[SocketAddr]) -> std::io::Result<bool> {
    let mut ours = HashSet::new();
    for fd in std::fs::read_dir("/proc/self/fd")? {
        let Ok(fd) = fd else { continue };
        if let Ok(target) = std::fs::read_link(fd.path()) {
            if let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
            {
                ours.insert(inode);
            }
        }
    }
    let mut bound = Vec::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        // A kernel without IPv6 has no tcp6 table.
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        bound.extend(
            listening_sockets(&text)
                .filter(|(_, inode)| ours.contains(inode))
                .map(|(addr, _)| addr),
        );
    }
    Ok(addrs.iter().all(|want| {
        bound.iter().any(|have| {
            let ip = have.ip() == want.ip()
                || (have.ip().is_unspecified() && want.ip().is_unspecified());
            ip && (want.port() == 0 || have.port() == want.port())
        })
    }))
}

/// The listening sockets of a `/proc/net/tcp{,6}` table: (local address, inode).
fn listening_sockets(table: &str) -> impl Iterator<Item = (SocketAddr, u64)> + '_ {
    table.lines().skip(1).filter_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        if cols.len() < 10 || cols[3] != "0A" {
            return None;
        }
        let (ip, port) = cols[1].split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok()?;
        let ip = parse_ip(ip)?;
        Some((SocketAddr::new(ip, port), cols[9].parse().ok()?))
    })
}

/// The kernel prints each 32-bit word of the address as a native-endian
/// integer in hex.
fn parse_ip(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_listening_sockets_from_the_kernel_table() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 4243 1\n";
        let got: Vec<_> = listening_sockets(v4).collect();
        if cfg!(target_endian = "little") {
            assert_eq!(got, vec![("127.0.0.1:8080".parse().unwrap(), 4242)]);
        }
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000000000000000000001000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1\n";
        let got: Vec<_> = listening_sockets(v6).collect();
        if cfg!(target_endian = "little") {
            assert_eq!(got, vec![("[::1]:443".parse().unwrap(), 77)]);
        }
        assert_eq!(listening_sockets("header\ngarbage line\n").count(), 0);
    }

    #[test]
    fn a_bound_listener_of_this_process_is_seen_and_a_closed_one_is_not() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        assert!(listening(&[addr]).unwrap());
        assert!(listening(&["127.0.0.1:0".parse().unwrap()]).unwrap());
        drop(l);
        assert!(!listening(&[addr]).unwrap());
    }
}
