//! Rate limits end to end: 429 and the RateLimit fields, keys, accuracy over a
//! minute (single node and two instances sharing the real Redis), and a Redis
//! outage in the middle of traffic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use galion_tests::redis_server::{cleanup, keys, shared_redis, unique_prefix, RedisServer};
use galion_tests::{client_from, eventually, fake_upstream, spawn_gateway, Gateway};

fn routes_config(up: SocketAddr, store: &str, limit: &str) -> String {
    format!(
        r#"
{store}
rate_limits:
  default: {{ rate: 1000/s, burst: 1000 }}
hosts:
  galion.app:
    default: true
    routes:
      - {{ name: api, prefix: /api, upstream: up, rate_limit: {limit} }}
      - {{ name: by-header, prefix: /tenant, upstream: up, rate_limit: {{ rate: 2/min, burst: 2, key: "header:x-tenant" }} }}
      - {{ name: free, prefix: /free, upstream: up, rate_limit: off }}
      - {{ name: other, prefix: /, upstream: up }}
upstreams:
  up: {{ servers: ["{up}"] }}
"#
    )
}

#[tokio::test]
async fn refused_with_429_retry_after_and_ratelimit_fields() {
    let up = fake_upstream("up").await;
    let gw = spawn_gateway(&routes_config(up.addr, "", "{ rate: 3/min, burst: 3 }")).await;
    let c = client_from(21);
    for remaining in [2, 1, 0] {
        let r = c.get(gw.url("/api/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["ratelimit-policy"], "\"api\";q=3;w=60");
        let rl = r.headers()["ratelimit"].to_str().unwrap().to_owned();
        assert!(rl.starts_with(&format!("\"api\";r={remaining};t=")), "{rl}");
    }
    let r = c.get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry), "retry-after {retry}");
    let rl = r.headers()["ratelimit"].to_str().unwrap().to_owned();
    assert!(rl.starts_with("\"api\";r=0;t="), "{rl}");
    assert!(r.headers().contains_key("x-request-id"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(
        up.hits(),
        3,
        "a refused request must not reach the upstream"
    );
    assert_eq!(
        gw.metric("gateway_rate_limited_total{route=\"api\"}").await,
        1.0
    );

    // Another client IP has its own budget; `off` routes are not limited.
    assert_eq!(
        client_from(22)
            .get(gw.url("/api/x"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for _ in 0..10 {
        assert_eq!(c.get(gw.url("/free")).send().await.unwrap().status(), 200);
    }
    // Keyed by a header: each tenant has its own budget, whatever the IP.
    for tenant in ["a", "b"] {
        for _ in 0..2 {
            let r = c
                .get(gw.url("/tenant"))
                .header("x-tenant", tenant)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
        let r = client_from(23)
            .get(gw.url("/tenant"))
            .header("x-tenant", tenant)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429, "tenant {tenant}");
    }
}

/// Floods `gw` from one client IP until `deadline`; returns (accepted, refused, other).
async fn flood(gw: SocketAddr, from: u8, deadline: Instant) -> (u64, u64, u64) {
    let ok = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let (ok, limited, other) = (ok.clone(), limited.clone(), other.clone());
        let c = client_from(from);
        let url = format!("http://{gw}/api/flood");
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match c.get(&url).send().await.map(|r| r.status().as_u16()) {
                    Ok(200) => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(429) => limited.fetch_add(1, Ordering::Relaxed),
                    _ => other.fetch_add(1, Ordering::Relaxed),
                };
                // ~400 requests/s per task: hundreds of times the allowed rate.
                tokio::time::sleep(Duration::from_micros(2500)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (
        ok.load(Ordering::Relaxed),
        limited.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
    )
}

/// 100/min with burst 10 over `secs` allows 10 + 100·secs/60 requests.
fn allowance(elapsed: Duration) -> f64 {
    10.0 + 100.0 * elapsed.as_secs_f64() / 60.0
}

fn assert_within_2pct(accepted: u64, elapsed: Duration, what: &str) {
    let want = allowance(elapsed);
    let err = (accepted as f64 - want).abs() / want;
    eprintln!(
        "{what}: accepted {accepted} in {elapsed:?}, allowance {want:.1}, error {:.2}%",
        err * 100.0
    );
    assert!(
        err <= 0.02,
        "{what}: accepted {accepted}, allowance {want:.1}"
    );
}

const LIMIT: &str = "{ rate: 100/min, burst: 10 }";

#[tokio::test]
async fn one_client_flooding_for_a_minute_gets_its_allowance() {
    let up = fake_upstream("up").await;
    let gw = spawn_gateway(&routes_config(up.addr, "", LIMIT)).await;
    let start = Instant::now();
    let (ok, limited, other) = flood(gw.http, 31, start + Duration::from_secs(60)).await;
    assert_eq!(other, 0, "no other status than 200/429");
    assert!(limited > 1000, "the client did flood ({limited} refused)");
    assert_within_2pct(ok, start.elapsed(), "single node");
}

#[tokio::test]
async fn two_instances_sharing_redis_enforce_one_budget() {
    let shared = shared_redis();
    let prefix = unique_prefix("rl-accuracy");
    let store = format!("store: {{ redis: {{ url: \"{shared}\", prefix: \"{prefix}\" }} }}");
    let up = fake_upstream("up").await;
    let a = spawn_gateway(&routes_config(up.addr, &store, LIMIT)).await;
    let b = spawn_gateway(&routes_config(up.addr, &store, LIMIT)).await;
    for gw in [&a, &b] {
        let ready = eventually(10, || async {
            (gw.metric("gateway_redis_up").await == 1.0).then_some(())
        })
        .await;
        assert!(
            ready.is_some(),
            "gateway never reached redis:\n{}",
            gw.log()
        );
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs(60);
    let (ra, rb) = tokio::join!(flood(a.http, 32, deadline), flood(b.http, 32, deadline));
    let elapsed = start.elapsed();
    assert_eq!(ra.2 + rb.2, 0, "no other status than 200/429");
    assert!(ra.0 > 0 && rb.0 > 0, "both instances served: {ra:?} {rb:?}");
    assert_within_2pct(ra.0 + rb.0, elapsed, "two instances, shared redis");
    assert_eq!(
        a.metric("gateway_store_fallback_total{component=\"rate_limit\"}")
            .await,
        0.0
    );
    assert!(!keys(&shared, &prefix).await.is_empty());
    cleanup(&shared, &prefix).await;
}

#[tokio::test]
async fn redis_outage_falls_back_to_local_limits_and_recovers() {
    let mut redis = RedisServer::start().await;
    let prefix = unique_prefix("rl-outage");
    let store = format!(
        "store: {{ redis: {{ url: \"{}\", prefix: \"{prefix}\", timeout: 200ms }} }}",
        redis.url()
    );
    let up = fake_upstream("up").await;
    let gw: Gateway =
        spawn_gateway(&routes_config(up.addr, &store, "{ rate: 5/s, burst: 5 }")).await;
    let up_again = |gw: &Gateway| {
        let gw = gw.admin;
        async move {
            let m = galion_tests::client()
                .get(format!("http://{gw}/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            m.lines().any(|l| l == "gateway_redis_up 1").then_some(())
        }
    };
    assert!(
        eventually(10, || up_again(&gw)).await.is_some(),
        "{}",
        gw.log()
    );
    let c = client_from(41);
    let burst = |c: reqwest::Client, n: usize, url: String| async move {
        let mut codes = Vec::new();
        for _ in 0..n {
            codes.push(
                c.get(&url)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0),
            );
        }
        codes
    };
    let codes = burst(c.clone(), 20, gw.url("/api/r")).await;
    assert!(codes.iter().all(|c| *c == 200 || *c == 429), "{codes:?}");
    assert!(codes.contains(&429), "{codes:?}");
    let redis_keys = keys(&redis.url(), &prefix).await;
    assert!(
        redis_keys.iter().any(|k| k.contains(":rl:")),
        "limits are kept in redis: {redis_keys:?}"
    );

    // Redis dies mid-traffic: no 5xx, limits still enforced (locally).
    redis.stop();
    let start = Instant::now();
    let mut all = Vec::new();
    while start.elapsed() < Duration::from_secs(2) {
        all.extend(burst(c.clone(), 10, gw.url("/api/r")).await);
    }
    assert!(all.iter().all(|c| *c == 200 || *c == 429), "{all:?}");
    let passed = all.iter().filter(|c| **c == 200).count();
    assert!(all.len() > 40, "{}", all.len());
    assert!(
        passed <= 5 + 5 * 3 + 5,
        "local limit not enforced: {passed} of {}",
        all.len()
    );
    assert_eq!(gw.metric("gateway_redis_up").await, 0.0);
    assert!(
        gw.metric("gateway_store_fallback_total{component=\"rate_limit\"}")
            .await
            > 0.0
    );
    let outage_logs = gw.log().matches("redis unreachable").count();
    assert_eq!(outage_logs, 1, "one log line per outage:\n{}", gw.log());

    // Redis returns (empty): the gateway goes back to it.
    redis.start_again().await;
    assert!(
        eventually(10, || up_again(&gw)).await.is_some(),
        "{}",
        gw.log()
    );
    let codes = burst(c.clone(), 3, gw.url("/api/r")).await;
    assert!(codes.iter().all(|c| *c == 200 || *c == 429), "{codes:?}");
    let redis_keys = keys(&redis.url(), &prefix).await;
    assert!(
        redis_keys.iter().any(|k| k.contains(":rl:")),
        "redis used again: {redis_keys:?}"
    );
    assert!(gw.log().contains("redis reachable"));
}

#[tokio::test]
async fn ipv6_clients_share_their_64_and_mapped_ipv4_is_ipv4() {
    let up = fake_upstream("up").await;
    // Loopback is a trusted proxy here, so X-Forwarded-For names the client.
    let conf = format!(
        "trusted_proxies: [127.0.0.1/32]\n{}",
        routes_config(up.addr, "", "{ rate: 2/min, burst: 2 }")
    );
    let gw = spawn_gateway(&conf).await;
    let c = galion_tests::client();
    let as_client = |ip: &'static str| {
        let c = c.clone();
        let url = gw.url("/api/v6");
        async move {
            c.get(url)
                .header("x-forwarded-for", ip)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    // Two addresses of one /64 share one budget of 2.
    assert_eq!(as_client("2001:db8:1:2::1").await, 200);
    assert_eq!(as_client("2001:db8:1:2:ffff::99").await, 200);
    assert_eq!(as_client("2001:db8:1:2::5").await, 429);
    // The next /64 is another client.
    assert_eq!(as_client("2001:db8:1:3::1").await, 200);
    // An IPv4-mapped IPv6 address is the IPv4 address.
    assert_eq!(as_client("203.0.113.9").await, 200);
    assert_eq!(as_client("::ffff:203.0.113.9").await, 200);
    assert_eq!(as_client("203.0.113.9").await, 429);
}

/// `rate_limits.exempt` (a load generator): no limit applies to those
/// clients, every other client is limited as before, and the exempt client
/// is still banned by a jail when it misbehaves.
#[tokio::test]
async fn exempt_clients_are_not_limited_but_still_jailed() {
    let up = fake_upstream("up").await;
    let conf = format!(
        r#"
rate_limits:
  exempt: [127.0.0.44/32]
jails:
  probe:
    on:
      - {{ status: [404] }}
    maxretry: 3
    findtime: 1m
    bantime: 1m
hosts:
  galion.app:
    default: true
    routes:
      - {{ name: api, prefix: /api, upstream: up, rate_limit: {{ rate: 1/min, burst: 1 }} }}
      - {{ name: nothing, exact: /missing, respond: {{ status: 404 }} }}
upstreams:
  up: {{ servers: ["{}"] }}
"#,
        up.addr
    );
    let gw = spawn_gateway(&conf).await;
    let (load, other) = (client_from(44), client_from(45));
    for _ in 0..10 {
        let r = load.get(gw.url("/api/x")).send().await.unwrap();
        assert_eq!(r.status(), 200, "the exempt client was limited");
    }
    assert_eq!(
        other.get(gw.url("/api/x")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        other.get(gw.url("/api/x")).send().await.unwrap().status(),
        429
    );
    // A client that claims the exempt address, from a peer no proxy list
    // trusts, is still itself: still limited.
    let lying = other
        .get(gw.url("/api/x"))
        .header("x-forwarded-for", "127.0.0.44")
        .send()
        .await
        .unwrap();
    assert_eq!(lying.status(), 429);
    // Exempt from limits, not from bans.
    for _ in 0..3 {
        assert_eq!(
            load.get(gw.url("/missing")).send().await.unwrap().status(),
            404
        );
    }
    let banned = eventually(5, || async {
        let s = load
            .get(gw.url("/api/x"))
            .send()
            .await
            .map(|r| r.status().as_u16());
        matches!(s, Ok(403) | Err(_)).then_some(())
    })
    .await;
    assert!(
        banned.is_some(),
        "the exempt client was not jailed:\n{}",
        gw.log()
    );
}
