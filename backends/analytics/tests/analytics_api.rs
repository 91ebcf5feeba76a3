//! galion-analytics over real HTTP (tokens from a real galion-auth), and the
//! outbox guarantee end to end: events written while analytics is down are
//! all delivered, exactly once, when it comes back. SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use galion_analytics::AnalyticsSettings;
use galion_auth::AuthSettings;
use galion_common::db::{Db, DbOptions};
use galion_common::testing::{eventually, free_addr, TestEnv, TestServer};
use galion_common::{engine_tests, with_db};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

const SERVICE_TOKEN: &str = "test-service-token";

/// `/metrics` of the service at `base`, which requires the service token
/// when no metrics token is configured.
async fn scrape(base: &str) -> String {
    let r = reqwest::Client::new()
        .get(format!("{base}/metrics"))
        .bearer_auth(SERVICE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.text().await.unwrap()
}

async fn start_auth(env: &TestEnv, analytics: Option<String>) -> TestServer {
    let mut settings = AuthSettings::for_tests(&env.database_url, &env.dir);
    settings.common.analytics_url = analytics;
    TestServer::spawn("127.0.0.1:0".parse().unwrap(), |l, s| async move {
        galion_auth::run(settings, l, s)
            .await
            .expect("galion-auth failed");
    })
    .await
}

async fn start_analytics(env: &TestEnv, addr: SocketAddr, auth_url: &str) -> TestServer {
    let mut settings = AnalyticsSettings::for_tests(&env.database_url, &env.dir);
    settings.common.auth_url = auth_url.to_string();
    TestServer::spawn(addr, |l, s| async move {
        galion_analytics::run(settings, l, s)
            .await
            .expect("galion-analytics failed");
    })
    .await
}

async fn db(env: &TestEnv) -> Db {
    Db::connect(&env.database_url, &DbOptions::default())
        .await
        .unwrap()
}

/// Registers and logs in; makes the account admin first when asked.
async fn token(auth: &TestServer, db: &Db, email: &str, admin: bool) -> (Uuid, String) {
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{}/register", auth.url))
        .json(&json!({"email": email, "password": "correct horse battery", "name": "T"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = Uuid::parse_str(r.json::<Value>().await.unwrap()["id"].as_str().unwrap()).unwrap();
    if admin {
        with_db!(db, |p| sqlx::query(
            "UPDATE users SET role = 'admin' WHERE id = $1"
        )
        .bind(id)
        .execute(p)
        .await
        .map(|_| ()))
        .unwrap();
    }
    let r = c
        .post(format!("{}/login", auth.url))
        .json(&json!({"email": email, "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    (
        id,
        r.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string(),
    )
}

fn event(kind: &str, user: Option<Uuid>, ts: &str) -> Value {
    json!({"id": Uuid::new_v4(), "event_type": kind, "user_id": user, "service": "test", "timestamp": ts, "data": {"k": 1}})
}

async fn send(url: &str, token: Option<&str>, body: &Value) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{url}/events"))
        .json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn get(url: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn ingestion(env: TestEnv) {
    let auth = start_auth(&env, None).await;
    let an = start_analytics(&env, "127.0.0.1:0".parse().unwrap(), &auth.url).await;
    let db = db(&env).await;
    let (_, user) = token(&auth, &db, "user@example.com", false).await;
    let (_, admin) = token(&auth, &db, "admin@example.com", true).await;

    let batch = json!({"events": [
        event("page.view", None, "2024-05-01T10:15:00Z"),
        event("page.view", None, "2024-05-01T11:15:00Z"),
        event("signup.click", None, "2024-05-02T09:00:00Z"),
    ]});
    let (s, _) = send(&an.url, None, &batch).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = send(&an.url, Some(&user), &batch).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = send(&an.url, Some("not-the-token"), &batch).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, r) = send(&an.url, Some(SERVICE_TOKEN), &batch).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        (
            r["received"].as_u64(),
            r["stored"].as_u64(),
            r["duplicates"].as_u64()
        ),
        (Some(3), Some(3), Some(0))
    );
    // Redelivery is harmless; a bare array is accepted too.
    let (s, r) = send(&an.url, Some(&admin), &batch["events"]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (r["stored"].as_u64(), r["duplicates"].as_u64()),
        (Some(0), Some(3))
    );
    // Per-event validation.
    let mixed = json!([event("ok.event", None, "2024-05-03T00:00:00Z"), {"id": "nope"}, event("Bad Type!", None, "2024-05-03T00:00:00Z"),
                       event("future", None, "2999-01-01T00:00:00Z"), event("x'); DROP TABLE events;--", None, "2024-05-03T00:00:00Z")]);
    let (s, r) = send(&an.url, Some(SERVICE_TOKEN), &mixed).await;
    assert_eq!(s, StatusCode::OK);
    let idx: Vec<u64> = r["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["index"].as_u64().unwrap())
        .collect();
    assert_eq!((r["stored"].as_u64(), idx), (Some(1), vec![1, 2, 3, 4]));
    let (s, _) = send(&an.url, Some(SERVICE_TOKEN), &json!([{"id": 1}])).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) = send(&an.url, Some(SERVICE_TOKEN), &json!([])).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let big: Vec<Value> = (0..1001)
        .map(|_| event("bulk", None, "2024-05-03T00:00:00Z"))
        .collect();
    let (s, _) = send(&an.url, Some(SERVICE_TOKEN), &json!({"events": big})).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let max: Vec<Value> = (0..1000)
        .map(|_| event("bulk", None, "2024-05-03T00:00:00Z"))
        .collect();
    let (s, r) = send(&an.url, Some(SERVICE_TOKEN), &json!({"events": max})).await;
    assert_eq!((s, r["stored"].as_u64()), (StatusCode::OK, Some(1000)));

    let anonymous = reqwest::get(format!("{}/metrics", an.url)).await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let text = scrape(&an.url).await;
    for line in [
        "analytics_events_received_total{service=\"analytics\"} 1012",
        "analytics_events_stored_total{service=\"analytics\"} 1004",
        "analytics_events_rejected_total{service=\"analytics\"} 1006",
    ] {
        assert!(text.contains(line), "{line} missing in\n{text}");
    }
    db.close().await;
    an.stop().await;
    auth.stop().await;
}

async fn queries_and_stats(env: TestEnv) {
    let auth = start_auth(&env, None).await;
    let an = start_analytics(&env, "127.0.0.1:0".parse().unwrap(), &auth.url).await;
    let db = db(&env).await;
    let (_, user) = token(&auth, &db, "user@example.com", false).await;
    let (_, admin) = token(&auth, &db, "admin@example.com", true).await;
    let u = Uuid::new_v4();
    let batch = json!([
        event("page.view", Some(u), "2024-05-01T10:15:00Z"),
        event("page.view", Some(u), "2024-05-01T10:45:30.123456Z"),
        event("page.view", None, "2024-05-01T11:15:00Z"),
        event("signup.click", Some(u), "2024-05-02T09:00:00Z"),
    ]);
    let (s, _) = send(&an.url, Some(SERVICE_TOKEN), &batch).await;
    assert_eq!(s, StatusCode::OK);

    let base = &an.url;
    for t in [None, Some(user.as_str()), Some(SERVICE_TOKEN)] {
        let (s, _) = get(&format!("{base}/events"), t).await;
        assert!(
            s == StatusCode::UNAUTHORIZED || s == StatusCode::FORBIDDEN,
            "{s}"
        );
        let (s, _) = get(&format!("{base}/stats"), t).await;
        assert!(
            s == StatusCode::UNAUTHORIZED || s == StatusCode::FORBIDDEN,
            "{s}"
        );
    }
    let a = Some(admin.as_str());
    let (s, all) = get(
        &format!("{base}/events?from=2024-01-01T00:00:00Z&to=2025-01-01T00:00:00Z"),
        a,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(all["events"].as_array().unwrap().len(), 4);
    assert_eq!(
        all["events"][0]["event_type"], "signup.click",
        "newest first"
    );
    let (_, views) = get(&format!("{base}/events?type=page.view&user_id={u}"), a).await;
    assert_eq!(views["events"].as_array().unwrap().len(), 2);
    let (_, window) = get(
        &format!("{base}/events?from=2024-05-01T10:30:00Z&to=2024-05-01T11:00:00Z"),
        a,
    )
    .await;
    assert_eq!(window["events"].as_array().unwrap().len(), 1);
    assert_eq!(
        window["events"][0]["timestamp"],
        "2024-05-01T10:45:30.123456Z"
    );
    let (_, p1) = get(&format!("{base}/events?type=page.view&limit=2"), a).await;
    assert_eq!(
        (
            p1["events"].as_array().unwrap().len(),
            p1["next_offset"].as_i64()
        ),
        (2, Some(2))
    );
    let (_, p2) = get(&format!("{base}/events?type=page.view&limit=2&offset=2"), a).await;
    assert_eq!(
        (
            p2["events"].as_array().unwrap().len(),
            p2["next_offset"].clone()
        ),
        (1, Value::Null)
    );
    let (s, _) = get(&format!("{base}/events?user_id=1%20OR%201=1"), a).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, none) = get(&format!("{base}/events?type=%27%20OR%20%271%27=%271"), a).await;
    assert_eq!(
        (s, none["events"].as_array().unwrap().len()),
        (StatusCode::OK, 0)
    );

    let (s, hourly) = get(
        &format!("{base}/stats?bucket=hour&from=2024-05-01T00:00:00Z&to=2024-05-03T00:00:00Z"),
        a,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{hourly}");
    assert_eq!(
        hourly["series"],
        json!([
            {"bucket_start": "2024-05-01T10:00:00Z", "event_type": "page.view", "count": 2},
            {"bucket_start": "2024-05-01T11:00:00Z", "event_type": "page.view", "count": 1},
            {"bucket_start": "2024-05-02T09:00:00Z", "event_type": "signup.click", "count": 1},
        ])
    );
    let (_, daily) = get(
        &format!("{base}/stats?bucket=day&type=page.view&from=1714521600&to=1714780800"),
        a,
    )
    .await;
    assert_eq!(
        daily["series"],
        json!([{"bucket_start": "2024-05-01T00:00:00Z", "event_type": "page.view", "count": 3}])
    );
    let (s, _) = get(&format!("{base}/stats?bucket=week"), a).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    db.close().await;
    an.stop().await;
    auth.stop().await;
}

async fn count_registered(db: &Db) -> (i64, i64) {
    with_db!(db, |p| sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT user_id) FROM events WHERE event_type = 'user.registered'"
    )
    .fetch_one(p)
    .await)
    .unwrap()
}

async fn outbox_survives_analytics_outage(env: TestEnv) {
    let analytics_addr = free_addr().await;
    let analytics_url = format!("http://{analytics_addr}");
    let auth = start_auth(&env, Some(analytics_url.clone())).await;
    let db = db(&env).await;
    let c = reqwest::Client::new();
    for i in 0..50 {
        let r = c
            .post(format!("{}/register", auth.url))
            .json(&json!({"email": format!("u{i}@example.com"), "password": "correct horse battery", "name": "U"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let sql =
        "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL AND event_type = 'user.registered'";
    let (pending,): (i64,) = with_db!(&db, |p| sqlx::query_as(sql).fetch_one(p).await).unwrap();
    assert_eq!(pending, 50, "nothing can have been delivered yet");
    eventually(
        "outbox_events_pending = 50 on auth",
        Duration::from_secs(10),
        || async {
            let text = scrape(&auth.url).await;
            text.contains("outbox_events_pending{service=\"auth\"} 50")
                .then_some(())
        },
    )
    .await;

    let an = start_analytics(&env, analytics_addr, &auth.url).await;
    eventually(
        "50 user.registered events in analytics",
        Duration::from_secs(30),
        || async { (count_registered(&db).await.0 >= 50).then_some(()) },
    )
    .await;
    eventually("the outbox to drain", Duration::from_secs(10), || async {
        let (n,): (i64,) = with_db!(&db, |p| sqlx::query_as(
            "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL"
        )
        .fetch_one(p)
        .await)
        .unwrap();
        (n == 0).then_some(())
    })
    .await;
    assert_eq!(count_registered(&db).await, (50, 50));

    // A restarted auth whose outbox lost its "delivered" marks (a crash
    // between POST and mark) resends everything: still exactly 50.
    auth.stop().await;
    with_db!(&db, |p| sqlx::query(
        "UPDATE outbox SET delivered_at = NULL"
    )
    .execute(p)
    .await
    .map(|_| ()))
    .unwrap();
    let auth = start_auth(&env, Some(analytics_url)).await;
    eventually(
        "the resent outbox to drain",
        Duration::from_secs(30),
        || async {
            let (n,): (i64,) = with_db!(&db, |p| sqlx::query_as(
                "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL"
            )
            .fetch_one(p)
            .await)
            .unwrap();
            (n == 0).then_some(())
        },
    )
    .await;
    assert_eq!(count_registered(&db).await, (50, 50));
    let text = scrape(&an.url).await;
    assert!(
        text.contains("analytics_events_stored_total{service=\"analytics\"} 50"),
        "{text}"
    );
    db.close().await;
    an.stop().await;
    auth.stop().await;
}

engine_tests!(
    ingestion,
    queries_and_stats,
    outbox_survives_analytics_outage
);

#[test]
fn binary_rejects_bad_database_url() {
    let dir = std::env::temp_dir().join(format!("galion-an-cli-{}", Uuid::new_v4().simple()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_galion-analytics"))
        .env("GALION_DATA_DIR", &dir)
        .env("GALION_SERVICE_TOKEN", "t")
        .env("GALION_ANALYTICS_LISTEN", "127.0.0.1:0")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/x")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot connect to the database"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
