//! Hot reload: file edits, SIGHUP, refused files, and reloads under load.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use galion_tests::{client, eventually, fake_upstream, launch_gateway, spawn_gateway, Gateway};

fn conf(upstream: std::net::SocketAddr, extra_route: &str) -> String {
    format!(
        r#"
upstreams:
  a: {{ servers: ["{upstream}"] }}
hosts:
  galion.app:
    default: true
    routes:
      - {{ name: base, prefix: /base, upstream: a }}
{extra_route}"#
    )
}

async fn status(gw: &Gateway, path: &str) -> u16 {
    client()
        .get(gw.url(path))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test]
async fn file_edit_and_sighup_apply_new_routes() {
    let a = fake_upstream("a").await;
    let gw = spawn_gateway(&conf(a.addr, "")).await;
    assert_eq!(status(&gw, "/new").await, 404);

    let start = Instant::now();
    gw.write_config(&conf(
        a.addr,
        "      - { name: new, prefix: /new, upstream: a }\n",
    ));
    let seen = eventually(2, || async {
        (status(&gw, "/new").await == 200).then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "edited route not live within 2 s:\n{}",
        gw.log()
    );
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(
        gw.metric("gateway_config_reloads_total{result=\"success\"}")
            .await,
        2.0
    );

    // SIGHUP: write without a rename (so only the signal is certain to apply it
    // if the watcher were slow), then signal.
    let body = galion_tests::gateway::with_listen(
        &conf(a.addr, "      - { name: hup, prefix: /hup, upstream: a }\n"),
        gw.http,
        gw.admin,
    );
    std::fs::write(&gw.config_path, body).unwrap();
    gw.signal("HUP");
    let seen = eventually(2, || async {
        (status(&gw, "/hup").await == 200).then_some(())
    })
    .await;
    assert!(seen.is_some(), "SIGHUP reload not applied:\n{}", gw.log());
    assert_eq!(
        status(&gw, "/new").await,
        404,
        "the old extra route is gone"
    );
}

/// `systemctl reload` (or logrotate's SIGUSR1) right after a start: before the
/// reload service listens, SIGHUP's default action would end the process.
#[tokio::test]
async fn sighup_while_starting_is_a_reload() {
    let a = fake_upstream("a").await;
    let mut gw = launch_gateway(&conf(a.addr, ""));
    // Logged just before pingora starts its services; the reload service
    // listens only once they run.
    let starting = eventually(15, || async {
        gw.log().contains("galion-gateway starting").then_some(())
    })
    .await;
    assert!(starting.is_some(), "gateway did not start:\n{}", gw.log());
    gw.signal("HUP");
    gw.signal("USR1");
    gw.wait_ready().await;
    assert!(
        gw.child.try_wait().unwrap().is_none(),
        "the gateway ended:\n{}",
        gw.log()
    );
    // The file did not change: only the signal reloads it.
    let reloaded = eventually(5, || async {
        gw.log()
            .lines()
            .any(|l| l.contains("configuration reloaded") && l.contains("SIGHUP"))
            .then_some(())
    })
    .await;
    assert!(reloaded.is_some(), "SIGHUP not applied:\n{}", gw.log());
    assert_eq!(status(&gw, "/base").await, 200);
    gw.stop();
}

#[tokio::test]
async fn invalid_file_keeps_the_running_config() {
    let a = fake_upstream("a").await;
    let gw = spawn_gateway(&conf(a.addr, "")).await;
    let errors_before = gw
        .metric("gateway_config_reloads_total{result=\"error\"}")
        .await;
    gw.write_config(&conf(
        a.addr,
        "      - { name: broken, prefix: /broken, upstream: nowhere }\n",
    ));
    let counted = eventually(3, || async {
        (gw.metric("gateway_config_reloads_total{result=\"error\"}")
            .await
            > errors_before)
            .then_some(())
    })
    .await;
    assert!(
        counted.is_some(),
        "refused reload not counted:\n{}",
        gw.log()
    );
    assert_eq!(status(&gw, "/base").await, 200, "old routes keep answering");
    assert_eq!(status(&gw, "/broken").await, 404);
    let log = gw.log();
    assert!(
        log.contains("gateway.yaml:") && log.contains("unknown upstream \"nowhere\""),
        "error with location not logged:\n{log}"
    );
    // The admin API reports the same error and the same running config.
    let r = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "admin API needs the token");
}

#[tokio::test]
async fn twenty_reloads_under_load_drop_nothing() {
    let a = fake_upstream("a").await;
    let gw = spawn_gateway(&conf(a.addr, "")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), gw.url("/base/x"));
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
    let start = Instant::now();
    for i in 0..20 {
        let extra = format!("      - {{ name: r{i}, prefix: /r{i}, upstream: a }}\n");
        gw.write_config(&conf(a.addr, &extra));
        tokio::time::sleep(Duration::from_millis(450)).await;
        if i % 5 == 4 {
            gw.signal("HUP");
        }
    }
    let remaining = Duration::from_secs(10).saturating_sub(start.elapsed());
    tokio::time::sleep(remaining).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let reloads = gw
        .metric("gateway_config_reloads_total{result=\"success\"}")
        .await;
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert!(ok.load(Ordering::Relaxed) > 100);
    assert!(reloads >= 20.0, "only {reloads} reloads applied");
    assert_eq!(status(&gw, "/r19").await, 200);
}

/// What is bound or sized at start (listener addresses, `server:`) cannot change
/// on a reload: the change is reported, the old listener keeps serving, and the
/// rest of the file is applied.
#[tokio::test]
async fn listener_changes_are_reported_and_the_rest_applies() {
    let a = fake_upstream("a").await;
    let gw = spawn_gateway(&conf(a.addr, "")).await;
    let elsewhere = galion_tests::dead_addr();
    let body = galion_tests::gateway::with_listen(
        &conf(
            a.addr,
            "      - { name: moved, prefix: /moved, upstream: a }\n",
        ),
        elsewhere.addr,
        gw.admin,
    );
    std::fs::write(&gw.config_path, body).unwrap();
    gw.signal("HUP");
    let seen = eventually(3, || async {
        (status(&gw, "/moved").await == 200).then_some(())
    })
    .await;
    assert!(seen.is_some(), "reload not applied:\n{}", gw.log());
    let reported = eventually(3, || async {
        let log = gw.log();
        (log.contains("only after a restart") && log.contains("listen")).then_some(())
    })
    .await;
    assert!(reported.is_some(), "change not reported:\n{}", gw.log());
    assert_eq!(status(&gw, "/base").await, 200, "old listener still serves");
}
