//! The real services behind the gateway's dev config.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};

use galion_tests::stack::Stack;
use galion_tests::{binary, client, eventually, free_addr};
use serde_json::{json, Value};

#[tokio::test]
async fn register_login_me_logout_through_the_gateway() {
    let s = Stack::start().await;
    let c = client();
    let email = "ada@example.com";
    let password = "correct horse battery staple";

    let r = c
        .post(s.url("/api/v1/auth/register"))
        .header("host", "galion.app")
        .json(&json!({"email": email, "password": password, "name": "Ada"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", s.log("galion-auth"));
    let user: Value = r.json().await.unwrap();
    assert!(user.get("password_hash").is_none());

    let r = c
        .post(s.url("/api/v1/auth/login"))
        .header("host", "galion.app")
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let tokens: Value = r.json().await.unwrap();
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(tokens["token_type"], "Bearer");

    // Without a token the gateway refuses before the upstream.
    let r = c.get(s.url("/api/v1/users/me")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("www-authenticate").is_some());

    let me: Value = c
        .get(s.url("/api/v1/users/me"))
        .bearer_auth(&access)
        .header("x-user-role", "admin")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["email"], email, "{me}");
    assert_eq!(me["role"], "user");
    let r = c
        .get(s.url("/api/v1/auth/me"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A user is not an admin: the list route needs the role at the gateway.
    let r = c
        .get(s.url("/api/v1/users"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // Logout, then the same access token is refused at the gateway within a second.
    let r = c
        .post(s.url("/api/v1/auth/logout"))
        .bearer_auth(&access)
        .json(&json!({"refresh_token": refresh}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", s.log("galion-auth"));
    // The backend refuses it at once; the gateway itself within a second (its
    // revocation poll), which the revoked-reason counter shows.
    let start = std::time::Instant::now();
    let refused_at_gateway = galion_tests::eventually(3, || {
        let (c, url, access, metrics) = (
            c.clone(),
            s.url("/api/v1/auth/me"),
            access.clone(),
            format!("http://{}/metrics", s.admin),
        );
        async move {
            let r = c.get(url).bearer_auth(&access).send().await.ok()?;
            assert_eq!(r.status(), 401);
            let text = c.get(metrics).send().await.ok()?.text().await.ok()?;
            text.contains("gateway_auth_rejected_total{reason=\"revoked\"} 1")
                .then_some(())
        }
    })
    .await;
    assert!(
        refused_at_gateway.is_some(),
        "the gateway kept accepting a revoked token:\n{}",
        s.log("galion-gateway")
    );
    assert!(
        start.elapsed() < std::time::Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    let _ = s.auth;
}

async fn register_and_login(s: &Stack, email: &str) -> (String, String) {
    let c = client();
    let password = "correct horse battery staple";
    let r = c
        .post(s.url("/api/v1/auth/register"))
        .header("x-forwarded-for", format!("198.51.100.{}", email.len()))
        .json(&json!({"email": email, "password": password, "name": "T"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", s.log("galion-auth"));
    let user: Value = r.json().await.unwrap();
    let r = c
        .post(s.url("/api/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let tokens: Value = r.json().await.unwrap();
    (
        user["id"].as_str().unwrap().to_owned(),
        tokens["access_token"].as_str().unwrap().to_owned(),
    )
}

/// Issue 21 through the shipped dev config and the real services, on both
/// transports: a user cannot write analytics as the service or as someone
/// else (case 3), the backends' internal endpoints are not on the public site
/// (case 4), and a method never falls through to a looser route (case 5).
#[tokio::test]
async fn trust_boundaries_through_the_real_services() {
    for fast_path in [true, false] {
        let s = Stack::start_with(fast_path).await;
        let c = client();
        let (alice_id, alice) = register_and_login(&s, "alice@example.com").await;
        let (bob_id, _) = register_and_login(&s, "bob.b@example.com").await;
        assert_ne!(alice_id, bob_id);

        // Case 3: forged events are refused one by one; the gateway no longer
        // lends its service token, so analytics sees Alice's own JWT.
        let forged = json!({"events": [
            {"id": uuid(1), "event_type": "user.deleted", "user_id": bob_id,
             "service": "auth", "timestamp": "2020-01-01T00:00:00Z", "data": {}},
            {"id": uuid(2), "event_type": "page.viewed", "user_id": bob_id, "data": {}},
            {"id": uuid(3), "event_type": "page.viewed", "service": "users", "data": {}},
        ]});
        let r = c
            .post(s.url("/api/v1/analytics/events"))
            .bearer_auth(&alice)
            .json(&forged)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            422,
            "fast_path {fast_path}: {}",
            s.log("galion-analytics")
        );
        let own = json!({"events": [
            {"id": uuid(4), "event_type": "page.viewed", "timestamp": "2020-01-01T00:00:00Z", "data": {"p": "/"}},
        ]});
        let r = c
            .post(s.url("/api/v1/analytics/events"))
            .bearer_auth(&alice)
            .json(&own)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "fast_path {fast_path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["stored"], 1, "{v}");
        // The dev API key writes as itself, not as a service of ours.
        let r = c
            .post(s.url("/api/v1/analytics/events"))
            .header("x-api-key", "dev-ingest-key")
            .json(&json!([{"id": uuid(5), "event_type": "user.logged_in", "service": "auth", "data": {}}]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "fast_path {fast_path}");
        let r = c
            .post(s.url("/api/v1/analytics/events"))
            .header("x-api-key", "dev-ingest-key")
            .json(&json!([{"id": uuid(6), "event_type": "build.finished", "data": {}}]))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "fast_path {fast_path}: {}",
            s.log("galion-analytics")
        );
        // A user cannot read them back either.
        let r = c
            .get(s.url("/api/v1/analytics/events"))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);

        // Case 4: no internal endpoint of any backend is public.
        for p in [
            "/api/v1/auth/metrics",
            "/api/v1/auth/health/ready",
            "/api/v1/auth/revocations",
            "/api/v1/analytics/metrics",
            "/api/v1/analytics/health",
            "/api/v1/users/metrics",
        ] {
            let r = c.get(s.url(p)).bearer_auth(&alice).send().await.unwrap();
            assert_eq!(r.status(), 404, "fast_path {fast_path}: {p}");
            let body = r.text().await.unwrap();
            assert!(!body.contains("# TYPE"), "{p}: {body}");
        }
        let r = c.get(s.url("/robots.txt")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().contains("Disallow: /api/"));

        // Case 5: HEAD and other methods stay on their route's policy.
        let r = c.head(s.url("/api/v1/auth/me")).send().await.unwrap();
        assert_eq!(r.status(), 401, "fast_path {fast_path}");
        let r = c
            .head(s.url("/api/v1/users"))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "fast_path {fast_path}");
        let r = c
            .delete(s.url("/api/v1/auth/me"))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405);
        assert_eq!(
            r.headers()["allow"],
            "GET, HEAD, OPTIONS",
            "CORS preflights too"
        );
    }
}

fn uuid(n: u8) -> String {
    format!("0190a0a0-0000-7000-8000-0000000000{n:02x}")
}

/// Ctrl-C in `./dev.sh` stops its `tee` with the services: their last log
/// lines meet a closed pipe. That must not crash them (tracing-subscriber's
/// fallback report went to the same dead stderr and panicked, an abort in
/// release builds).
#[tokio::test]
async fn a_service_whose_log_pipe_is_gone_still_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut child = Command::new(binary("galion-auth"))
        .env("GALION_DATA_DIR", dir.path())
        .env("GALION_AUTH_LISTEN", addr.to_string())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://{addr}/health");
    let up = eventually(30, || async {
        let r = client().get(&url).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    // Both readers gone: every later log line meets a closed pipe.
    drop(child.stdout.take());
    drop(child.stderr.take());
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let mut status = None;
    for _ in 0..100 {
        status = child.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if status.is_none() {
        let _ = child.kill();
    }
    assert!(up.is_some(), "galion-auth did not start");
    let status = status.expect("galion-auth did not stop within 10 s");
    assert!(status.success(), "galion-auth ended with {status:?}");
}
