//! galion-auth account flows over real HTTP, each scenario on SQLite and on
//! PostgreSQL (`<scenario>::sqlite`, `<scenario>::postgres`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use galion_common::testing::TestEnv;
use galion_common::{engine_tests, with_db};
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::*;

async fn full_flow(env: TestEnv) {
    let srv = start(&env, |_| {}).await;
    let user = register(&srv, "  Ann@Example.COM ", "correct horse battery").await;
    assert_eq!(user["email"], "ann@example.com");
    assert_eq!(user["role"], "user");
    assert_eq!(user["email_verified"], false);
    assert!(user.get("password_hash").is_none() && !user.to_string().contains("argon2"));

    let t1 = login(&srv, "ann@example.com", "correct horse battery").await;
    assert_eq!(t1["token_type"], "Bearer");
    assert_eq!(t1["expires_in"], 900);
    let access1 = t1["access_token"].as_str().unwrap().to_string();
    let r = me(&srv, &access1).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["id"], user["id"]);

    let (s, t2) = post(
        &srv,
        "/refresh",
        json!({"refresh_token": t1["refresh_token"]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{t2}");
    assert_ne!(t2["refresh_token"], t1["refresh_token"]);
    let access2 = t2["access_token"].as_str().unwrap();
    assert_eq!(me(&srv, access2).await.status(), StatusCode::OK);

    let r = http()
        .post(format!("{}/logout", srv.url))
        .bearer_auth(access2)
        .json(&json!({"refresh_token": t2["refresh_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // The refresh token of the logged-out family, and its access token, are dead.
    let (s, body) = post(
        &srv,
        "/refresh",
        json!({"refresh_token": t2["refresh_token"]}),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    let r = me(&srv, access2).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().get("www-authenticate").is_some());

    // The gateway's revocation feed lists the jti, behind the service token.
    let r = http()
        .get(format!("{}/revocations?since=0", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = http()
        .get(format!("{}/revocations?since=0", srv.url))
        .bearer_auth(SERVICE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let feed: Value = r.json().await.unwrap();
    let jti = jsonwebtoken::dangerous::insecure_decode::<galion_common::jwt::Claims>(access2)
        .unwrap()
        .claims
        .jti;
    assert!(
        feed["revocations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["jti"] == jti.as_str()),
        "{feed}"
    );
    let r = http()
        .get(format!(
            "{}/revocations?since=1970-01-01T00:00:00Z",
            srv.url
        ))
        .bearer_auth(SERVICE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["revocations"],
        feed["revocations"]
    );
    let later = feed["server_time"].as_i64().unwrap() + 5;
    let r = http()
        .get(format!("{}/revocations?since={later}", srv.url))
        .bearer_auth(SERVICE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["revocations"], json!([]));

    // Events were written with the changes.
    let db = db(&env).await;
    let types: Vec<(String,)> = with_db!(&db, |p| sqlx::query_as(
        "SELECT event_type FROM outbox ORDER BY created_at, id"
    )
    .fetch_all(p)
    .await)
    .unwrap();
    let types: Vec<&str> = types.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(
        types,
        ["user.registered", "user.logged_in", "user.logged_out"]
    );
    db.close().await;
    srv.stop().await;
}

async fn registration_rules(env: TestEnv) {
    let srv = start(&env, |_| {}).await;
    register(&srv, "bob@example.com", "correct horse battery").await;
    let (s, body) = post(
        &srv,
        "/register",
        json!({"email": " BOB@example.com", "password": "another long one", "name": "B"}),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "conflict");
    for (email, password, name) in [
        ("carol@example.com", "short", "Carol"),
        ("carol@example.com", "Carol@Example.com", "Carol"),
        ("carol@example.com", "correct horse battery", "   "),
        ("not-an-email", "correct horse battery", "Carol"),
    ] {
        let (s, body) = post(
            &srv,
            "/register",
            json!({"email": email, "password": password, "name": name}),
        )
        .await;
        assert_eq!(
            s,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{email} {password} {name}: {body}"
        );
        assert_eq!(body["error"]["code"], "validation_failed");
    }
    let (s, _) = post(
        &srv,
        "/register",
        json!({"email": "carol@example.com", "password": "correct horse battery"}),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let r = http()
        .post(format!("{}/register", srv.url))
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
    srv.stop().await;
}

async fn login_failures_are_identical(env: TestEnv) {
    let srv = start(&env, |_| {}).await;
    register(&srv, "dan@example.com", "correct horse battery").await;
    let wrong = http()
        .post(format!("{}/login", srv.url))
        .json(&json!({"email": "dan@example.com", "password": "wrong password!"}))
        .send()
        .await
        .unwrap();
    let unknown = http()
        .post(format!("{}/login", srv.url))
        .json(&json!({"email": "nobody@example.com", "password": "wrong password!"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    let (a, b) = (wrong.bytes().await.unwrap(), unknown.bytes().await.unwrap());
    assert_eq!(a, b, "401 bodies differ");
    let db = db(&env).await;
    let (n,): (i64,) = with_db!(&db, |p| sqlx::query_as(
        "SELECT COUNT(*) FROM outbox WHERE event_type = 'user.login_failed'"
    )
    .fetch_one(p)
    .await)
    .unwrap();
    assert_eq!(n, 2);
    db.close().await;
    srv.stop().await;
}

async fn refresh_reuse_revokes_family(env: TestEnv) {
    let srv = start(&env, |_| {}).await;
    register(&srv, "eve@example.com", "correct horse battery").await;
    let t1 = login(&srv, "eve@example.com", "correct horse battery").await;
    let other = login(&srv, "eve@example.com", "correct horse battery").await; // another device
    let (s, t2) = post(
        &srv,
        "/refresh",
        json!({"refresh_token": t1["refresh_token"]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // Replaying the spent token: refused, and the whole family dies.
    let (s, _) = post(
        &srv,
        "/refresh",
        json!({"refresh_token": t1["refresh_token"]}),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(metric(&srv, "auth_refresh_reuse_detected_total").await, 1);
    let (s, _) = post(
        &srv,
        "/refresh",
        json!({"refresh_token": t2["refresh_token"]}),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(
        me(&srv, t2["access_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    // Another family (device) is untouched.
    let (s, _) = post(
        &srv,
        "/refresh",
        json!({"refresh_token": other["refresh_token"]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = post(&srv, "/refresh", json!({"refresh_token": "made-up"})).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    srv.stop().await;
}

async fn injection_shaped_input(env: TestEnv) {
    let srv = start(&env, |_| {}).await;
    let evil_name = "Robert'); DROP TABLE users;--";
    let (s, body) = post(&srv, "/register", json!({"email": "bobby@example.com", "password": "correct horse battery", "name": evil_name})).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(body["name"], evil_name);
    let (s, _) = post(&srv, "/register", json!({"email": "x'; DROP TABLE users;--@example.com", "password": "correct horse battery", "name": "x"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    for email in ["' OR '1'='1", "bobby@example.com' --", "%"] {
        let (s, _) = post(
            &srv,
            "/login",
            json!({"email": email, "password": "' OR '1'='1"}),
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{email}");
    }
    let (s, _) = post(&srv, "/refresh", json!({"refresh_token": "' OR 1=1 --"})).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let r = http()
        .get(format!("{}/revocations?since=1%27%20OR%201=1", srv.url))
        .bearer_auth(SERVICE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Everything still there.
    login(&srv, "bobby@example.com", "correct horse battery").await;
    srv.stop().await;
}

async fn email_verification_and_password_reset(env: TestEnv) {
    let srv = start(&env, |_| {}).await;
    let db = db(&env).await;
    register(&srv, "fay@example.com", "correct horse battery").await;
    // Ask for a second link (the first was mailed at registration).
    let early = login(&srv, "fay@example.com", "correct horse battery").await;
    let r = http()
        .post(format!("{}/verify-email/request", srv.url))
        .bearer_auth(early["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let token = mail_token(&db, "fay@example.com", "Confirm%").await;
    let (s, _) = post(&srv, "/verify-email/confirm", json!({"token": token})).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = post(&srv, "/verify-email/confirm", json!({"token": token})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "single use");
    let t = login(&srv, "fay@example.com", "correct horse battery").await;
    let access = t["access_token"].as_str().unwrap();
    assert_eq!(
        me(&srv, access).await.json::<Value>().await.unwrap()["email_verified"],
        true
    );
    let r = http()
        .post(format!("{}/verify-email/request", srv.url))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let (s, _) = post(
        &srv,
        "/password-reset/request",
        json!({"email": "ghost@example.com"}),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, _) = post(
        &srv,
        "/password-reset/request",
        json!({"email": "FAY@example.com"}),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let reset = mail_token(&db, "fay@example.com", "Reset%").await;
    let (s, _) = post(
        &srv,
        "/password-reset/confirm",
        json!({"token": reset, "password": "short"}),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) = post(
        &srv,
        "/password-reset/confirm",
        json!({"token": reset, "password": "a brand new passphrase"}),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = post(
        &srv,
        "/password-reset/confirm",
        json!({"token": reset, "password": "yet another passphrase"}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "single use");
    // Old sessions are gone, the old password too.
    assert_eq!(me(&srv, access).await.status(), StatusCode::UNAUTHORIZED);
    let (s, _) = post(
        &srv,
        "/refresh",
        json!({"refresh_token": t["refresh_token"]}),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = post(
        &srv,
        "/login",
        json!({"email": "fay@example.com", "password": "correct horse battery"}),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    login(&srv, "fay@example.com", "a brand new passphrase").await;
    db.close().await;
    srv.stop().await;
}

async fn health_and_metrics(env: TestEnv) {
    let srv = start(&env, |_| {}).await;
    for path in ["/health", "/health/ready"] {
        let r = http()
            .get(format!("{}{path}", srv.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    let (s, _) = post(
        &srv,
        "/login",
        json!({"email": "x@example.com", "password": "whatever123"}),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let r = http()
        .get(format!("{}/metrics", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        metric(&srv, "auth_logins_total{outcome=\"failure\",").await,
        1
    );
    assert_eq!(
        metric(
            &srv,
            "http_requests_total{code=\"401\",method=\"POST\",route=\"/login\","
        )
        .await,
        1
    );
    let r = http()
        .get(format!("{}/nope", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "not_found"
    );
    let r = http()
        .get(format!("{}/login", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
    srv.stop().await;
}

engine_tests!(
    full_flow,
    registration_rules,
    login_failures_are_identical,
    refresh_reuse_revokes_family,
    injection_shaped_input,
    email_verification_and_password_reset,
    health_and_metrics,
);
