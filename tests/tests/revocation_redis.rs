//! Cluster mode: a logout published by galion-auth on Redis is enforced by the
//! gateway through its subscription, even when the revocation feed it polls is
//! down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use galion_tests::jwt::{claims, now, FakeAuth, TestKey};
use galion_tests::redis_server::{cleanup, connect, shared_redis, unique_prefix};
use galion_tests::{client, eventually, fake_upstream, spawn_gateway};

#[tokio::test]
async fn a_revocation_published_on_redis_is_refused_without_the_poll() {
    let ed = TestKey::ed25519("ed-1");
    let auth = FakeAuth::start(&[&ed]).await;
    let up = fake_upstream("up").await;
    let shared = shared_redis();
    let prefix = unique_prefix("revocations");
    let channel = format!("{prefix}revocations");
    let conf = format!(
        r#"
store:
  redis: {{ url: "{shared}", prefix: "{prefix}", revocations_channel: "{channel}" }}
auth:
  jwt:
    jwks_url: {jwks}
    issuer: https://galion.test
    audience: [galion]
  revocation:
    url: {rev}
    interval: 1h
hosts:
  galion.app:
    default: true
    routes:
      - {{ name: jwt, prefix: /jwt, upstream: up, auth: jwt }}
upstreams:
  up: {{ servers: ["{up}"] }}
"#,
        jwks = auth.jwks_url(),
        rev = auth.revocations_url(),
        up = up.addr
    );
    let gw = spawn_gateway(&conf).await;
    let ready = eventually(10, || async {
        (gw.metric("gateway_redis_up").await == 1.0).then_some(())
    })
    .await;
    assert!(ready.is_some(), "{}", gw.log());
    // The feed is down and polled hourly: only Redis can bring the news.
    auth.set_down(true);
    let mut c = claims("u1", "user");
    c["jti"] = serde_json::json!("jti-redis-1");
    let token = ed.sign(&c);
    let get = || async {
        client()
            .get(gw.url("/jwt"))
            .bearer_auth(&token)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    assert_eq!(get().await, 200, "{}", gw.log());
    // Give the subscription a moment to be in place after redis_up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut r = connect(&shared).await;
    let msg = serde_json::json!({"jti": "jti-redis-1", "exp": now() + 600}).to_string();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg(msg)
        .query_async(&mut r)
        .await
        .unwrap();
    let published = Instant::now();
    let refused = eventually(5, || async { (get().await == 401).then_some(()) }).await;
    assert!(refused.is_some(), "revoked token still accepted");
    eprintln!(
        "revocation enforced {:?} after publishing",
        published.elapsed()
    );
    assert!(
        gw.metric("gateway_auth_rejected_total{reason=\"revoked\"}")
            .await
            >= 1.0
    );
    // Other tokens are unaffected.
    let other = ed.sign(&claims("u2", "user"));
    let r = client()
        .get(gw.url("/jwt"))
        .bearer_auth(other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    cleanup(&shared, &prefix).await;
}
