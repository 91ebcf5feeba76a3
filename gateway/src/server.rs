//! Assembles the Pingora server: proxy listener, admin listener, health checks and
//! the reload watcher, all sharing one `ArcSwap` of the compiled snapshot.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora::apps::HttpServerOptions;
use pingora::listeners::{ListenerConfig, TcpSocketOptions};
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::protocols::TcpKeepalive;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::AdminApp;
use crate::config::{self, Config};
use crate::conn::{BanFilter, Counted};
use crate::fast::GatewayApp;
use crate::log_writer::ReopenService;
use crate::proxy::GatewayProxy;
use crate::reload::{self, ReloadService, Reloader};
use crate::services::{AuthService, HealthChecker, ProtectService};
use crate::shield::Shield;
use crate::snapshot::Snapshot;

/// Process-level options from the command line.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub config: PathBuf,
    pub upgrade: bool,
    pub daemon: bool,
}

fn server_conf(c: &Config) -> ServerConf {
    let s = &c.server;
    let mut conf = ServerConf {
        threads: s.threads,
        work_stealing: s.work_stealing,
        grace_period_seconds: Some(s.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout.as_secs()),
        upstream_keepalive_pool_size: s.upstream_keepalive_pool_size,
        // pingora's own timeouts (client reads and writes, upstream reads,
        // the pool's idle watch) as tokio timers, like the fast path's:
        // pingora's fast timers register each one under a lock in a shared
        // manager whose clock thread wakes every 10 ms on the proxy's core.
        // Every timeout the gateway sets is at least a second; a shorter one
        // stays a fast timer.
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ..ServerConf::default()
    };
    if let Some(p) = &s.pid_file {
        conf.pid_file = p.clone();
    }
    if let Some(p) = &s.upgrade_sock {
        conf.upgrade_sock = p.clone();
    }
    conf
}

/// Loads the configuration and runs until shutdown; an error means it could not start.
pub fn run(opts: RunOptions) -> anyhow::Result<()> {
    let loaded = config::load_file(&opts.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let access_log = crate::access_log::init(&loaded.config.access_log)
        .map_err(|e| anyhow::anyhow!("cannot open the access log: {e}"))?;
    let early_signals = crate::signals::install()
        .map_err(|e| anyhow::anyhow!("cannot handle SIGHUP/SIGUSR1: {e}"))?;
    crate::upgrade::watch_quit().map_err(|e| anyhow::anyhow!("cannot watch SIGQUIT: {e}"))?;
    crate::systemd::watch_stop()
        .map_err(|e| anyhow::anyhow!("cannot watch SIGTERM for the service manager: {e}"))?;
    for w in &loaded.warnings {
        tracing::warn!(
            "{}:{}: {}: {}",
            opts.config.display(),
            w.line.unwrap_or(0),
            w.path,
            w.message
        );
    }
    let config = loaded.config;
    let conf = server_conf(&config);
    let http_addr = config.listen.http;
    let https_addr = config.listen.https;
    if let Some(acme) = &config.tls.acme {
        crate::services::acme::install_at_hand(acme);
    }
    crate::tls::apply(&config.tls);
    let admin_addr = config.listen.admin;
    let keepalive_requests = config.server.keepalive_requests;
    let write_buffer = config.server.write_buffer;
    let send_timeout = config.server.send_timeout;

    let shield = Arc::new(Shield::new(config.rate_limits.max_keys));
    match &config.store.state_dir {
        Some(dir) => shield.bans.restore(dir, config.limits.ipv6_prefix),
        None if !config.jails.is_empty() => tracing::warn!(
            "bans are kept in memory only: set store.state_dir (or GALION_DATA_DIR) to keep them across restarts"
        ),
        None => {}
    }
    if config
        .hosts
        .iter()
        .any(|h| h.routes.iter().any(|r| r.cache.is_some()))
    {
        crate::cache::init(&config.cache);
    }
    let first = Snapshot::build(config, None);
    for e in crate::routing::exposures(&first.router) {
        tracing::warn!("{}: {e}", opts.config.display());
    }
    crate::metrics::metrics()
        .config_generation
        .set(first.generation as i64);
    let snapshot = Arc::new(ArcSwap::from_pointee(first));
    reload::mark_success();
    let reloader = Arc::new(Reloader::new(opts.config.clone(), snapshot.clone()));

    let pingora_opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(pingora_opt, conf);
    server.bootstrap();

    let proxy_service = |name: &str, https: bool| {
        let mut proxy = pingora::proxy::http_proxy(
            &server.configuration,
            GatewayProxy::new(snapshot.clone(), https, shield.clone()),
        );
        let mut server_opts = HttpServerOptions::default();
        server_opts.keepalive_request_limit = keepalive_requests;
        proxy.server_options = Some(server_opts);
        let app = GatewayApp::new(proxy, snapshot.clone(), shield.clone(), https);
        let listener = if https { "https" } else { "http" };
        let mut svc = Service::new(
            name.to_owned(),
            Counted::new(app, snapshot.clone(), listener),
        );
        svc.set_connection_filter(Arc::new(BanFilter::new(snapshot.clone(), shield.clone())));
        svc
    };
    // Listener settings: a change needs a restart (reported by the reloader).
    let listener = |addr: std::net::SocketAddr| {
        let mut sock = TcpSocketOptions::default();
        sock.so_reuseport = Some(true);
        // TCP_USER_TIMEOUT = send_timeout: the kernel drops a connection whose
        // sent data stays unacknowledged, or unsent behind a zero window (a
        // client that stopped reading), that long. pingora times body writes
        // only; a response head or a small body waiting in the final flush would
        // otherwise wait for ever, holding its upstream connection. Keep-alive
        // probes find clients that vanished from an idle connection.
        sock.tcp_keepalive = Some(TcpKeepalive {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            count: 6,
            user_timeout: send_timeout,
        });
        ListenerConfig::tcp(addr.to_string())
            .tcp_socket_options(sock)
            .l4_buffer(L4BufferSettings::default().write(write_buffer))
    };
    let mut proxies = Vec::new();
    if let Some(addr) = http_addr {
        let mut svc = proxy_service("galion proxy", false);
        svc.add_listener(listener(addr));
        proxies.push(svc);
    }
    if let Some(addr) = https_addr {
        let mut svc = proxy_service("galion proxy tls", true);
        let settings = crate::tls::settings(crate::tls::store().clone())
            .map_err(|e| anyhow::anyhow!("TLS listener: {e}"))?;
        svc.add_listener(listener(addr).tls(settings));
        svc.endpoints()
            .set_pre_tls_callback(Arc::new(crate::tls::alpn::AlpnChallenge));
        proxies.push(svc);
    }
    for svc in proxies {
        server.add_service(svc);
    }

    let mut admin_svc = Service::new(
        "galion admin".to_owned(),
        pingora::apps::http_app::HttpServer::new_app(AdminApp::new(
            snapshot.clone(),
            reloader.clone(),
            shield.clone(),
        )),
    );
    admin_svc.add_tcp(&admin_addr.to_string());

    server.add_service(admin_svc);
    server.add_service(background_service(
        "health checks",
        HealthChecker::new(snapshot.clone()),
    ));
    server.add_service(background_service(
        "config reload",
        ReloadService::new(reloader, early_signals.clone()),
    ));
    server.add_service(background_service(
        "automatic certificates",
        crate::services::acme::AcmeService::new(snapshot.clone()),
    ));
    server.add_service(background_service(
        "auth keys and revocations",
        AuthService::new(snapshot.clone()),
    ));
    server.add_service(background_service(
        "limits, bans and cluster store",
        ProtectService::new(snapshot.clone(), shield.clone()),
    ));
    let mut bound: Vec<std::net::SocketAddr> =
        [http_addr, https_addr].into_iter().flatten().collect();
    bound.push(admin_addr);
    server.add_service(background_service(
        "service manager",
        crate::systemd::ManagerService::new(bound, snapshot.clone()),
    ));
    server.add_service(background_service(
        "access log reopen",
        ReopenService::new(access_log.reopen_flag(), early_signals),
    ));
    tracing::info!(http = ?http_addr, https = ?https_addr, admin = %admin_addr, "galion-gateway starting");
    // `run`, not `run_forever` (which exits the process): the lines still queued
    // for the access log are written before the process ends.
    server.run(RunArgs::default());
    // A fast shutdown (SIGINT) drops the background services without their
    // shutdown step: a ban made just before it may not be on disk yet.
    if let Some(dir) = &snapshot.load().config.store.state_dir {
        shield.bans.save_if_dirty(dir);
    }
    access_log.finish();
    Ok(())
}
