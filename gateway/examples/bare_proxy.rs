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

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
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
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        // No TLS, no SNI: the peer is reused from the keep-alive pool by address.
        Ok(Box::new(HttpPeer::new(self.origin, false, String::new())))
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
        upgrade_sock: run_dir
            .join(format!("bare_proxy.{}.sock", listen.port()))
            .display()
            .to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();

    let mut proxy = pingora::proxy::http_proxy(&server.configuration, Bare { origin });
    // Downstream keep-alive without a request limit (Pingora's default, spelled out).
    let mut opts = HttpServerOptions::default();
    opts.keepalive_request_limit = None;
    proxy.server_options = Some(opts);

    let mut svc = Service::new("bare proxy".to_owned(), proxy);
    let mut sock = TcpSocketOptions::default();
    sock.so_reuseport = Some(true);
    svc.add_tcp_with_settings(&listen.to_string(), sock);
    server.add_service(svc);

    eprintln!("bare_proxy: {listen} -> {origin}, {threads} thread(s)");
    server.run_forever()
}
