//! The access log file end to end: its fields (nginx's combined format plus
//! upstream timing, secrets redacted from the query), independent of
//! `RUST_LOG`, reopened on SIGUSR1 (logrotate), flushed at shutdown, private
//! file mode, and written by a daemonized (`-d`) gateway.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use galion_tests::{
    binary, client, eventually, fake_upstream, free_addr, holds_listener, launch_gateway_env,
    spawn_gateway,
};
use serde_json::Value;

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn lines_eventually(path: &Path, n: usize) -> Vec<String> {
    let p = path.to_owned();
    eventually(10, || {
        let l = lines(&p);
        async move { (l.len() >= n).then_some(l) }
    })
    .await
    .unwrap_or_else(|| lines(path))
}

fn routes(upstream: std::net::SocketAddr, log: &Path) -> String {
    format!(
        r#"
access_log: {{ enabled: true, path: "{}" }}
upstreams:
  a: {{ servers: ["{upstream}"] }}
hosts:
  galion.app:
    default: true
    routes:
      - {{ name: r, prefix: /, upstream: a }}
"#,
        log.display()
    )
}

async fn get(url: &str, rid: &str) -> u16 {
    client()
        .get(url)
        .header("x-request-id", rid)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_access_log_is_reopened_on_sigusr1_and_flushed_at_shutdown() {
    let up = fake_upstream("a").await;
    let logs = tempfile::tempdir().unwrap();
    let path = logs.path().join("access.log");
    let mut gw = spawn_gateway(&routes(up.addr, &path)).await;

    for i in 0..20 {
        assert_eq!(get(&gw.url("/x"), &format!("before-{i}")).await, 200);
    }
    let before = lines_eventually(&path, 20).await;
    assert_eq!(before.len(), 20, "{before:?}");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o007, 0, "access log mode {mode:o}");

    // logrotate (`create` mode): move the file, then ask for a reopen.
    let rotated = logs.path().join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    gw.signal("USR1");
    let asked = eventually(5, || {
        let log = gw.log();
        async move { log.contains("access log will be reopened").then_some(()) }
    })
    .await;
    assert!(asked.is_some(), "SIGUSR1 not seen:\n{}", gw.log());
    assert_eq!(get(&gw.url("/x"), "after-0").await, 200);
    let after = lines_eventually(&path, 1).await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(after[0].contains("\"after-0\""), "{after:?}");
    assert_eq!(lines(&rotated).len(), 20);
    // The gateway is still alive after the signal (SIGUSR1 kills by default).
    assert!(gw.child.try_wait().unwrap().is_none());

    // Lines still queued at shutdown are written before the process exits.
    for i in 1..=200 {
        assert_eq!(get(&gw.url("/x"), &format!("after-{i}")).await, 200);
    }
    gw.stop();
    let status = gw.child.try_wait().unwrap();
    assert!(status.is_some(), "gateway did not stop");
    let after = lines(&path);
    assert_eq!(after.len(), 201, "lines lost at shutdown");
    assert!(after[200].contains("\"after-200\""), "{}", after[200]);
}

/// Stops a daemon by the PID in its pid file, on every exit of the test.
struct Daemon(std::path::PathBuf);

impl Daemon {
    fn pid(&self) -> Option<String> {
        std::fs::read_to_string(&self.0)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }
    fn alive(&self) -> bool {
        self.pid()
            .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(p) = self.pid() {
            let _ = Command::new("kill").args(["-INT", &p]).status();
            for _ in 0..50 {
                if !self.alive() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = Command::new("kill").args(["-KILL", &p]).status();
        }
    }
}

#[tokio::test]
async fn a_daemonized_gateway_writes_its_access_log() {
    let up = fake_upstream("a").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let (http, admin) = (free_addr(), free_addr());
    let pid_file = dir.path().join("gateway.pid");
    let config = format!(
        "listen: {{ http: \"{http}\", admin: \"{admin}\" }}\n\
         server: {{ grace_period: 0s, graceful_shutdown_timeout: 1s, pid_file: \"{}\", upgrade_sock: \"{}\" }}\n{}",
        pid_file.display(),
        dir.path().join("upgrade.sock").display(),
        routes(up.addr, &path)
    );
    let config_path = dir.path().join("gateway.yaml");
    std::fs::write(&config_path, config).unwrap();
    let daemon = Daemon(pid_file.clone());
    // The parent returns once it has forked the daemon.
    let status = Command::new(binary("galion-gateway"))
        .arg("-c")
        .arg(&config_path)
        .arg("-d")
        .env("RUST_LOG", "info")
        .env("GALION_DATA_DIR", dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let up_now = eventually(15, || async move {
        client()
            .get(format!("http://{admin}/health/live"))
            .send()
            .await
            .ok()
            .filter(|r| r.status() == 200)
    })
    .await;
    assert!(up_now.is_some(), "daemon did not start");
    assert!(daemon.alive(), "no daemon behind {}", pid_file.display());
    // The admin listener can answer a moment before the proxy's is bound.
    let pid: u32 = daemon.pid().and_then(|p| p.parse().ok()).unwrap();
    let proxy_up = eventually(5, || async move { holds_listener(pid, http).then_some(()) }).await;
    assert!(proxy_up.is_some(), "the daemon's proxy listener is not up");

    for i in 0..5 {
        assert_eq!(
            get(&format!("http://{http}/x"), &format!("d-{i}")).await,
            200
        );
    }
    let got = lines_eventually(&path, 5).await;
    assert_eq!(got.len(), 5, "the daemon's access log: {got:?}");
    assert!(got[4].contains("\"d-4\""), "{}", got[4]);
}

/// Every field of a line, with `RUST_LOG=off`: the access log is a record of
/// traffic that the diagnostics level does not silence.
#[tokio::test]
async fn lines_carry_the_combined_fields_and_ignore_rust_log() {
    let up = fake_upstream("a").await;
    let logs = tempfile::tempdir().unwrap();
    let path = logs.path().join("access.log");
    let gw = launch_gateway_env(&routes(up.addr, &path), "", &[("RUST_LOG", "off")]);
    gw.wait_ready().await;
    let c = client();
    let r = c
        .get(gw.url("/x?page=2&token=s3cret&Code=abc&q=a%20b"))
        .header("user-agent", "galion-test/1.0")
        .header("referer", "https://galion.app/from")
        .header("x-request-id", "fields-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(gw.url("/upload"))
        .header("x-request-id", "fields-2")
        .body("12345")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let lines = lines_eventually(&path, 2).await;
    assert_eq!(lines.len(), 2, "{lines:?}\n{}", gw.log());
    let get: Value = serde_json::from_str(&lines[0]).unwrap();
    let post: Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(get["request_id"], "fields-1", "{get}");
    assert_eq!(get["path"], "/x");
    assert_eq!(
        get["query"], "page=2&token=REDACTED&Code=REDACTED&q=a%20b",
        "{get}"
    );
    assert_eq!(get["protocol"], "HTTP/1.1");
    assert_eq!(get["user_agent"], "galion-test/1.0");
    assert_eq!(get["referer"], "https://galion.app/from");
    assert_eq!(get["tls"], "");
    assert_eq!(get["method"], "GET");
    assert_eq!(get["status"], 200);
    assert!(get["bytes"].as_u64().unwrap() > 0, "{get}");
    assert_eq!(get["bytes_in"], 0);
    assert_eq!(get["pool"], "a", "{get}");
    assert_eq!(get["upstream"], up.addr.to_string(), "{get}");
    let upstream_ms = get["upstream_ms"].as_f64().unwrap();
    let duration_ms = get["duration_ms"].as_f64().unwrap();
    assert!(upstream_ms > 0.0 && upstream_ms <= duration_ms, "{get}");
    assert_eq!(get["client_ip"], "127.0.0.1");
    assert_eq!(post["method"], "POST");
    assert_eq!(post["bytes_in"], 5, "{post}");
    assert_eq!(post["query"], "");
    // RUST_LOG=off silenced the gateway's own log, not the access log.
    assert!(!gw.log().contains("INFO"), "{}", gw.log());
}

/// A request-target of no HTTP/1.1 form (`GET x?y`) is refused, and its line
/// names the path the client sent, not the `/` pingora's URI gives it: the
/// same line on both transports (`./test.sh` runs this file on both).
#[tokio::test]
async fn a_target_of_no_form_is_refused_and_logged_as_sent() {
    let up = fake_upstream("a").await;
    let logs = tempfile::tempdir().unwrap();
    let path = logs.path().join("access.log");
    let gw = spawn_gateway(&routes(up.addr, &path)).await;
    let answer = galion_tests::raw_request(
        gw.http,
        b"GET public?x=1 HTTP/1.1\r\nHost: galion.app\r\nX-Request-Id: no-form-1\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let lines = lines_eventually(&path, 1).await;
    assert_eq!(lines.len(), 1, "{lines:?}\n{}", gw.log());
    let line: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(line["status"], 400, "{line}");
    assert_eq!(line["path"], "public", "{line}");
    assert_eq!(line["upstream"], "", "{line}");
}

/// `GALION_LOG_FORMAT=json`: the gateway's own log lines are JSON objects,
/// like the backends'.
#[tokio::test]
async fn the_gateway_logs_json_when_asked() {
    let up = fake_upstream("a").await;
    let logs = tempfile::tempdir().unwrap();
    let path = logs.path().join("access.log");
    let gw = launch_gateway_env(
        &routes(up.addr, &path),
        "",
        &[("GALION_LOG_FORMAT", "json")],
    );
    gw.wait_ready().await;
    let log = gw.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines");
    for line in &lines {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("galion-gateway starting")),
        "{log}"
    );
}
