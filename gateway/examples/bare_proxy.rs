//! A bare Pingora proxy: the yardstick for `bench/compare.sh`.
//!
//! It does nothing but forward every request to one fixed origin over a
//! keep-alive pool (`ProxyHttp::upstream_peer` only), with the same Pingora
//! version, release profile (fat LTO, one codegen unit, panic abort) and global
//! allocator (mimalloc) as `galion-gateway`, and the same listener options
//! (`SO_REUSEPORT`) and upstream pool size. "gateway ÷ bare" in the benchmark is
//! therefore what the gateway's own code costs per request.
//!
//! ```text
//! cargo build --release -p galion-gateway --example bare_proxy
//! target/release/examples/bare_proxy LISTEN ORIGIN [THREADS]
//! target/release/examples/bare_proxy 127.0.0.1:18080 127.0.0.1:18081 1
//! ```
//!
//! Each argument falls back to an environment variable (`BARE_LISTEN`,
//! `BARE_ORIGIN`, `BARE_THREADS`), then to `127.0.0.1:6188`, `127.0.0.1:8000`
//! and `1`. SIGINT stops it at once; SIGTERM after a 1 s grace period.
//!
//! `BARE_EQ=1` makes it the yardstick for the gateway's own per-request work
//! (as `nginx_eq` is for nginx): the same work written the way a Pingora user
//! would, with Pingora's own API and defaults. A request id (the client's when
//! sane, else 128 random bits), `X-Forwarded-For/-Proto/-Host`, `X-Real-IP`
//! and `X-Request-Id` upstream, the request id and the gateway's default
//! security headers downstream, the gateway's default upstream connect, read
//! and idle timeouts and its client send timeout, pingora's timeouts on
//! tokio's timers as the gateway has them. "gateway ÷ bare_eq" is then
//! what the gateway's code costs beyond the work itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use http::HeaderValue;
use pingora::apps::HttpServerOptions;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::listeners::TcpSocketOptions;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::services::listening::Service;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Forwards everything to one origin over plain HTTP/1.1.
struct Bare {
    origin: SocketAddr,
    /// `BARE_EQ`: the gateway's per-request work, done with Pingora's API.
    eq: bool,
}

#[async_trait]
impl ProxyHttp for Bare {
    /// The request id (`BARE_EQ` only).
    type CTX = Option<HeaderValue>;

    fn new_ctx(&self) -> Option<HeaderValue> {
        None
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        if self.eq {
            session.set_write_timeout(Some(Duration::from_secs(60)));
            let id = session
                .req_header()
                .headers
                .get("x-request-id")
                .filter(|v| galion_gateway::request_id::is_sane(v.as_bytes()))
                .cloned()
                .unwrap_or_else(|| {
                    HeaderValue::from_str(&format!("{:032x}", rand::random::<u128>())).unwrap()
                });
            *ctx = Some(id);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        // No TLS, no SNI: the peer is reused from the keep-alive pool by address.
        let mut peer = HttpPeer::new(self.origin, false, String::new());
        if self.eq {
            peer.options.connection_timeout = Some(Duration::from_secs(2));
            peer.options.read_timeout = Some(Duration::from_secs(30));
            peer.options.idle_timeout = Some(Duration::from_secs(60));
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if !self.eq {
            return Ok(());
        }
        if let Some(ip) = session.client_addr().and_then(|a| a.as_inet()) {
            let ip = ip.ip().to_string();
            req.insert_header("X-Forwarded-For", &ip)?;
            req.insert_header("X-Real-IP", ip)?;
        }
        req.insert_header("X-Forwarded-Proto", "http")?;
        if let Some(host) = session.req_header().headers.get("host").cloned() {
            req.insert_header("X-Forwarded-Host", host)?;
        }
        if let Some(id) = ctx.clone() {
            req.insert_header("X-Request-Id", id)?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if !self.eq {
            return Ok(());
        }
        if let Some(id) = ctx.clone() {
            resp.insert_header("X-Request-Id", id)?;
        }
        for (name, value) in [
            ("X-Content-Type-Options", "nosniff"),
            ("X-Frame-Options", "DENY"),
            ("Referrer-Policy", "strict-origin-when-cross-origin"),
        ] {
            if !resp.headers.contains_key(name) {
                resp.insert_header(name, value)?;
            }
        }
        Ok(())
    }
}

/// The `n`th command-line argument, else the environment variable, else `default`.
fn arg(n: usize, env: &str, default: &str) -> String {
    std::env::args()
        .nth(n)
        .or_else(|| std::env::var(env).ok())
        .unwrap_or_else(|| default.to_owned())
}

fn main() {
    let listen: SocketAddr = arg(1, "BARE_LISTEN", "127.0.0.1:6188")
        .parse()
        .expect("LISTEN must be IP:PORT");
    let origin: SocketAddr = arg(2, "BARE_ORIGIN", "127.0.0.1:8000")
        .parse()
        .expect("ORIGIN must be IP:PORT");
    let threads: usize = arg(3, "BARE_THREADS", "1")
        .parse()
        .expect("THREADS must be a number");

    let eq = std::env::var("BARE_EQ").is_ok_and(|v| v == "1");
    // Pid file and upgrade socket next to nothing shared: several instances may
    // run side by side.
    let run_dir = std::env::temp_dir();
    let conf = ServerConf {
        threads: threads.max(1),
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        // As the gateway's default (`server.upstream_keepalive_pool_size`).
        upstream_keepalive_pool_size: 256,
        pid_file: run_dir
            .join(format!("bare_proxy.{}.pid", listen.port()))
            .display()
            .to_string(),
        // BARE_EQ: pingora's own timeouts on tokio's timer wheel, as the gateway
        // sets them (cheaper per timeout than pingora's fast timers).
        fast_timeout_to_tokio_threshold_seconds: eq.then_some(0),
        upgrade_sock: run_dir
            .join(format!("bare_proxy.{}.sock", listen.port()))
            .display()
            .to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();

    let mut proxy = pingora::proxy::http_proxy(&server.configuration, Bare { origin, eq });
    // Downstream keep-alive without a request limit (Pingora's default, spelled out).
    let mut opts = HttpServerOptions::default();
    opts.keepalive_request_limit = None;
    proxy.server_options = Some(opts);

    let mut svc = Service::new("bare proxy".to_owned(), proxy);
    let mut sock = TcpSocketOptions::default();
    sock.so_reuseport = Some(true);
    svc.add_tcp_with_settings(&listen.to_string(), sock);
    server.add_service(svc);

    let mode = if eq {
        " (BARE_EQ: the gateway's work)"
    } else {
        ""
    };
    eprintln!("bare_proxy: {listen} -> {origin}, {threads} thread(s){mode}");
    server.run_forever()
}
