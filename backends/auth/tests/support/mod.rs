//! Helpers shared by the galion-auth integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use galion_auth::AuthSettings;
use galion_common::db::{Db, DbOptions};
use galion_common::testing::{TestEnv, TestServer};
use galion_common::with_db;
use reqwest::StatusCode;
use serde_json::{json, Value};

pub const SERVICE_TOKEN: &str = "test-service-token";

pub async fn start(env: &TestEnv, tweak: impl FnOnce(&mut AuthSettings)) -> TestServer {
    let mut settings = AuthSettings::for_tests(&env.database_url, &env.dir);
    tweak(&mut settings);
    TestServer::spawn(
        "127.0.0.1:0".parse().unwrap(),
        |listener, shutdown| async move {
            galion_auth::run(settings, listener, shutdown)
                .await
                .expect("galion-auth failed");
        },
    )
    .await
}

pub async fn db(env: &TestEnv) -> Db {
    Db::connect(&env.database_url, &DbOptions::default())
        .await
        .unwrap()
}

pub fn http() -> reqwest::Client {
    reqwest::Client::new()
}

pub async fn post(srv: &TestServer, path: &str, body: Value) -> (StatusCode, Value) {
    let r = http()
        .post(format!("{}{path}", srv.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub async fn register(srv: &TestServer, email: &str, password: &str) -> Value {
    let (s, body) = post(
        srv,
        "/register",
        json!({"email": email, "password": password, "name": "Test User"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    body
}

pub async fn login(srv: &TestServer, email: &str, password: &str) -> Value {
    let (s, body) = post(srv, "/login", json!({"email": email, "password": password})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    body
}

pub async fn me(srv: &TestServer, token: &str) -> reqwest::Response {
    http()
        .get(format!("{}/me", srv.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

pub fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

/// The token in the newest mail to `to` whose subject matches.
pub async fn mail_token(db: &Db, to: &str, subject_like: &str) -> String {
    let rows: Vec<(String,)> = with_db!(db, |p| sqlx::query_as(
        "SELECT body FROM mail_outbox WHERE to_email = $1 AND subject LIKE $2 ORDER BY created_at DESC"
    )
    .bind(to)
    .bind(subject_like)
    .fetch_all(p)
    .await)
    .unwrap();
    let body = &rows.first().expect("no mail").0;
    body.split("token=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A metric of this service from `/metrics` (0 when absent); `name` with its
/// labels other than `service`, e.g. `auth_logins_total{outcome="failure",`.
pub async fn metric(srv: &TestServer, name: &str) -> i64 {
    let text = http()
        .get(format!("{}/metrics", srv.url))
        .bearer_auth(SERVICE_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = if name.ends_with(',') {
        format!("{name}service=\"auth\"}} ")
    } else {
        format!("{name}{{service=\"auth\"}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}
