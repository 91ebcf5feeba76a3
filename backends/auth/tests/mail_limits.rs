//! Issue 21, case 4, in galion-auth: the mail-sending endpoints are limited
//! per account whatever the client address, and `/metrics` wants a token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use galion_auth::email::MAIL_LIMIT;
use galion_common::auth::ServiceToken;
use galion_common::db::Db;
use galion_common::testing::{TestEnv, TestServer};
use galion_common::{engine_tests, with_db};
use reqwest::StatusCode;
use serde_json::json;
use support::*;

const METRICS_TOKEN: &str = "test-metrics-token";

/// Status and raw body of `POST {path}`, for comparing answers byte for byte.
async fn answer(
    client: &reqwest::Client,
    srv: &TestServer,
    path: &str,
    body: serde_json::Value,
) -> (StatusCode, String) {
    let r = client
        .post(format!("{}{path}", srv.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

/// Fires `n` identical requests at once (concurrently, as an attacker
/// would) and returns every answer.
async fn flood(
    srv: &TestServer,
    path: &'static str,
    bearer: Option<String>,
    body: serde_json::Value,
    n: usize,
) -> Vec<(StatusCode, String)> {
    let client = http();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (client, url, bearer, body) = (
            client.clone(),
            srv.url.clone(),
            bearer.clone(),
            body.clone(),
        );
        set.spawn(async move {
            let mut req = client.post(format!("{url}{path}")).json(&body);
            if let Some(t) = bearer {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.unwrap();
            (r.status(), r.text().await.unwrap())
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap());
    }
    out
}

async fn mails(db: &Db, to: &str, subject_like: &str) -> i64 {
    let (n,): (i64,) = with_db!(db, |p| sqlx::query_as(
        "SELECT COUNT(*) FROM mail_outbox WHERE to_email = $1 AND subject LIKE $2"
    )
    .bind(to)
    .bind(subject_like)
    .fetch_one(p)
    .await)
    .unwrap();
    n
}

async fn scrape(srv: &TestServer, token: Option<&str>) -> reqwest::Response {
    let mut req = http().get(format!("{}/metrics", srv.url));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

/// The attack of the report: 40 reset requests for one victim. At most
/// [`MAIL_LIMIT`] mails are queued, every answer is the one an unknown
/// address gets, other accounts are unaffected, and the limit is a window.
async fn reset_flood_queues_at_most_the_limit(env: TestEnv) {
    let srv = start(&env, |_| {}).await;
    let db = db(&env).await;
    register(&srv, "victim@example.com", "correct horse battery").await;
    register(&srv, "bystander@example.com", "correct horse battery").await;
    let client = http();
    let nobody = answer(
        &client,
        &srv,
        "/password-reset/request",
        json!({"email": "nobody@example.com"}),
    )
    .await;
    assert_eq!(nobody.0, StatusCode::ACCEPTED, "{}", nobody.1);

    // Case and spaces do not make another address.
    let answers = flood(
        &srv,
        "/password-reset/request",
        None,
        json!({"email": " Victim@Example.com "}),
        40,
    )
    .await;
    assert_eq!(answers.len(), 40);
    for a in &answers {
        assert_eq!(a, &nobody, "a throttled answer differs from a plain one");
    }
    assert_eq!(mails(&db, "victim@example.com", "Reset%").await, MAIL_LIMIT);
    let (tokens,): (i64,) = with_db!(&db, |p| sqlx::query_as(
        "SELECT COUNT(*) FROM one_time_tokens t JOIN users u ON u.id = t.user_id \
         WHERE u.email = $1 AND t.purpose = 'password_reset'"
    )
    .bind("victim@example.com")
    .fetch_one(p)
    .await)
    .unwrap();
    assert_eq!(tokens, MAIL_LIMIT);

    // The limit is per account: someone else still gets their mail.
    let other = answer(
        &client,
        &srv,
        "/password-reset/request",
        json!({"email": "bystander@example.com"}),
    )
    .await;
    assert_eq!(other, nobody);
    assert_eq!(mails(&db, "bystander@example.com", "Reset%").await, 1);

    let text = scrape(&srv, Some(SERVICE_TOKEN))
        .await
        .text()
        .await
        .unwrap();
    let throttled = 40 - MAIL_LIMIT;
    assert!(
        text.contains(&format!(
            "auth_mail_throttled_total{{purpose=\"password_reset\",service=\"auth\"}} {throttled}"
        )),
        "{text}"
    );

    // Once the mails are older than the window the account may get one again
    // (moved back in time rather than waited for).
    let two_hours_ago = galion_common::time::now() - chrono::Duration::hours(2);
    with_db!(&db, |p| sqlx::query(
        "UPDATE one_time_tokens SET created_at = $1 WHERE purpose = 'password_reset'"
    )
    .bind(two_hours_ago)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    let again = answer(
        &client,
        &srv,
        "/password-reset/request",
        json!({"email": "victim@example.com"}),
    )
    .await;
    assert_eq!(again, nobody);
    assert_eq!(
        mails(&db, "victim@example.com", "Reset%").await,
        MAIL_LIMIT + 1
    );
    srv.stop().await;
}

/// `POST /verify-email/request` has the same limit; the mail sent at
/// registration counts, and throttled answers look like the others.
async fn verification_mail_is_limited_too(env: TestEnv) {
    let srv = start(&env, |_| {}).await;
    let db = db(&env).await;
    register(&srv, "gus@example.com", "correct horse battery").await;
    assert_eq!(mails(&db, "gus@example.com", "Confirm%").await, 1);
    let access = login(&srv, "gus@example.com", "correct horse battery").await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let answers = flood(&srv, "/verify-email/request", Some(access), json!({}), 10).await;
    let first = &answers[0];
    assert_eq!(first.0, StatusCode::ACCEPTED, "{}", first.1);
    for a in &answers {
        assert_eq!(a, first);
    }
    assert_eq!(mails(&db, "gus@example.com", "Confirm%").await, MAIL_LIMIT);
    let text = scrape(&srv, Some(SERVICE_TOKEN))
        .await
        .text()
        .await
        .unwrap();
    let throttled = 10 - (MAIL_LIMIT - 1);
    assert!(
        text.contains(&format!(
            "auth_mail_throttled_total{{purpose=\"verify_email\",service=\"auth\"}} {throttled}"
        )),
        "{text}"
    );
    srv.stop().await;
}

/// With a metrics token configured, `/metrics` takes that token and no
/// other (not the service token), while the health routes need none.
async fn metrics_token_guards_metrics_only(env: TestEnv) {
    let srv = start(&env, |s| {
        s.common.metrics_token = Some(ServiceToken::new(METRICS_TOKEN.into()));
    })
    .await;
    for token in [None, Some(SERVICE_TOKEN), Some("x")] {
        let r = scrape(&srv, token).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{token:?}");
        assert!(r
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer")));
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_token");
    }
    let r = scrape(&srv, Some(METRICS_TOKEN)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    // The refused scrapes are counted like any request.
    assert!(
        text.contains(
            "http_requests_total{code=\"401\",method=\"GET\",route=\"/metrics\",service=\"auth\"} 3"
        ),
        "{text}"
    );
    for path in ["/health", "/health/live", "/health/ready"] {
        let r = http()
            .get(format!("{}{path}", srv.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    srv.stop().await;
}

engine_tests!(
    reset_flood_queues_at_most_the_limit,
    verification_mail_is_limited_too,
    metrics_token_guards_metrics_only,
);
