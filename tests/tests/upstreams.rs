//! Load balancing, health checks, retries, ejection and error mapping, end to end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use galion_tests::{client, eventually, fake_upstream, fake_upstream_on, spawn_gateway, Gateway};
use serde_json::Value;

fn one_route(upstream_yaml: &str) -> String {
    format!(
        r#"
trusted_proxies: [127.0.0.1]
upstreams:
  pool:
{upstream_yaml}
hosts:
  galion.app:
    default: true
    routes:
      - {{ name: r, prefix: /, upstream: pool }}
"#
    )
}

async fn server_of(gw: &Gateway, path: &str, xff: Option<&str>) -> (u16, String) {
    let mut req = client().get(gw.url(path));
    if let Some(ip) = xff {
        req = req.header("x-forwarded-for", ip);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    (status, v["server"].as_str().unwrap_or("").to_owned())
}

async fn distribution(gw: &Gateway, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let (s, name) = server_of(gw, "/", None).await;
        assert_eq!(s, 200);
        *counts.entry(name).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let (a, b, c) = (
        fake_upstream("a").await,
        fake_upstream("b").await,
        fake_upstream("c").await,
    );
    let gw = spawn_gateway(&one_route(&format!(
        "    servers: [\"{}\", \"{}\", \"{}\"]",
        a.addr, b.addr, c.addr
    )))
    .await;
    let counts = distribution(&gw, 300).await;
    for name in ["a", "b", "c"] {
        let n = counts.get(name).copied().unwrap_or(0);
        assert!((90..=110).contains(&n), "{name} got {n}: {counts:?}");
    }
}

#[tokio::test]
async fn weights_are_respected() {
    let (a, b) = (fake_upstream("a").await, fake_upstream("b").await);
    let gw = spawn_gateway(&one_route(&format!(
        "    servers: [{{ addr: \"{}\", weight: 1 }}, {{ addr: \"{}\", weight: 3 }}]",
        a.addr, b.addr
    )))
    .await;
    let counts = distribution(&gw, 400).await;
    let na = counts.get("a").copied().unwrap_or(0);
    let nb = counts.get("b").copied().unwrap_or(0);
    assert!((70..=130).contains(&na), "a got {na}: {counts:?}");
    assert!((270..=330).contains(&nb), "b got {nb}: {counts:?}");
}

#[tokio::test]
async fn least_conn_prefers_the_idle_server() {
    let (a, b) = (fake_upstream("a").await, fake_upstream("b").await);
    let gw = spawn_gateway(&one_route(&format!(
        "    servers: [\"{}\", \"{}\"]\n    balance: least_conn",
        a.addr, b.addr
    )))
    .await;
    // Hold one slow request on whichever server gets it; the next requests must go
    // to the other one while it is busy.
    let slow = {
        let url = gw.url("/slow");
        tokio::spawn(async move {
            let r = client()
                .get(url)
                .header("x-test-sleep-ms", "1500")
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()["server"]
                .as_str()
                .unwrap()
                .to_owned()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut others = Vec::new();
    for _ in 0..5 {
        others.push(server_of(&gw, "/", None).await.1);
    }
    let busy = slow.await.unwrap();
    assert!(
        others.iter().all(|s| *s != busy),
        "busy {busy}, others {others:?}"
    );
}

#[tokio::test]
async fn consistent_hash_sticks_clients() {
    let (a, b, c) = (
        fake_upstream("a").await,
        fake_upstream("b").await,
        fake_upstream("c").await,
    );
    let gw = spawn_gateway(&one_route(&format!(
        "    servers: [\"{}\", \"{}\", \"{}\"]\n    balance: consistent_hash\n    hash_key: ip",
        a.addr, b.addr, c.addr
    )))
    .await;
    let mut seen = HashMap::new();
    for i in 0..20 {
        let ip = format!("198.51.100.{i}");
        let (_, first) = server_of(&gw, "/", Some(&ip)).await;
        for _ in 0..5 {
            assert_eq!(
                server_of(&gw, "/", Some(&ip)).await.1,
                first,
                "client {ip} moved"
            );
        }
        seen.insert(first, ());
    }
    assert!(seen.len() >= 2, "20 clients all on one server: {seen:?}");
}

#[tokio::test]
async fn health_check_removes_and_restores_a_server() {
    let a = fake_upstream("a").await;
    let mut b = fake_upstream("b").await;
    let b_addr = b.addr;
    let mut a = a;
    let gw = spawn_gateway(&one_route(&format!(
        "    servers: [\"{}\", \"{}\"]\n    health_check: {{ path: /health, interval: 300ms, timeout: 200ms }}\n    passive: {{ max_fails: 0 }}\n    retries: 0",
        a.addr, b.addr
    )))
    .await;
    b.stop();
    // Within two intervals (plus slack) every request goes to a.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let counts = distribution(&gw, 20).await;
    assert_eq!(counts.get("a"), Some(&20), "{counts:?}");
    assert_eq!(
        gw.metric(&format!(
            "gateway_upstream_healthy{{server=\"{b_addr}\",upstream=\"pool\"}}"
        ))
        .await,
        0.0
    );

    let b_again = fake_upstream_on("b", b_addr).await;
    let back = eventually(5, || async {
        let counts = distribution(&gw, 4).await;
        counts.contains_key("b").then_some(())
    })
    .await;
    assert!(back.is_some(), "restored server never got traffic again");

    // Every server known down by its health check: 503 without trying them, and
    // /health/ready says which pool has no healthy server.
    a.stop();
    drop(b_again);
    let unavailable = eventually(3, || async {
        let r = client().get(gw.url("/")).send().await.unwrap();
        (r.status() == 503).then_some(r.json::<Value>().await.unwrap())
    })
    .await
    .expect("503 once every server failed its checks");
    assert_eq!(unavailable["error"]["code"], "no_healthy_upstream");
    let ready = client()
        .get(gw.admin_url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["pools_without_healthy_server"][0], "pool");
}

#[tokio::test]
async fn get_is_retried_on_a_live_server_and_post_is_not_replayed() {
    let a = fake_upstream("a").await;
    let b = fake_upstream("b").await;
    // a reads each request and hangs up without answering.
    a.set_hangup(true);
    let gw = spawn_gateway(&one_route(&format!(
        "    servers: [\"{}\", \"{}\"]\n    retries: 2\n    passive: {{ max_fails: 0 }}",
        a.addr, b.addr
    )))
    .await;
    for _ in 0..6 {
        let (s, name) = server_of(&gw, "/", None).await;
        assert_eq!((s, name.as_str()), (200, "b"));
    }
    assert!(
        gw.metric("gateway_upstream_retries_total{upstream=\"pool\"}")
            .await
            >= 1.0
    );

    // POSTs: the ones sent to a fail with 502 and reach a exactly once.
    let before = a.hits();
    let mut failed = 0;
    for _ in 0..6 {
        let r = client()
            .post(gw.url("/"))
            .body("payload")
            .send()
            .await
            .unwrap();
        if r.status() == 502 {
            failed += 1;
        } else {
            assert_eq!(r.status(), 200);
        }
    }
    assert!(
        failed >= 1,
        "some POST should have landed on the broken server"
    );
    assert_eq!(a.hits() - before, failed, "a POST was replayed");
}

#[tokio::test]
async fn connect_failures_are_retried_for_any_method() {
    let live = fake_upstream("live").await;
    let dead_port = galion_tests::dead_addr();
    let dead = dead_port.addr;
    let gw = spawn_gateway(&one_route(&format!(
        "    servers: [\"{dead}\", \"{}\"]\n    retries: 1\n    passive: {{ max_fails: 0 }}",
        live.addr
    )))
    .await;
    for _ in 0..6 {
        let r = client().post(gw.url("/")).body("x").send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert!(
        gw.metric("gateway_upstream_requests_total{outcome=\"connect_error\",upstream=\"pool\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn passive_ejection_stops_sending_to_a_failing_server() {
    let a = fake_upstream("a").await;
    let b = fake_upstream("b").await;
    a.set_hangup(true);
    let gw = spawn_gateway(&one_route(&format!(
        "    servers: [\"{}\", \"{}\"]\n    retries: 1\n    passive: {{ max_fails: 2, cooldown: 30s }}",
        a.addr, b.addr
    )))
    .await;
    for _ in 0..10 {
        assert_eq!(server_of(&gw, "/", None).await.0, 200);
    }
    let after_ejection = a.hits();
    for _ in 0..10 {
        assert_eq!(server_of(&gw, "/", None).await.1, "b");
    }
    assert_eq!(
        a.hits(),
        after_ejection,
        "ejected server still got requests"
    );
    assert_eq!(after_ejection, 2);
}

#[tokio::test]
async fn all_servers_dead_is_502_and_slow_is_504() {
    let (d1, d2) = (galion_tests::dead_addr(), galion_tests::dead_addr());
    let (dead1, dead2) = (d1.addr, d2.addr);
    let slow = fake_upstream("slow").await;
    let conf = format!(
        r#"
upstreams:
  dead: {{ servers: ["{dead1}", "{dead2}"] }}
  slow: {{ servers: ["{}"], timeouts: {{ read: 300ms }}, retries: 0 }}
hosts:
  galion.app:
    default: true
    routes:
      - {{ name: dead, prefix: /dead, upstream: dead }}
      - {{ name: slow, prefix: /slow, upstream: slow }}
"#,
        slow.addr
    );
    let gw = spawn_gateway(&conf).await;
    let r = client().get(gw.url("/dead")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["request_id"], rid.as_str());
    assert!(v["error"]["code"].is_string() && v["error"]["message"].is_string());

    let r = client()
        .get(gw.url("/slow"))
        .header("x-test-sleep-ms", "2000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_timeout");
    assert_eq!(
        gw.metric("gateway_upstream_requests_total{outcome=\"timeout\",upstream=\"slow\"}")
            .await,
        1.0
    );
}
