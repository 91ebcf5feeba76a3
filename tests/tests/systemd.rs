//! systemd as the host: `Type=notify` messages on a real `NOTIFY_SOCKET` (a
//! Unix datagram socket made here) for start, reload (applied and refused)
//! and stop, for the gateway and a backend; `galion-gateway reload` as
//! `ExecReload`, which exits non-zero when the file is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use galion_tests::gateway::reap_within;
use galion_tests::{
    binary, client, fake_upstream, free_addr, launch_gateway_env, Gateway, ADMIN_DIGEST,
    ADMIN_TOKEN,
};

/// The service manager's end of `NOTIFY_SOCKET`.
struct Manager {
    sock: UnixDatagram,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Manager {
    fn new() -> Manager {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        Manager {
            sock,
            path,
            _dir: dir,
        }
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// The next message (its `KEY=value` lines), or `None` after `within`.
    fn next(&self, within: Duration) -> Option<Vec<String>> {
        self.sock.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).ok()?;
        Some(
            String::from_utf8_lossy(&buf[..n])
                .lines()
                .map(str::to_owned)
                .collect(),
        )
    }

    /// Reads messages until one has `line` (returned); fails after 15 s.
    fn expect(&self, line: &str, log: impl Fn() -> String) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Some(msg) = self.next(deadline - Instant::now()) {
                if msg.iter().any(|l| l == line) {
                    return msg;
                }
                seen.push(msg);
            }
        }
        panic!("no {line} from the process; got {seen:?}\n{}", log())
    }

    fn status(msg: &[String]) -> String {
        msg.iter()
            .find_map(|l| l.strip_prefix("STATUS="))
            .unwrap_or("")
            .to_owned()
    }
}

fn conf(upstream: std::net::SocketAddr, route: &str) -> String {
    format!(
        r#"
admin: {{ token_sha256: ["{ADMIN_DIGEST}"] }}
upstreams:
  a: {{ servers: ["{upstream}"] }}
hosts:
  galion.app:
    default: true
    routes:
      - {{ name: {route}, prefix: /, upstream: a }}
"#
    )
}

fn reload_cli(gw: &Gateway, env: &[(&str, &str)]) -> Output {
    Command::new(binary("galion-gateway"))
        .args(["reload", "-c"])
        .arg(&gw.config_path)
        .env_remove("GALION_ADMIN_TOKEN")
        .env_remove("GALION_ADMIN_TOKEN_FILE")
        .envs(env.iter().copied())
        .output()
        .expect("run galion-gateway reload")
}

/// A health endpoint's JSON on the admin listener.
async fn health(gw: &Gateway, which: &str) -> serde_json::Value {
    client()
        .get(gw.admin_url(&format!("/health/{which}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn generation(gw: &Gateway) -> u64 {
    health(gw, "ready").await["generation"].as_u64().unwrap()
}

#[tokio::test]
async fn gateway_tells_systemd_ready_reloading_and_stopping() {
    let up = fake_upstream("a").await;
    let manager = Manager::new();
    let mut gw = launch_gateway_env(
        &conf(up.addr, "first"),
        "",
        &[("NOTIFY_SOCKET", manager.path())],
    );

    // READY=1 only once every listener accepts: connect at once, no retry.
    let ready = manager.expect("READY=1", || gw.log());
    assert!(
        std::net::TcpStream::connect(gw.http).is_ok(),
        "READY=1 before the proxy listener was bound"
    );
    assert!(std::net::TcpStream::connect(gw.admin).is_ok());
    assert_eq!(
        Manager::status(&ready),
        "serving configuration generation 1"
    );
    assert!(ready.contains(&format!("MAINPID={}", gw.child.id())));

    // An edit the watcher applies: RELOADING=1 with the monotonic clock, then READY=1.
    gw.write_config(&conf(up.addr, "second"));
    let reloading = manager.expect("RELOADING=1", || gw.log());
    assert!(
        reloading.iter().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading:?}"
    );
    let again = manager.expect("READY=1", || gw.log());
    assert_eq!(
        Manager::status(&again),
        "serving configuration generation 2"
    );

    // `galion-gateway reload` (ExecReload): applied, exit 0, generation 3.
    let token_file = gw.dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).unwrap();
    let token_file = token_file.to_str().unwrap();
    let out = reload_cli(&gw, &[("GALION_ADMIN_TOKEN_FILE", token_file)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("serving generation 3"));
    manager.expect("RELOADING=1", || gw.log());
    let third = manager.expect("READY=1", || gw.log());
    assert_eq!(
        Manager::status(&third),
        "serving configuration generation 3"
    );

    // A wrong token: refused, exit 1, nothing reloaded.
    let out = reload_cli(&gw, &[("GALION_ADMIN_TOKEN", "not-the-token")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused the admin token"));
    // No token at all: says how to give one.
    let out = reload_cli(&gw, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("GALION_ADMIN_TOKEN_FILE"));
    assert_eq!(generation(&gw).await, 3);

    // A broken file: the watcher's attempt is announced and refused, the
    // status says the old generation serves; `reload` exits 1 with the
    // file, line and key, and asks nothing of the gateway.
    let broken = conf(up.addr, "third").replace("upstream: a", "upstream: nowhere");
    gw.write_config(&broken);
    manager.expect("RELOADING=1", || gw.log());
    let refused = manager.expect("READY=1", || gw.log());
    assert_eq!(
        Manager::status(&refused),
        "configuration refused; serving configuration generation 3"
    );
    let out = reload_cli(&gw, &[("GALION_ADMIN_TOKEN_FILE", token_file)]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gateway.yaml:"), "{stderr}");
    assert!(stderr.contains("nowhere"), "{stderr}");
    assert!(stderr.contains("reload refused"), "{stderr}");
    assert!(
        manager.next(Duration::from_millis(300)).is_none(),
        "a refused `reload` must not reach the gateway"
    );
    assert_eq!(generation(&gw).await, 3);
    assert_eq!(
        client().get(gw.url("/x")).send().await.unwrap().status(),
        200
    );

    // SIGTERM: STOPPING=1 when draining starts.
    gw.signal("TERM");
    manager.expect("STOPPING=1", || gw.log());
    reap_within(&mut gw.child, Duration::from_secs(10));
}

#[tokio::test]
async fn a_gateway_not_running_makes_reload_fail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    let up = free_addr();
    let (http, admin) = (free_addr(), free_addr());
    std::fs::write(
        &path,
        format!(
            "listen: {{ http: \"{http}\", admin: \"{admin}\" }}\n{}",
            conf(up, "r")
        ),
    )
    .unwrap();
    let out = Command::new(binary("galion-gateway"))
        .args(["reload", "-c"])
        .arg(&path)
        .env("GALION_ADMIN_TOKEN", ADMIN_TOKEN)
        .env_remove("GALION_ADMIN_TOKEN_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "no gateway answered on the admin listener {admin}"
        )),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_backend_tells_systemd_ready_once_listening_and_stopping() {
    let manager = Manager::new();
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let log = std::fs::File::create(dir.path().join("analytics.log")).unwrap();
    let mut child = Command::new(binary("galion-analytics"))
        .env("GALION_DATA_DIR", dir.path())
        .env("GALION_ANALYTICS_LISTEN", listen.to_string())
        .env(
            "GALION_SERVICE_TOKEN",
            "systemd-test-service-token-0123456789",
        )
        .env("GALION_AUTH_URL", format!("http://{}", free_addr()))
        .env("NOTIFY_SOCKET", manager.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(dir.path().join("analytics.log")).unwrap_or_default();
    let ready = manager.expect("READY=1", log);
    assert_eq!(Manager::status(&ready), format!("listening on {listen}"));
    // Migrated and listening: ready is ready.
    let health = client()
        .get(format!("http://{listen}/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    manager.expect("STOPPING=1", log);
    reap_within(&mut child, Duration::from_secs(10));
}

/// `galion-gateway upgrade`: the running gateway starts the binary on disk as
/// its own child (so under systemd it is in the same unit), which announces
/// itself with `MAINPID=` + `READY=1`; the old one hands over its listeners
/// without `STOPPING=1` (that would stop the unit), and no request fails.
#[tokio::test]
async fn upgrade_hands_over_to_a_child_that_systemd_follows() {
    let up = fake_upstream("a").await;
    let manager = Manager::new();
    let sock_dir = tempfile::tempdir().unwrap();
    let keys = format!(
        "grace_period: 2s, upgrade_sock: \"{}\"",
        sock_dir.path().join("upgrade.sock").display()
    );
    let mut gw = launch_gateway_env(
        &conf(up.addr, "first"),
        &keys,
        &[
            ("NOTIFY_SOCKET", manager.path()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    let old_pid = gw.child.id();
    let ready = manager.expect("READY=1", || gw.log());
    assert!(ready.contains(&format!("MAINPID={old_pid}")));

    // Keep-alive clients through the handover.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), gw.url("/x"));
        clients.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let token_file = gw.dir.path().join("admin-token");
    std::fs::write(&token_file, ADMIN_TOKEN).unwrap();
    let out = Command::new(binary("galion-gateway"))
        .args(["upgrade", "-c"])
        .arg(&gw.config_path)
        .env("GALION_ADMIN_TOKEN_FILE", &token_file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // The successor is the old gateway's child: stopped here by its PID
    // whatever the assertions below say.
    let new_pid: Option<u32> = stdout
        .split_whitespace()
        .nth(2)
        .and_then(|p| p.parse().ok());
    struct Kill(Option<u32>);
    impl Drop for Kill {
        fn drop(&mut self) {
            if let Some(pid) = self.0 {
                let _ = Command::new("kill")
                    .args(["-INT", &pid.to_string()])
                    .status();
            }
        }
    }
    let _kill = Kill(new_pid);
    assert!(
        out.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    let new_pid = new_pid.expect("the new pid in `upgrade`'s output");
    assert_ne!(new_pid, old_pid);

    // The new process tells systemd it is the main process now.
    let took_over = manager.expect("READY=1", || gw.log());
    assert!(
        took_over.contains(&format!("MAINPID={new_pid}")),
        "{took_over:?}"
    );
    // The old one drains and exits without STOPPING=1.
    assert!(
        gw.exited_within(Duration::from_secs(20)).await,
        "{}",
        gw.log()
    );
    let mut after = Vec::new();
    while let Some(msg) = manager.next(Duration::from_millis(300)) {
        after.push(msg);
    }
    assert!(
        !after.iter().flatten().any(|l| l == "STOPPING=1"),
        "STOPPING=1 during an upgrade: {after:?}"
    );
    // The successor pings the watchdog as the main process.
    let ping = manager.expect("WATCHDOG=1", || gw.log());
    drop(ping);

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the upgrade"
    );
    assert!(ok.load(Ordering::Relaxed) > 0);
    // The new process serves: its pid answers on the admin listener.
    let live = health(&gw, "live").await;
    assert_eq!(live["pid"].as_u64(), Some(u64::from(new_pid)));
}
