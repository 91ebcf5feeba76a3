//! Draining without failing requests: a graceful upgrade (`-u` + `SIGQUIT`),
//! where a new process takes over the listening sockets of the running one
//! while clients keep sending, and a graceful shutdown (`SIGTERM`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use galion_tests::gateway::stop_process;
use galion_tests::{client, fake_upstream, spawn_gateway_with};

/// The new process, stopped (by PID) when the test ends, whatever happens.
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        stop_process(&mut self.0);
    }
}

fn one_route(upstream: std::net::SocketAddr) -> String {
    format!(
        "upstreams:\n  a: {{ servers: [\"{upstream}\"] }}\nhosts:\n  galion.app:\n    default: true\n    routes:\n      - {{ name: all, prefix: /, upstream: a }}\n"
    )
}

fn lines(text: &str) -> usize {
    text.lines().filter(|l| l.contains("\"status\"")).count()
}

#[tokio::test]
async fn a_graceful_upgrade_under_load_fails_no_request() {
    let up = fake_upstream("a").await;
    let sock_dir = tempfile::tempdir().unwrap();
    let sock = sock_dir.path().join("upgrade.sock");
    // A grace period longer than the second an idle connection is kept: what
    // is still open when it ends is dropped.
    let keys = format!("grace_period: 3s, upgrade_sock: \"{}\"", sock.display());
    let conf = one_route(up.addr);
    let mut old = spawn_gateway_with(&conf, &keys).await;

    // Keep-alive clients (their connections are on the old process when the
    // upgrade starts) and one that opens a connection per request.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for i in 0..5 {
        let (stop, ok, failed, errors) = (stop.clone(), ok.clone(), failed.clone(), errors.clone());
        let url = old.url("/x");
        clients.push(tokio::spawn(async move {
            let c = if i == 0 {
                reqwest::Client::builder()
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap()
            } else {
                client()
            };
            while !stop.load(Ordering::Relaxed) {
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.lock().unwrap().push(format!("{other:?}"));
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let new = Stopped(old.launch_upgrade());
    // The new process waits on the upgrade socket for the old one's listeners.
    tokio::time::sleep(Duration::from_millis(500)).await;
    old.signal("QUIT");
    let exited = old.exited_within(Duration::from_secs(20)).await;
    assert!(exited, "old process still running:\n{}", old.log());
    let served_before = lines(&access_new(&old));
    let ok_at_exit = ok.load(Ordering::Relaxed);
    // Only the new process answers now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the upgrade: {:?}",
        errors.lock().unwrap().iter().take(5).collect::<Vec<_>>()
    );
    let after = ok.load(Ordering::Relaxed) - ok_at_exit;
    assert!(
        after > 20,
        "only {after} requests after the old process left"
    );
    let served_by_new = lines(&access_new(&old));
    assert!(
        served_by_new > served_before && served_by_new >= after,
        "the new process served {served_by_new} ({served_before} before the old one left, {after} after)"
    );
    assert!(lines(&old.access_log()) > 0, "the old process served first");
    // The admin listener came over too.
    let live = client()
        .get(old.admin_url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    drop(new);
}

fn access_new(gw: &galion_tests::Gateway) -> String {
    std::fs::read_to_string(gw.dir.path().join("access-new.log")).unwrap_or_default()
}

/// SIGTERM: the listener closes, a request in flight is answered in full, and a
/// busy keep-alive client gets its next answers, the last one with
/// `Connection: close`, never a reset; then the process exits on its own.
#[tokio::test]
async fn sigterm_answers_what_is_in_flight_and_closes_keepalive_cleanly() {
    let up = fake_upstream("a").await;
    let mut gw = spawn_gateway_with(&one_route(up.addr), "grace_period: 3s").await;
    let c = client();
    let slow = {
        let req = c
            .get(gw.url("/slow"))
            .header("x-test-sleep-ms", "1500")
            .send();
        tokio::spawn(async move {
            let r = req.await?;
            Ok::<_, reqwest::Error>((r.status(), r.text().await?))
        })
    };
    let busy = {
        let (c, url) = (c.clone(), gw.url("/busy"));
        tokio::spawn(async move {
            let mut answered = 0;
            loop {
                let r = c.get(&url).send().await?;
                assert_eq!(r.status(), 200);
                let closing = r
                    .headers()
                    .get("connection")
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                r.text().await?;
                answered += 1;
                if closing {
                    return Ok::<_, reqwest::Error>(answered);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.signal("TERM");

    let (status, body) = slow.await.unwrap().expect("the slow request is answered");
    assert_eq!(status, 200);
    assert!(body.contains("\"/slow\""), "{body}");
    let answered = busy
        .await
        .unwrap()
        .expect("no request of the busy client fails");
    assert!(answered > 1, "{answered}");

    // No new connections once draining.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(tokio::net::TcpStream::connect(gw.http).await.is_err());
    let exited = gw.exited_within(Duration::from_secs(15)).await;
    assert!(exited, "still running:\n{}", gw.log());
}
