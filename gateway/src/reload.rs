//! Hot reload: on file change (debounced, directory watched so editors that save by
//! rename are seen), on SIGHUP and on `POST /admin/reload`.
//!
//! parse → validate → build snapshot → swap. A refused file is logged with its
//! location and counted; the running snapshot stays. Requests in flight keep the
//! snapshot they loaded.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::{self, ConfigErrors, Listen, ServerSettings};
use crate::metrics::metrics;
use crate::signals::EarlySignals;
use crate::snapshot::{Snapshot, SnapshotHandle};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Unchanged,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Unchanged => "unchanged",
        }
    }
}

pub struct Reloader {
    path: PathBuf,
    snapshot: SnapshotHandle,
    /// Listener addresses are bound at start; a change needs a restart or upgrade.
    listen_at_start: Listen,
    /// Threads, buffers and the like are fixed at start too.
    server_at_start: ServerSettings,
    // Serialises reloads from the watcher, SIGHUP and the admin API.
    lock: Mutex<()>,
}

pub fn mark_success() {
    let m = metrics();
    m.config_reloads.with_label_values(&["success"]).inc();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    m.config_last_success.set(now);
}

impl Reloader {
    pub fn new(path: PathBuf, snapshot: SnapshotHandle) -> Self {
        let listen_at_start = snapshot.load().config.listen.clone();
        let server_at_start = snapshot.load().config.server.clone();
        Reloader {
            path,
            snapshot,
            listen_at_start,
            server_at_start,
            lock: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `server:` as this process started with it (listeners, upgrade socket).
    pub fn server_at_start(&self) -> &ServerSettings {
        &self.server_at_start
    }

    /// Reloads unconditionally (SIGHUP, admin API).
    pub fn reload(&self, reason: &str) -> Result<Outcome, ConfigErrors> {
        self.apply(reason, true)
    }

    /// Applies the file if it is no longer what is running. The file is read at
    /// start, before the watch exists: an edit made in between (a deploy script
    /// writing right after starting the gateway) raises no event, and would wait
    /// for the next edit without this check once the watch is in place.
    pub fn catch_up(&self) -> Result<Outcome, ConfigErrors> {
        self.apply("file changed during start", false)
    }

    fn apply(&self, reason: &str, force: bool) -> Result<Outcome, ConfigErrors> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.snapshot.load_full();
        let loaded = match config::load_file(&self.path) {
            Ok(l) => l,
            Err(e) => {
                metrics().config_reloads.with_label_values(&["error"]).inc();
                tracing::error!(
                    reason,
                    "configuration refused, the running configuration stays:\n{e}"
                );
                // systemd sees the attempt and that the old generation serves on.
                crate::systemd::reloading();
                crate::systemd::reloaded(&format!(
                    "configuration refused; {}",
                    crate::systemd::serving(current.generation)
                ));
                return Err(e);
            }
        };
        if !force
            && loaded.config.content_hash == current.config.content_hash
            && loaded.config.tls.fingerprint == current.config.tls.fingerprint
        {
            return Ok(Outcome::Unchanged);
        }
        crate::systemd::reloading();
        for w in &loaded.warnings {
            tracing::warn!(
                "{}:{}: {}: {}",
                self.path.display(),
                w.line.unwrap_or(0),
                w.path,
                w.message
            );
        }
        // Bound or sized at start: reported, never silently ignored.
        let report =
            |section: &str, running: &dyn std::fmt::Debug, configured: &dyn std::fmt::Debug| {
                tracing::warn!(
                    section,
                    ?running,
                    ?configured,
                    "this section changed: it takes effect only after a restart or a graceful \
                 upgrade (-u); the other changes are applied now"
                );
            };
        if loaded.config.listen != self.listen_at_start {
            report("listen", &self.listen_at_start, &loaded.config.listen);
        }
        if loaded.config.server != self.server_at_start {
            report("server", &self.server_at_start, &loaded.config.server);
        }
        // Certificates first: by the time routes change, handshakes use the new ones.
        crate::tls::apply(&loaded.config.tls);
        let next = Snapshot::build(loaded.config, Some(&current));
        for e in crate::routing::exposures(&next.router) {
            tracing::warn!("{}: {e}", self.path.display());
        }
        let generation = next.generation;
        let gone = removed_series(&current.config, &next.config);
        self.snapshot.store(Arc::new(next));
        crate::metrics::forget(&gone);
        mark_success();
        metrics().config_generation.set(generation as i64);
        crate::systemd::reloaded(&crate::systemd::serving(generation));
        tracing::info!(reason, generation, "configuration reloaded");
        Ok(Outcome::Applied)
    }
}

/// What of `old` is gone from `new`, for the metrics: (host, route) pairs,
/// route names no host uses any more (series labelled by route alone), pools.
fn removed_series(old: &config::Config, new: &config::Config) -> crate::metrics::Gone {
    use std::collections::BTreeSet;
    let pairs = |c: &config::Config| -> BTreeSet<(String, String)> {
        c.hosts
            .iter()
            .flat_map(|h| {
                h.routes
                    .iter()
                    .map(|r| (h.name.to_string(), r.name.to_string()))
            })
            .collect()
    };
    let (before, after) = (pairs(old), pairs(new));
    let names_after: BTreeSet<&str> = after.iter().map(|(_, r)| r.as_str()).collect();
    let routes: Vec<(String, String)> = before.difference(&after).cloned().collect();
    let mut route_names: Vec<String> = routes
        .iter()
        .map(|(_, r)| r.clone())
        .filter(|r| !names_after.contains(r.as_str()))
        .collect();
    route_names.dedup();
    let pools = old
        .upstreams
        .keys()
        .filter(|p| !new.upstreams.contains_key(*p))
        .map(|p| p.to_string())
        .collect();
    crate::metrics::Gone {
        routes,
        route_names,
        pools,
    }
}

/// Watches the config directory and SIGHUP.
pub struct ReloadService {
    reloader: Arc<Reloader>,
    /// A SIGHUP that came while the gateway was starting.
    early: EarlySignals,
}

impl ReloadService {
    pub fn new(reloader: Arc<Reloader>, early: EarlySignals) -> Self {
        ReloadService { reloader, early }
    }
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let path = self.reloader.path.clone();
        let file_name = path.file_name().map(|n| n.to_owned());
        // Certificate files are watched too, so a renewal (certbot) reloads them:
        // the configured paths and, for symlinks (certbot's `live/`), the files
        // they resolve to (`archive/`). The set follows the live configuration.
        let watched_certs: Arc<std::sync::RwLock<Vec<PathBuf>>> = Arc::default();
        let certs_in_callback = watched_certs.clone();
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                let certs = certs_in_callback.read();
                let ours = ev.paths.iter().any(|p| {
                    p.file_name().map(|n| n.to_owned()) == file_name
                        || certs.as_ref().is_ok_and(|certs| {
                            certs
                                .iter()
                                .any(|c| c.file_name() == p.file_name() && c.parent() == p.parent())
                        })
                });
                if ours && !ev.kind.is_access() {
                    let _ = tx.send(());
                }
            }
        });
        // The watcher must live as long as the loop below.
        let mut watcher = match watcher {
            Ok(mut w) => match w.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => Some(w),
                Err(e) => {
                    tracing::error!(error = %e, dir = %dir.display(), "cannot watch the config directory; reload with SIGHUP");
                    None
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "file watching unavailable; reload with SIGHUP");
                None
            }
        };
        let mut cert_dirs: Vec<PathBuf> = Vec::new();
        let mut rewatch = |watcher: &mut Option<notify::RecommendedWatcher>| {
            let Some(w) = watcher.as_mut() else { return };
            let files = cert_watch_list(&self.reloader.snapshot.load().config);
            let mut dirs: Vec<PathBuf> = files
                .iter()
                .filter_map(|f| f.parent().map(Path::to_path_buf))
                .filter(|d| *d != dir)
                .collect();
            dirs.sort();
            dirs.dedup();
            for d in cert_dirs.iter().filter(|d| !dirs.contains(d)) {
                let _ = w.unwatch(d);
            }
            for d in dirs.iter().filter(|d| !cert_dirs.contains(d)) {
                if let Err(e) = w.watch(d, RecursiveMode::NonRecursive) {
                    tracing::warn!(error = %e, dir = %d.display(), "cannot watch a certificate directory");
                }
            }
            cert_dirs = dirs;
            if let Ok(mut certs) = watched_certs.write() {
                *certs = files;
            }
        };
        rewatch(&mut watcher);
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP");
                None
            }
        };
        // Both listen now: what came before is applied once.
        let r = self.reloader.clone();
        let early_hangup = self.early.take_hangup();
        let _ = tokio::task::spawn_blocking(move || {
            if early_hangup {
                r.reload("SIGHUP during start")
            } else {
                r.catch_up()
            }
        })
        .await;
        rewatch(&mut watcher);
        // A certificate file missing at load time may appear in a directory
        // that did not exist to be watched (certbot's first `live/<name>/`).
        let mut appear = tokio::time::interval(Duration::from_secs(2));
        appear.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tried = Vec::new();
        loop {
            let hup_recv = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = hup_recv => {
                    let r = self.reloader.clone();
                    let _ = tokio::task::spawn_blocking(move || r.reload("SIGHUP")).await;
                    rewatch(&mut watcher);
                }
                _ = appear.tick() => {
                    // Once per version of the files: a refused pair is not retried
                    // (and logged) every tick, only when it changes again.
                    let seen: Vec<_> = self.reloader.snapshot.load().config.tls.certs.iter()
                        .filter(|c| c.placeholder)
                        .flat_map(|c| c.files.iter().map(|f| std::fs::metadata(f).ok().map(|m| (m.len(), m.modified().ok()))))
                        .collect();
                    let appeared = !seen.is_empty() && seen.iter().any(Option::is_some) && seen != tried;
                    if appeared {
                        tried = seen;
                        let r = self.reloader.clone();
                        let _ = tokio::task::spawn_blocking(move || r.apply("certificate file appeared", false)).await;
                        rewatch(&mut watcher);
                    }
                }
                Some(()) = rx.recv() => {
                    // Debounce: editors write in several steps.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    while rx.try_recv().is_ok() {}
                    let r = self.reloader.clone();
                    let _ = tokio::task::spawn_blocking(move || r.apply("file change", false)).await;
                    rewatch(&mut watcher);
                }
            }
        }
    }
}

/// The certificate files to watch: each configured path and, when it is a
/// symlink, the file it resolves to.
fn cert_watch_list(config: &crate::config::Config) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for f in config.tls.certs.iter().flat_map(|c| c.files.iter()) {
        files.push(f.clone());
        if let Ok(target) = std::fs::canonicalize(f) {
            if target != *f {
                files.push(target);
            }
        }
    }
    files
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use arc_swap::ArcSwap;

    const CONF: &str =
        "listen:\n  http: 127.0.0.1:0\nupstreams:\n  a: { servers: [127.0.0.1:1] }\n\
        hosts:\n  h:\n    routes:\n      - { name: r, prefix: /, upstream: a }\n";

    #[test]
    fn catch_up_applies_an_edit_made_before_the_watch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.yaml");
        std::fs::write(&path, CONF).unwrap();
        let loaded = config::load_file(&path).unwrap();
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::build(loaded.config, None)));
        let reloader = Reloader::new(path.clone(), snapshot.clone());
        let started = snapshot.load().config.content_hash.clone();
        assert!(matches!(reloader.catch_up(), Ok(Outcome::Unchanged)));
        assert_eq!(snapshot.load().config.content_hash, started);

        std::fs::write(&path, CONF.replace("prefix: /", "prefix: /v2")).unwrap();
        assert!(matches!(reloader.catch_up(), Ok(Outcome::Applied)));
        assert_ne!(snapshot.load().config.content_hash, started);
        assert_eq!(snapshot.load().config.hosts[0].routes[0].name, "r");

        // An invalid file is refused and the running config stays.
        let applied = snapshot.load().config.content_hash.clone();
        std::fs::write(&path, CONF.replace("upstream: a", "upstream: nowhere")).unwrap();
        assert!(reloader.catch_up().is_err());
        assert_eq!(snapshot.load().config.content_hash, applied);
    }
}
