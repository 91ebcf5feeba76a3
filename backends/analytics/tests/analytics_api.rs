//! galion-analytics over real HTTP (tokens from a real galion-auth), and the
//! outbox guarantee end to end: events written while analytics is down are
//! all delivered, exactly once, when it comes back. Who may write what
//! (issue 21, case 3): users and API keys only as themselves, the services
//! on behalf of anyone. SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use galion_analytics::ingest::{derived_id, Writer};
use galion_analytics::AnalyticsSettings;
use galion_auth::AuthSettings;
use galion_common::api_keys::ApiKeyFile;
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
    start_analytics_with_keys(env, addr, auth_url, &[]).await
}

/// sha256("dev-ingest-key"), as in conf/analytics.yaml and conf/dev.yaml.
const DEV_KEY_SHA256: &str = "21dd9e3b3f1633b88d69b73906f1a9e594beebd9b616bf89448c0a50a8b4ad10";

/// Analytics accepting the ingestion keys `keys` (name, sha256).
async fn start_analytics_with_keys(
    env: &TestEnv,
    addr: SocketAddr,
    auth_url: &str,
    keys: &[(&str, &str)],
) -> TestServer {
    let mut settings = AnalyticsSettings::for_tests(&env.database_url, &env.dir);
    settings.common.auth_url = auth_url.to_string();
    let keys: Vec<ApiKeyFile> = keys
        .iter()
        .map(|(name, sha256)| ApiKeyFile {
            name: name.to_string(),
            sha256: sha256.to_string(),
        })
        .collect();
    settings.api_keys = galion_analytics::settings::ingestion_keys(&keys).unwrap();
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

    let batch = json!({"events": [
        event("page.view", None, "2024-05-01T10:15:00Z"),
        event("page.view", None, "2024-05-01T11:15:00Z"),
        event("signup.click", None, "2024-05-02T09:00:00Z"),
    ]});
    let (s, _) = send(&an.url, None, &batch).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
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
    let (s, r) = send(&an.url, Some(SERVICE_TOKEN), &batch["events"]).await;
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

/// POST /events with exactly these headers (credentials of any kind).
async fn post(url: &str, headers: &[(&str, &str)], body: &Value) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{url}/events"))
        .json(body);
    for (name, value) in headers {
        // `header` appends: a name given twice is sent twice.
        req = req.header(*name, *value);
    }
    let r = req.send().await.unwrap();
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

fn rejected_indices(r: &Value) -> Vec<u64> {
    r["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["index"].as_u64().unwrap())
        .collect()
}

fn counts(r: &Value) -> (u64, u64, u64) {
    (
        r["received"].as_u64().unwrap(),
        r["stored"].as_u64().unwrap(),
        r["duplicates"].as_u64().unwrap(),
    )
}

/// The events an admin reads with `query`.
async fn read(an: &TestServer, admin: &str, query: &str) -> Vec<Value> {
    let (s, page) = get(&format!("{}/events?{query}", an.url), Some(admin)).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    page["events"].as_array().unwrap().clone()
}

/// The value of the counter `name` in the `/metrics` of the service at `base`.
async fn counter(base: &str, name: &str) -> u64 {
    let text = scrape(base).await;
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
}

fn instant(ev: &Value) -> chrono::DateTime<chrono::Utc> {
    ev["timestamp"].as_str().unwrap().parse().unwrap()
}

/// Issue 21, case 3: the gateway used to swap a user's JWT for the service
/// token, so a user could write any event about anyone. Now the user's JWT
/// reaches analytics, which stamps the events with the user.
async fn users_write_only_as_themselves(env: TestEnv) {
    // The relay is on: the services' own path keeps working beside users.
    let an_addr = free_addr().await;
    let auth = start_auth(&env, Some(format!("http://{an_addr}"))).await;
    let an = start_analytics(&env, an_addr, &auth.url).await;
    let db = db(&env).await;
    let (alice, alice_jwt) = token(&auth, &db, "alice@example.com", false).await;
    let (bob, bob_jwt) = token(&auth, &db, "bob@example.com", false).await;
    let (_, admin) = token(&auth, &db, "admin@example.com", true).await;
    let as_alice = format!("Bearer {alice_jwt}");
    let as_alice = [("authorization", as_alice.as_str())];

    let ids: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    let batch = json!([
        // Only what a client must send: stamped with alice, `client`, now.
        {"id": ids[0], "event_type": "page.view", "data": {"path": "/"}},
        // The attack: bob "deleted", reported as galion-users, last year.
        {"id": ids[1], "event_type": "user.deleted", "user_id": bob, "service": "users",
         "timestamp": "2025-01-01T00:00:00Z"},
        // Each part of it on its own.
        {"id": ids[2], "event_type": "user.deleted"},
        {"id": ids[3], "event_type": "page.view", "user_id": bob},
        {"id": ids[4], "event_type": "page.view", "service": "auth"},
        // Her own id and `client` may be sent; a backdated time is not kept.
        {"id": ids[5], "event_type": "page.view", "user_id": alice, "service": "client",
         "timestamp": "2024-05-01T00:00:00Z"},
    ]);
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    let (s, r) = post(&an.url, &as_alice, &batch).await;
    let after = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(counts(&r), (6, 2, 0), "{r}");
    assert_eq!(rejected_indices(&r), vec![1, 2, 3, 4], "{r}");
    for (i, needle) in [
        (0, "reserved"),
        (1, "reserved"),
        (2, "user_id"),
        (3, "service"),
    ] {
        let e = r["rejected"][i]["error"].as_str().unwrap();
        assert!(e.contains(needle), "{e}");
    }

    let stored = read(&an, &admin, &format!("user_id={alice}&type=page.view")).await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    let mut stored_ids: Vec<Uuid> = stored
        .iter()
        .map(|e| e["id"].as_str().unwrap().parse().unwrap())
        .collect();
    let mut expected = vec![
        derived_id(&Writer::User(alice), ids[0]),
        derived_id(&Writer::User(alice), ids[5]),
    ];
    stored_ids.sort();
    expected.sort();
    assert_eq!(stored_ids, expected);
    for ev in &stored {
        assert_eq!(ev["service"], "client", "{ev}");
        assert_eq!(ev["user_id"], alice.to_string(), "{ev}");
        let t = instant(ev);
        assert!(before <= t && t <= after, "stored at arrival: {ev}");
    }
    assert!(read(&an, &admin, "type=user.deleted").await.is_empty());

    // Nothing but forged events: 422, as for any batch without a valid event.
    let (s, r) = post(&an.url, &as_alice, &json!([batch[1], batch[3]])).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{r}");
    assert_eq!(r["error"]["code"], "validation_failed");
    // Idempotent per user: the same batch again stores nothing.
    let (s, r) = post(&an.url, &as_alice, &batch).await;
    assert_eq!((s, counts(&r)), (StatusCode::OK, (6, 0, 2)), "{r}");
    // The identity header the gateway sets is not what analytics goes by.
    let spoofed = bob.to_string();
    let (s, r) = post(
        &an.url,
        &[as_alice[0], ("x-user-id", spoofed.as_str())],
        &json!([{"id": Uuid::new_v4(), "event_type": "header.check"}]),
    )
    .await;
    assert_eq!((s, counts(&r)), (StatusCode::OK, (1, 1, 0)), "{r}");
    let checked = read(&an, &admin, "type=header.check").await;
    assert_eq!(checked[0]["user_id"], alice.to_string());
    // An admin writing is a user writing: stamped, no reserved types.
    let (s, _) = post(
        &an.url,
        &[("authorization", &format!("Bearer {admin}"))],
        &json!([{"id": Uuid::new_v4(), "event_type": "user.deleted", "user_id": bob}]),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    // Ids are per writer: bob sending alice's ids stores his own events.
    let (s, r) = post(
        &an.url,
        &[("authorization", &format!("Bearer {bob_jwt}"))],
        &json!([{"id": ids[0], "event_type": "page.view"}]),
    )
    .await;
    assert_eq!((s, counts(&r)), (StatusCode::OK, (1, 1, 0)), "{r}");
    assert_eq!(
        read(&an, &admin, &format!("user_id={bob}&type=page.view"))
            .await
            .len(),
        1
    );
    // Every refused event is counted: 4 + 2 + 4 (the resent batch) + 1.
    assert_eq!(
        counter(&an.url, "analytics_events_rejected_total").await,
        11
    );
    // Writing does not make a reader.
    let (s, _) = get(&format!("{}/events", an.url), Some(&alice_jwt)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Meanwhile the relay (service token) wrote about all three, as auth.
    eventually(
        "the relay's user.logged_in for alice",
        Duration::from_secs(30),
        || async {
            let evs = read(&an, &admin, &format!("user_id={alice}&type=user.logged_in")).await;
            (evs.len() == 1 && evs[0]["service"] == "auth").then_some(())
        },
    )
    .await;
    db.close().await;
    an.stop().await;
    auth.stop().await;
}

/// Event ids are the relay's idempotency key; a user who learned one must
/// not be able to store it first and turn the real delivery into a
/// "duplicate" that is dropped.
async fn users_cannot_block_service_event_ids(env: TestEnv) {
    let auth = start_auth(&env, None).await;
    let an = start_analytics(&env, "127.0.0.1:0".parse().unwrap(), &auth.url).await;
    let db = db(&env).await;
    let (alice, alice_jwt) = token(&auth, &db, "alice@example.com", false).await;
    let (_, admin) = token(&auth, &db, "admin@example.com", true).await;
    let as_alice = format!("Bearer {alice_jwt}");
    let as_alice = [("authorization", as_alice.as_str())];
    let as_service = format!("Bearer {SERVICE_TOKEN}");
    let as_service = [("authorization", as_service.as_str())];

    // An outbox id (v7), sent by alice before the relay delivers it.
    let id = Uuid::now_v7();
    let hers = json!([{"id": id, "event_type": "page.view"}]);
    let (s, r) = post(&an.url, &as_alice, &hers).await;
    assert_eq!((s, counts(&r)), (StatusCode::OK, (1, 1, 0)), "{r}");

    // The relay writes on behalf of a user, every field as sent.
    let relay = json!([{"id": id, "event_type": "user.logged_in", "user_id": alice,
                        "service": "auth", "timestamp": "2024-05-01T00:00:00Z", "data": {}}]);
    let (s, r) = post(&an.url, &as_service, &relay).await;
    assert_eq!((s, counts(&r)), (StatusCode::OK, (1, 1, 0)), "{r}");
    // Redelivery (at-least-once) is still a duplicate, for both writers.
    let (s, r) = post(&an.url, &as_service, &relay).await;
    assert_eq!((s, counts(&r)), (StatusCode::OK, (1, 0, 1)), "{r}");
    let (s, r) = post(&an.url, &as_alice, &hers).await;
    assert_eq!((s, counts(&r)), (StatusCode::OK, (1, 0, 1)), "{r}");

    let logged_in = read(&an, &admin, "type=user.logged_in").await;
    assert_eq!(logged_in.len(), 1);
    assert_eq!(logged_in[0]["id"], id.to_string());
    assert_eq!(logged_in[0]["service"], "auth");
    assert_eq!(logged_in[0]["user_id"], alice.to_string());
    assert_eq!(logged_in[0]["timestamp"], "2024-05-01T00:00:00Z");
    let page = read(&an, &admin, "type=page.view").await;
    assert_eq!(page.len(), 1);
    assert_eq!(
        page[0]["id"],
        derived_id(&Writer::User(alice), id).to_string()
    );

    // The service token may also write what no one else may: any user,
    // reserved types, the past.
    let someone = Uuid::new_v4();
    let (s, r) = post(
        &an.url,
        &as_service,
        &json!([{"id": Uuid::now_v7(), "event_type": "user.deleted", "user_id": someone,
                 "service": "users", "timestamp": "2024-05-02T00:00:00Z"}]),
    )
    .await;
    assert_eq!((s, counts(&r)), (StatusCode::OK, (1, 1, 0)), "{r}");
    let deleted = read(&an, &admin, &format!("user_id={someone}")).await;
    assert_eq!(
        (
            deleted[0]["event_type"].as_str(),
            deleted[0]["service"].as_str()
        ),
        (Some("user.deleted"), Some("users"))
    );
    db.close().await;
    an.stop().await;
    auth.stop().await;
}

/// Ingestion API keys (`X-API-Key`, as the gateway forwards it): events
/// stamped with the key's name and no user.
async fn api_keys_write_as_their_name(env: TestEnv) {
    let auth = start_auth(&env, None).await;
    let an = start_analytics_with_keys(
        &env,
        "127.0.0.1:0".parse().unwrap(),
        &auth.url,
        &[("dev-ingest", DEV_KEY_SHA256)],
    )
    .await;
    let db = db(&env).await;
    let (alice, alice_jwt) = token(&auth, &db, "alice@example.com", false).await;
    let (_, admin) = token(&auth, &db, "admin@example.com", true).await;
    let key = [("x-api-key", "dev-ingest-key")];

    let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    let batch = json!([
        {"id": ids[0], "event_type": "page.view", "timestamp": "2024-05-01T00:00:00Z"},
        {"id": ids[1], "event_type": "signup.click", "service": "dev-ingest", "user_id": null},
        {"id": ids[2], "event_type": "page.view", "user_id": alice},
        {"id": ids[3], "event_type": "page.view", "service": "auth"},
        {"id": ids[4], "event_type": "user.registered"},
    ]);
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    let (s, r) = post(&an.url, &key, &batch).await;
    let after = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(counts(&r), (5, 2, 0), "{r}");
    assert_eq!(rejected_indices(&r), vec![2, 3, 4], "{r}");
    let writer = Writer::ApiKey("dev-ingest".into());
    for (i, kind) in [(0, "page.view"), (1, "signup.click")] {
        let evs = read(&an, &admin, &format!("type={kind}")).await;
        assert_eq!(evs.len(), 1, "{evs:?}");
        let ev = &evs[0];
        assert_eq!(ev["id"], derived_id(&writer, ids[i]).to_string());
        assert_eq!(ev["service"], "dev-ingest");
        assert_eq!(ev["user_id"], Value::Null);
        let t = instant(ev);
        assert!(before <= t && t <= after, "stored at arrival: {ev}");
    }

    // The key decides when present (as at the gateway): with alice's JWT
    // beside it the event is still the key's, and a resend a duplicate.
    let as_alice = format!("Bearer {alice_jwt}");
    let (s, r) = post(
        &an.url,
        &[key[0], ("authorization", as_alice.as_str())],
        &json!([batch[0]]),
    )
    .await;
    assert_eq!((s, counts(&r)), (StatusCode::OK, (1, 0, 1)), "{r}");
    // ...and a bad key is refused even beside the service token.
    let as_service = format!("Bearer {SERVICE_TOKEN}");
    for headers in [
        vec![("x-api-key", "not-a-key")],
        vec![("x-api-key", DEV_KEY_SHA256)],
        vec![("x-api-key", "")],
        vec![
            ("x-api-key", "not-a-key"),
            ("authorization", as_service.as_str()),
        ],
        vec![key[0], key[0]],
    ] {
        let (s, r) = post(&an.url, &headers, &json!([batch[1]])).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert_eq!(r["error"]["code"], "invalid_api_key", "{headers:?}");
    }
    // No credentials at all, or a key where a bearer token is expected.
    for headers in [vec![], vec![("authorization", "Bearer dev-ingest-key")]] {
        let (s, r) = post(&an.url, &headers, &json!([batch[1]])).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert_eq!(r["error"]["code"], "invalid_token", "{headers:?}");
    }
    // A key does not read.
    let r = reqwest::Client::new()
        .get(format!("{}/events", an.url))
        .header("x-api-key", "dev-ingest-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(counter(&an.url, "analytics_events_rejected_total").await, 3);
    db.close().await;
    an.stop().await;
    auth.stop().await;
}

engine_tests!(
    users_write_only_as_themselves,
    users_cannot_block_service_event_ids,
    api_keys_write_as_their_name
);

/// Bad ingestion keys stop the start with a reason naming where they came
/// from: the variable, or the file and its `api_keys`.
#[test]
fn binary_rejects_bad_api_keys() {
    let dir = std::env::temp_dir().join(format!("galion-an-keys-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let yaml = dir.join("analytics.yaml");
    std::fs::write(
        &yaml,
        format!("api_keys:\n  - {{ name: auth, sha256: {DEV_KEY_SHA256} }}\n"),
    )
    .unwrap();
    let run = |env: &[(&str, &str)], config: Option<&std::path::Path>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_galion-analytics"));
        cmd.env("GALION_DATA_DIR", &dir)
            .env("GALION_SERVICE_TOKEN", "t")
            .env("GALION_ANALYTICS_LISTEN", "127.0.0.1:0")
            .env_remove("GALION_ANALYTICS_API_KEYS")
            .env_remove("GALION_ANALYTICS_CONFIG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&[("GALION_ANALYTICS_API_KEYS", "dev-ingest-key")], None);
    assert!(err.contains("GALION_ANALYTICS_API_KEYS"), "{err}");
    let err = run(&[("GALION_ANALYTICS_API_KEYS", "dev:not-a-digest")], None);
    assert!(
        err.contains("GALION_ANALYTICS_API_KEYS") && err.contains("64 hex"),
        "{err}"
    );
    let err = run(&[], Some(&yaml));
    assert!(
        err.contains("analytics.yaml") && err.contains("api_keys") && err.contains("reserved"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
