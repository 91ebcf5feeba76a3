//! galion-users over real HTTP, with a real galion-auth issuing the tokens
//! and serving the JWKS; every scenario on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use galion_auth::AuthSettings;
use galion_common::db::{Db, DbOptions};
use galion_common::testing::{TestEnv, TestServer};
use galion_common::{engine_tests, with_db};
use galion_users::UsersSettings;
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Stack {
    auth: TestServer,
    users: TestServer,
    analytics: TestServer,
    db: Db,
}

struct Account {
    id: String,
    token: String,
}

async fn stack(env: &TestEnv) -> Stack {
    let auth_settings = AuthSettings::for_tests(&env.database_url, &env.dir);
    let auth = TestServer::spawn("127.0.0.1:0".parse().unwrap(), |l, s| async move {
        galion_auth::run(auth_settings, l, s)
            .await
            .expect("galion-auth failed");
    })
    .await;
    let mut an_settings =
        galion_analytics::AnalyticsSettings::for_tests(&env.database_url, &env.dir);
    an_settings.common.auth_url = auth.url.clone();
    let analytics = TestServer::spawn("127.0.0.1:0".parse().unwrap(), |l, s| async move {
        galion_analytics::run(an_settings, l, s)
            .await
            .expect("galion-analytics failed");
    })
    .await;
    let mut settings = UsersSettings::for_tests(&env.database_url, &env.dir);
    settings.common.auth_url = auth.url.clone();
    settings.common.analytics_url = Some(analytics.url.clone());
    let users = TestServer::spawn("127.0.0.1:0".parse().unwrap(), |l, s| async move {
        galion_users::run(settings, l, s)
            .await
            .expect("galion-users failed");
    })
    .await;
    let db = Db::connect(&env.database_url, &DbOptions::default())
        .await
        .unwrap();
    Stack {
        auth,
        users,
        analytics,
        db,
    }
}

impl Stack {
    async fn stop(self) {
        self.db.close().await;
        self.users.stop().await;
        self.analytics.stop().await;
        self.auth.stop().await;
    }

    async fn account(&self, email: &str, admin: bool) -> Account {
        let c = reqwest::Client::new();
        let r = c
            .post(format!("{}/register", self.auth.url))
            .json(&json!({"email": email, "password": "correct horse battery", "name": email}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let id = r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        if admin {
            let uid = uuid::Uuid::parse_str(&id).unwrap();
            with_db!(&self.db, |p| sqlx::query(
                "UPDATE users SET role = 'admin' WHERE id = $1"
            )
            .bind(uid)
            .execute(p)
            .await
            .map(|_| ()))
            .unwrap();
        }
        Account {
            id,
            token: self.login(email).await,
        }
    }

    async fn login(&self, email: &str) -> String {
        let r = reqwest::Client::new()
            .post(format!("{}/login", self.auth.url))
            .json(&json!({"email": email, "password": "correct horse battery"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let c = reqwest::Client::new();
        let mut req = c.request(method.parse().unwrap(), format!("{}{path}", self.users.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    async fn outbox_types(&self) -> Vec<String> {
        let rows: Vec<(String,)> = with_db!(&self.db, |p| sqlx::query_as(
            "SELECT event_type FROM outbox WHERE service = 'users' ORDER BY created_at, id"
        )
        .fetch_all(p)
        .await)
        .unwrap();
        rows.into_iter().map(|r| r.0).collect()
    }
}

async fn permissions(env: TestEnv) {
    let st = stack(&env).await;
    let a = st.account("a@example.com", false).await;
    let b = st.account("b@example.com", false).await;
    let admin = st.account("root@example.com", true).await;
    let b_path = format!("/users/{}", b.id);

    // No token / forged identity headers: nothing.
    for (m, p) in [
        ("GET", "/users"),
        ("GET", "/users/me"),
        ("GET", b_path.as_str()),
        ("PATCH", b_path.as_str()),
        ("DELETE", b_path.as_str()),
    ] {
        let (s, body) = st.call(m, p, None, Some(json!({"name": "x"}))).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{m} {p}: {body}");
        let r = reqwest::Client::new()
            .request(m.parse().unwrap(), format!("{}{p}", st.users.url))
            .header("X-User-Id", &admin.id)
            .header("X-User-Role", "admin")
            .header("X-User-Email", "root@example.com")
            .json(&json!({"name": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "forged headers {m} {p}"
        );
    }
    // A user's token plus a forged admin header is still just a user.
    let r = reqwest::Client::new()
        .get(format!("{}/users", st.users.url))
        .bearer_auth(&a.token)
        .header("X-User-Role", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // User A on B: 403 everywhere; on self: allowed except role/is_active.
    let (s, _) = st.call("GET", "/users", Some(&a.token), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    for (m, body) in [
        ("GET", None),
        ("PATCH", Some(json!({"name": "hacked"}))),
        ("DELETE", None),
    ] {
        let (s, _) = st.call(m, &b_path, Some(&a.token), body).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{m}");
    }
    let (s, me) = st.call("GET", "/users/me", Some(&a.token), None).await;
    assert_eq!(
        (s, me["id"].as_str()),
        (StatusCode::OK, Some(a.id.as_str()))
    );
    let (s, _) = st
        .call("GET", &format!("/users/{}", a.id), Some(&a.token), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = st
        .call(
            "PATCH",
            &format!("/users/{}", a.id),
            Some(&a.token),
            Some(json!({"name": "Ann A"})),
        )
        .await;
    assert_eq!((s, body["name"].as_str()), (StatusCode::OK, Some("Ann A")));
    for patch in [json!({"role": "admin"}), json!({"is_active": true})] {
        let (s, _) = st
            .call(
                "PATCH",
                &format!("/users/{}", a.id),
                Some(&a.token),
                Some(patch),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
    }
    let (s, _) = st
        .call(
            "PATCH",
            &format!("/users/{}", a.id),
            Some(&a.token),
            Some(json!({"password_hash": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);

    // Admin: everything.
    let (s, list) = st.call("GET", "/users", Some(&admin.token), None).await;
    assert_eq!((s, list["total"].as_i64()), (StatusCode::OK, Some(3)));
    assert!(!list.to_string().contains("argon2"));
    let (s, _) = st.call("GET", &b_path, Some(&admin.token), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = st
        .call(
            "PATCH",
            &b_path,
            Some(&admin.token),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!((s, body["role"].as_str()), (StatusCode::OK, Some("admin")));
    let (s, _) = st
        .call(
            "PATCH",
            &b_path,
            Some(&admin.token),
            Some(json!({"role": "root"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    // B is admin now (role read from the database, not the older token).
    let (s, _) = st.call("GET", "/users", Some(&b.token), None).await;
    assert_eq!(s, StatusCode::OK);
    // Admin deactivates A: A's sessions die immediately.
    let (s, _) = st
        .call(
            "PATCH",
            &format!("/users/{}", a.id),
            Some(&admin.token),
            Some(json!({"is_active": false})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = st.call("GET", "/users/me", Some(&a.token), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = st.call("DELETE", &b_path, Some(&admin.token), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = st.call("GET", &b_path, Some(&admin.token), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(
        st.outbox_types().await,
        [
            "user.updated",
            "user.updated",
            "user.updated",
            "user.deleted"
        ]
    );
    st.stop().await;
}

async fn self_delete_revokes_everything(env: TestEnv) {
    let st = stack(&env).await;
    let c = st.account("c@example.com", false).await;
    let (s, _) = st
        .call("DELETE", &format!("/users/{}", c.id), Some(&c.token), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = st.call("GET", "/users/me", Some(&c.token), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let r = reqwest::Client::new()
        .get(format!("{}/me", st.auth.url))
        .bearer_auth(&c.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = reqwest::Client::new()
        .post(format!("{}/login", st.auth.url))
        .json(&json!({"email": "c@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The event reached analytics through the users outbox relay.
    let uid = uuid::Uuid::parse_str(&c.id).unwrap();
    galion_common::testing::eventually(
        "user.deleted in analytics",
        std::time::Duration::from_secs(10),
        || async {
            let sql =
                "SELECT COUNT(*) FROM events WHERE event_type = 'user.deleted' AND user_id = $1";
            let n: (i64,) =
                with_db!(&st.db, |p| sqlx::query_as(sql).bind(uid).fetch_one(p).await).unwrap();
            (n.0 == 1).then_some(())
        },
    )
    .await;
    // The address is free again for a new account.
    let again = st.account("c@example.com", false).await;
    assert_ne!(again.id, c.id);
    st.stop().await;
}

async fn email_change_and_conflicts(env: TestEnv) {
    let st = stack(&env).await;
    let d = st.account("d@example.com", false).await;
    st.account("taken@example.com", false).await;
    let uid = uuid::Uuid::parse_str(&d.id).unwrap();
    with_db!(&st.db, |p| sqlx::query(
        "UPDATE users SET email_verified = $1 WHERE id = $2"
    )
    .bind(true)
    .bind(uid)
    .execute(p)
    .await
    .map(|_| ()))
    .unwrap();
    let path = format!("/users/{}", d.id);
    let (s, _) = st
        .call(
            "PATCH",
            &path,
            Some(&d.token),
            Some(json!({"email": " TAKEN@example.com"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = st
        .call(
            "PATCH",
            &path,
            Some(&d.token),
            Some(json!({"email": "nope"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, body) = st
        .call(
            "PATCH",
            &path,
            Some(&d.token),
            Some(json!({"email": "D2@Example.com"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["email"], "d2@example.com");
    assert_eq!(body["email_verified"], false);
    st.stop().await;
}

async fn search_pagination_and_injection(env: TestEnv) {
    let st = stack(&env).await;
    let admin = st.account("admin@example.com", true).await;
    for i in 0..5 {
        st.account(&format!("member{i}@galion.test"), false).await;
    }
    let t = Some(admin.token.as_str());
    let (_, page) = st.call("GET", "/users?limit=2&offset=0", t, None).await;
    assert_eq!(
        (
            page["total"].as_i64(),
            page["users"].as_array().unwrap().len(),
            page["next_offset"].as_i64()
        ),
        (Some(6), 2, Some(2))
    );
    let (_, last) = st.call("GET", "/users?limit=2&offset=4", t, None).await;
    assert_eq!(
        (
            last["users"].as_array().unwrap().len(),
            last["next_offset"].clone()
        ),
        (2, Value::Null)
    );
    let (_, found) = st.call("GET", "/users?q=MEMBER3", t, None).await;
    assert_eq!(found["total"], 1);
    assert_eq!(found["users"][0]["email"], "member3@galion.test");
    let (_, found) = st.call("GET", "/users?q=galion.test", t, None).await;
    assert_eq!(found["total"], 5);
    for evil in [
        "%25",
        "_",
        "%27%20OR%201%3D1%20--",
        "%27)%3B%20DROP%20TABLE%20users%3B--",
    ] {
        let (s, body) = st.call("GET", &format!("/users?q={evil}"), t, None).await;
        assert_eq!(
            (s, body["total"].as_i64()),
            (StatusCode::OK, Some(0)),
            "{evil}"
        );
    }
    for evil in [
        "1%20OR%201=1",
        "%27%20OR%20%271%27=%271",
        "00000000-0000-0000-0000-000000000000",
    ] {
        let (s, _) = st.call("GET", &format!("/users/{evil}"), t, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{evil}");
    }
    let (s, _) = st.call("GET", "/users?limit=abc", t, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let evil_name = "x'); DELETE FROM users; --";
    let (s, body) = st
        .call(
            "PATCH",
            &format!("/users/{}", admin.id),
            t,
            Some(json!({"name": evil_name})),
        )
        .await;
    assert_eq!(
        (s, body["name"].as_str()),
        (StatusCode::OK, Some(evil_name))
    );
    let (_, all) = st.call("GET", "/users", t, None).await;
    assert_eq!(all["total"], 6);
    st.stop().await;
}

async fn health_and_metrics(env: TestEnv) {
    let st = stack(&env).await;
    for path in ["/health", "/health/live", "/health/ready"] {
        let r = reqwest::get(format!("{}{path}", st.users.url))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    // /metrics takes the service token (no metrics token is configured).
    let metrics = format!("{}/metrics", st.users.url);
    let r = reqwest::get(&metrics).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().contains_key("www-authenticate"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_token");
    let r = reqwest::Client::new()
        .get(&metrics)
        .bearer_auth("test-service-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(text.contains("http_requests_total"), "{text}");
    st.stop().await;
}

engine_tests!(
    permissions,
    self_delete_revokes_everything,
    email_change_and_conflicts,
    search_pagination_and_injection,
    health_and_metrics
);

#[test]
fn binary_rejects_bad_database_url_and_taken_port() {
    let dir = std::env::temp_dir().join(format!(
        "galion-users-cli-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let run = |envs: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_galion-users"));
        cmd.env("GALION_DATA_DIR", &dir)
            .env("GALION_SERVICE_TOKEN", "t")
            .env("GALION_ANALYTICS_URL", "off");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&[
        ("DATABASE_URL", "oracle://x"),
        ("GALION_USERS_LISTEN", "127.0.0.1:0"),
    ]);
    assert!(code != 0 && err.contains("DATABASE_URL"), "{err}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, err) = run(&[("GALION_USERS_LISTEN", &addr)]);
    assert!(code != 0 && err.contains("cannot listen on"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
