//! Per-email login throttle (issue 21, case 4): guesses at one account's
//! password from many addresses, which the gateway's per-IP jail does not
//! see, stop after `LOGIN_FAILURE_LIMIT` failures, for known and unknown
//! emails alike.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use galion_auth::account::{LOGIN_COOLDOWN, LOGIN_FAILURE_LIMIT};
use galion_common::db::Db;
use galion_common::testing::{TestEnv, TestServer};
use galion_common::{engine_tests, with_db};
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::*;

const PASSWORD: &str = "correct horse battery";

/// Status, `Retry-After` and body of a login.
async fn attempt(
    srv: &TestServer,
    email: &str,
    password: &str,
) -> (StatusCode, Option<u64>, Value) {
    let r = http()
        .post(format!("{}/login", srv.url))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (status, retry_after, r.json().await.unwrap())
}

fn assert_throttled((status, retry_after, body): &(StatusCode, Option<u64>, Value)) {
    assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let wait = retry_after.expect("Retry-After");
    assert!((1..=LOGIN_COOLDOWN.as_secs()).contains(&wait), "{wait}");
    assert_eq!(body["error"]["code"], "rate_limited");
}

async fn failures_stored(db: &Db) -> i64 {
    let (n,): (i64,) = with_db!(db, |p| sqlx::query_as(
        "SELECT COUNT(*) FROM login_failures"
    )
    .fetch_one(p)
    .await)
    .unwrap();
    n
}

/// Ten wrong passwords, then even the right one is refused for a while; an
/// unknown email is treated the same way; other accounts are unaffected;
/// once the cool-down is over the owner gets in and the slate is wiped.
async fn failures_throttle_one_email(env: TestEnv) {
    let srv = start(&env, |_| {}).await;
    let db = db(&env).await;
    register(&srv, "alice@example.com", PASSWORD).await;
    register(&srv, "bob@example.com", PASSWORD).await;

    let mut throttled = Vec::new();
    for email in ["alice@example.com", "ghost@example.com"] {
        for i in 0..LOGIN_FAILURE_LIMIT {
            // Case and spaces do not make another email.
            let shown = if i % 2 == 0 {
                email.to_uppercase()
            } else {
                format!(" {email}")
            };
            let (s, retry, body) = attempt(&srv, &shown, "not the password").await;
            assert_eq!((s, retry), (StatusCode::UNAUTHORIZED, None), "{email} #{i}");
            assert_eq!(body["error"]["code"], "invalid_credentials");
        }
        let refused = attempt(&srv, email, PASSWORD).await;
        assert_throttled(&refused);
        throttled.push(refused.2);
    }
    // Known or not, the same answer.
    assert_eq!(throttled[0], throttled[1]);
    assert_eq!(
        attempt(&srv, "bob@example.com", PASSWORD).await.0,
        StatusCode::OK
    );

    assert_eq!(
        metric(&srv, "auth_logins_total{outcome=\"throttled\",").await,
        2
    );

    // The cool-down runs from the newest failure: move them all past it
    // (still inside the counting window) rather than wait.
    let past = galion_common::time::now()
        - chrono::Duration::from_std(LOGIN_COOLDOWN).unwrap()
        - chrono::Duration::seconds(5);
    with_db!(&db, |p| sqlx::query(
        "UPDATE login_failures SET failed_at = $1"
    )
    .bind(past)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    assert_eq!(failures_stored(&db).await, 2 * LOGIN_FAILURE_LIMIT);
    assert_eq!(
        attempt(&srv, "alice@example.com", PASSWORD).await.0,
        StatusCode::OK
    );
    // Alice's failures are gone, the ghost's remain.
    assert_eq!(failures_stored(&db).await, LOGIN_FAILURE_LIMIT);
    // Past the cool-down the ghost's next guess is checked, and with the
    // limit still reached inside the window it starts a new cool-down.
    let (s, _, _) = attempt(&srv, "ghost@example.com", "still wrong").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_throttled(&attempt(&srv, "ghost@example.com", "wrong again").await);
    srv.stop().await;
}

/// Forty guesses at once (from as many addresses, as far as the backend
/// can tell): at most the limit are answered 401, the rest 429, and the
/// right password afterwards is refused too.
async fn a_burst_of_guesses_gets_at_most_the_limit(env: TestEnv) {
    let srv = start(&env, |_| {}).await;
    register(&srv, "carol@example.com", PASSWORD).await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..40 {
        let url = srv.url.clone();
        set.spawn(async move {
            let r = http()
                .post(format!("{url}/login"))
                .json(&json!({"email": "carol@example.com", "password": format!("guess {i}")}))
                .send()
                .await
                .unwrap();
            r.status()
        });
    }
    let (mut answered, mut refused) = (0, 0);
    while let Some(status) = set.join_next().await {
        match status.unwrap() {
            StatusCode::UNAUTHORIZED => answered += 1,
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        answered <= LOGIN_FAILURE_LIMIT,
        "{answered} guesses answered"
    );
    assert_eq!(answered + refused, 40);
    assert_throttled(&attempt(&srv, "carol@example.com", PASSWORD).await);
    srv.stop().await;
}

engine_tests!(
    failures_throttle_one_email,
    a_burst_of_guesses_gets_at_most_the_limit,
);
