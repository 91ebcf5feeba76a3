//! Jails and bans end to end: the login jail, ignoreip, expiry and repeat
//! offenders, persistence across a restart, the admin API, `action: drop` at
//! accept, auth rejections as jail events, and bans shared by two instances
//! through the real Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use galion_tests::redis_server::{cleanup, shared_redis, unique_prefix};
use galion_tests::{
    client, client_from, eventually, fake_upstream, spawn_gateway, Gateway, ADMIN_DIGEST,
};
use serde_json::{json, Value};

fn config(up: SocketAddr, store: &str, bantime: &str) -> String {
    format!(
        r#"
admin: {{ token_sha256: ["{ADMIN_DIGEST}"] }}
{store}
auth:
  api_keys:
    - {{ name: ingest, sha256: "{zero}", roles: [service] }}
jails:
  login:
    on:
      - {{ route: login, status: [401, 403] }}
    maxretry: 5
    findtime: 1m
    bantime: {bantime}
    bantime_increment: {{ factor: 2, maxtime: 1h }}
    ignoreip: [127.0.0.3/32]
  bad-keys:
    on:
      - {{ event: auth_rejected, reasons: [bad_api_key] }}
    maxretry: 3
    findtime: 1m
    bantime: 1h
  scanners:
    on:
      - {{ status: [404] }}
      - {{ event: malformed }}
    maxretry: 3
    findtime: 1m
    bantime: 1h
    action: drop
hosts:
  galion.app:
    default: true
    routes:
      - {{ name: login, exact: /api/v1/auth/login, upstream: up }}
      - {{ name: ingest, prefix: /ingest, upstream: up, auth: api_key }}
      - {{ name: other, prefix: /app, upstream: up }}
upstreams:
  up: {{ servers: ["{up}"] }}
"#,
        zero = "0".repeat(64)
    )
}

async fn status(c: &reqwest::Client, gw: &Gateway, path: &str) -> u16 {
    c.get(gw.url(path))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn failed_login(c: &reqwest::Client, gw: &Gateway) -> u16 {
    c.post(gw.url("/api/v1/auth/login"))
        .header("x-test-status", "401")
        .body(r#"{"email":"a@b.c","password":"wrong"}"#)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn bans(gw: &Gateway) -> Vec<Value> {
    let r = gw.admin(reqwest::Method::GET, "/admin/bans", None).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["bans"].as_array().cloned().unwrap_or_default()
}

fn ban_of<'a>(list: &'a [Value], target: &str) -> Option<&'a Value> {
    list.iter().find(|b| b["target"] == target)
}

#[tokio::test]
async fn login_jail_bans_expires_doubles_survives_restart_and_unbans() {
    let up = fake_upstream("up").await;
    let mut gw = spawn_gateway(&config(up.addr, "", "3s")).await;
    let attacker = client_from(2);
    let bystander = client_from(1);
    let ignored = client_from(3);

    for _ in 0..5 {
        assert_eq!(failed_login(&attacker, &gw).await, 401);
    }
    // The sixth request is refused on every route, before any upstream work.
    let hits = up.hits();
    assert_eq!(status(&attacker, &gw, "/app/home").await, 403);
    assert_eq!(failed_login(&attacker, &gw).await, 403);
    assert_eq!(up.hits(), hits);
    let r = attacker.get(gw.url("/app/x")).send().await.unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden");
    // Other clients are unaffected; an ignoreip address is never banned.
    assert_eq!(status(&bystander, &gw, "/app/home").await, 200);
    for _ in 0..12 {
        assert_eq!(failed_login(&ignored, &gw).await, 401);
    }
    assert_eq!(status(&ignored, &gw, "/app/home").await, 200);

    let list = bans(&gw).await;
    let b = ban_of(&list, "127.0.0.2/32").expect("ban listed");
    assert_eq!(b["jail"], "login");
    assert_eq!(b["offences"], 1);
    assert!(b["remaining_seconds"].as_u64().unwrap() <= 3);
    assert!(b["reason"].as_str().unwrap().contains("login"));
    assert!(ban_of(&list, "127.0.0.3/32").is_none());
    assert_eq!(gw.metric("gateway_bans_total{jail=\"login\"}").await, 1.0);
    assert_eq!(gw.metric("gateway_bans_active").await, 1.0);

    // The ban expires after bantime.
    let lifted = eventually(10, || async {
        (status(&attacker, &gw, "/app/home").await == 200).then_some(())
    })
    .await;
    assert!(lifted.is_some(), "ban never expired");

    // A second offence doubles it (3 s → 6 s).
    for _ in 0..5 {
        assert_eq!(failed_login(&attacker, &gw).await, 401);
    }
    assert_eq!(status(&attacker, &gw, "/app/home").await, 403);
    let list = bans(&gw).await;
    let b = ban_of(&list, "127.0.0.2/32").unwrap();
    assert_eq!(b["offences"], 2);
    let remaining = b["remaining_seconds"].as_u64().unwrap();
    assert!(
        (4..=6).contains(&remaining),
        "second ban lasts 6 s, {remaining} s left"
    );

    // It survives a restart (persisted in the state dir).
    gw.restart().await;
    assert_eq!(
        status(&attacker, &gw, "/app/home").await,
        403,
        "{}",
        gw.log()
    );
    assert!(ban_of(&bans(&gw).await, "127.0.0.2/32").is_some());
    assert!(gw.dir.path().join("state/bans.json").exists());

    // The admin API lifts it.
    let r = gw
        .admin(reqwest::Method::DELETE, "/admin/bans/127.0.0.2", None)
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(status(&attacker, &gw, "/app/home").await, 200);
    let r = gw
        .admin(reqwest::Method::DELETE, "/admin/bans/127.0.0.2", None)
        .await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn manual_bans_drop_action_and_auth_rejections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = fake_upstream("up").await;
    let gw = spawn_gateway(&config(up.addr, "", "1h")).await;

    // Bad API keys are auth rejections: the bad-keys jail bans after three.
    let prober = client_from(5);
    for _ in 0..3 {
        let r = prober
            .get(gw.url("/ingest"))
            .header("x-api-key", "guess")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    assert_eq!(status(&prober, &gw, "/app/x").await, 403);
    assert_eq!(
        ban_of(&bans(&gw).await, "127.0.0.5/32").unwrap()["jail"],
        "bad-keys"
    );

    // Scanners (404s) are dropped: new connections are closed at accept.
    let scanner = client_from(6);
    for _ in 0..3 {
        assert_eq!(status(&scanner, &gw, "/wp-login.php").await, 404);
    }
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from(([127, 0, 0, 6], 0))).unwrap();
    let closed = match sock.connect(gw.http).await {
        Err(_) => true,
        Ok(mut s) => {
            let _ = s
                .write_all(b"GET /app/x HTTP/1.1\r\nHost: galion.app\r\n\r\n")
                .await;
            let mut buf = [0u8; 64];
            matches!(
                tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await,
                Ok(Ok(0)) | Ok(Err(_))
            )
        }
    };
    assert!(closed, "a dropped client got an answer");
    assert_eq!(status(&client_from(7), &gw, "/app/x").await, 200);

    // Bans by hand: a network, listed, then lifted.
    let r = gw
        .admin(
            reqwest::Method::POST,
            "/admin/bans",
            Some(json!({"target": "127.0.0.8/29", "duration": "10m", "reason": "abuse report"})),
        )
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(status(&client_from(9), &gw, "/app/x").await, 403);
    assert_eq!(status(&client_from(17), &gw, "/app/x").await, 200);
    let b = bans(&gw).await;
    let m = ban_of(&b, "127.0.0.8/29").unwrap();
    assert_eq!(m["jail"], "manual");
    assert_eq!(m["reason"], "abuse report");
    for bad in [
        json!({"target": "not-an-ip"}),
        json!({"target": "1.2.3.4", "duration": "soon"}),
        json!({"nope": 1}),
    ] {
        let r = gw
            .admin(reqwest::Method::POST, "/admin/bans", Some(bad.clone()))
            .await;
        assert_eq!(r.status(), 400, "{bad}");
    }
    let r = client()
        .get(gw.admin_url("/admin/bans"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the admin API needs the token");
    let r = gw
        .admin(reqwest::Method::DELETE, "/admin/bans/127.0.0.8%2F29", None)
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(status(&client_from(9), &gw, "/app/x").await, 200);
}

#[tokio::test]
async fn bans_are_shared_by_instances_through_redis() {
    let shared = shared_redis();
    let prefix = unique_prefix("bans");
    let store = format!("store: {{ redis: {{ url: \"{shared}\", prefix: \"{prefix}\" }} }}");
    let up = fake_upstream("up").await;
    let a = spawn_gateway(&config(up.addr, &store, "1h")).await;
    let b = spawn_gateway(&config(up.addr, &store, "1h")).await;
    for gw in [&a, &b] {
        let ready = eventually(10, || async {
            (gw.metric("gateway_redis_up").await == 1.0).then_some(())
        })
        .await;
        assert!(ready.is_some(), "{}", gw.log());
    }
    let attacker = client_from(12);
    // Failures spread over both instances count together (shared jail counters).
    for i in 0..5 {
        let gw = if i % 2 == 0 { &a } else { &b };
        assert_eq!(failed_login(&attacker, gw).await, 401);
    }
    let banned_at = Instant::now();
    // Jails are fed when a request has been answered: the request after the
    // fifth failure may race the ban by a moment (a new connection, as the
    // failed logins' bodies were not read).
    let banned = eventually(2, || async {
        (status(&attacker, &a, "/app/x").await == 403).then_some(())
    })
    .await;
    assert!(banned.is_some(), "instance a never banned the attacker");
    let seen = eventually(5, || async {
        (status(&attacker, &b, "/app/x").await == 403).then_some(())
    })
    .await;
    assert!(seen.is_some(), "instance b never enforced the ban");
    eprintln!(
        "ban propagated to the second instance in {:?}",
        banned_at.elapsed()
    );
    assert_eq!(status(&client_from(13), &b, "/app/x").await, 200);

    // Unban on b lifts it on a too.
    let r = b
        .admin(reqwest::Method::DELETE, "/admin/bans/127.0.0.12", None)
        .await;
    assert_eq!(r.status(), 204);
    let lifted = eventually(5, || async {
        (status(&attacker, &a, "/app/x").await == 200).then_some(())
    })
    .await;
    assert!(lifted.is_some(), "unban did not reach instance a");

    // A manual ban on a reaches b.
    let r = a
        .admin(
            reqwest::Method::POST,
            "/admin/bans",
            Some(json!({"target": "127.0.0.14"})),
        )
        .await;
    assert_eq!(r.status(), 201);
    let seen = eventually(5, || async {
        (status(&client_from(14), &b, "/app/x").await == 403).then_some(())
    })
    .await;
    assert!(seen.is_some());
    cleanup(&shared, &prefix).await;
}
