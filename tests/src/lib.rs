//! Fixtures for the end-to-end tests: real `galion-gateway` processes and fake
//! upstreams on ephemeral loopback ports.
//!
//! Every process a fixture starts is stopped (by PID) when the fixture is dropped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod gateway;
pub mod jwt;
pub mod pebble;
pub mod redis_server;
pub mod stack;
pub mod tls;
pub mod upstream;

pub use gateway::{
    holds_listener, launch_gateway, launch_gateway_env, launch_on, spawn_gateway,
    spawn_gateway_tls, spawn_gateway_with, Gateway,
};
pub use upstream::{fake_upstream, fake_upstream_on, FakeUpstream};

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::OnceLock;

/// A port the OS just gave out and released (the gateway binds it itself).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// An address where nothing answers, reserved while the value lives: the port is
/// bound but not listening, so connections are refused at once and no other test
/// (nor a process started by one) can take the port meanwhile — unlike a port
/// from [`free_addr`], which anyone may bind again.
pub struct DeadAddr {
    pub addr: SocketAddr,
    _reserved: tokio::net::TcpSocket,
}

pub fn dead_addr() -> DeadAddr {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind a port to keep closed");
    DeadAddr {
        addr: sock.local_addr().expect("local addr"),
        _reserved: sock,
    }
}

/// `target/<profile>/` of this build.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test binary>
    exe.parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .to_path_buf()
}

/// Path to a workspace binary. `cargo test` does not rebuild binaries of other
/// packages, so the first call runs `cargo build --bins` (a no-op when up to date)
/// to never test a stale binary.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let path = target_dir().join(name);
    if std::env::var_os("GALION_TESTS_NO_BUILD").is_none() || !path.exists() {
        BUILT.get_or_init(|| {
            let mut cmd = std::process::Command::new(env!("CARGO"));
            cmd.args(["build", "--workspace", "--bins"]);
            if target_dir().ends_with("release") {
                cmd.arg("--release");
            }
            let status = cmd
                .current_dir(workspace_root())
                .status()
                .expect("run cargo build");
            assert!(status.success(), "cargo build --bins failed");
        });
    }
    assert!(path.exists(), "{} not built", path.display());
    path
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The admin token of the end-to-end configs; list `ADMIN_DIGEST` (its SHA-256) in
/// `admin.token_sha256` and call [`Gateway::admin`].
pub const ADMIN_TOKEN: &str = "test-admin";
pub const ADMIN_DIGEST: &str = "db09d473d4b6461b91bfa47e4fed3ef55e0234df4132ca7a827b0a69e8927cac";

/// A client whose connections come from `127.0.0.N`: each N is another client IP.
pub fn client_from(last_octet: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, last_octet]))
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("client")
}

/// A reqwest client that never reuses our own connections across tests and
/// does not follow redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .expect("client")
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Sends raw bytes on a fresh connection and returns what came back until the
/// server closed or 5 s passed (for requests a well-behaved client cannot send).
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = std::time::Duration::from_secs(5);
    while let Ok(Ok(n)) = tokio::time::timeout(deadline, s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if response_complete(&out) {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn response_complete(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let len = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    len.is_some_and(|n| body.len() >= n)
}
