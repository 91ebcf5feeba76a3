//! The revocation feed and the Redis publisher deliver by sequence number
//! (issue 21): a revocation whose transaction commits after a reader has
//! moved on, with a `revoked_at` older than anything the reader asks for by
//! time, still reaches the reader; and revocations outlive `exp` by the
//! retention. SQLite and PostgreSQL; the Redis test uses the machine's Redis
//! (`GALION_TEST_REDIS_URL`) under its own key prefix and channel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use galion_auth::publish;
use galion_auth::revocations::{delete_expired_revocations, PAGE};
use galion_common::accounts;
use galion_common::auth::ServiceToken;
use galion_common::db::{Db, Tx};
use galion_common::engine_tests;
use galion_common::jwt::{JwtError, JwtVerifier};
use galion_common::testing::{eventually, Engine, TestEnv, TestServer};
use galion_common::with_db;
use reqwest::StatusCode;
use serde_json::Value;
use support::*;
use tokio_util::sync::CancellationToken;

fn unique(what: &str) -> String {
    format!("{what}-{}", uuid::Uuid::new_v4().simple())
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

/// Starts a transaction holding one revocation, not committed yet.
async fn revoke_open(db: &Db, jti: &str, exp: DateTime<Utc>, revoked_at: DateTime<Utc>) -> Tx {
    let mut tx = db.begin().await.unwrap();
    accounts::revoke_jti(&mut tx, jti, None, exp, revoked_at)
        .await
        .unwrap();
    tx
}

async fn revoke(db: &Db, jti: &str, exp: DateTime<Utc>, revoked_at: DateTime<Utc>) {
    revoke_open(db, jti, exp, revoked_at)
        .await
        .commit()
        .await
        .unwrap();
}

async fn feed(srv: &TestServer, query: &str) -> Value {
    let r = http()
        .get(format!("{}/revocations?{query}", srv.url))
        .bearer_auth(SERVICE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{query}");
    r.json().await.unwrap()
}

fn jtis(feed: &Value) -> Vec<String> {
    feed["revocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["jti"].as_str().unwrap().to_owned())
        .collect()
}

fn cursor(feed: &Value) -> i64 {
    feed["cursor"].as_i64().unwrap()
}

/// A logout whose transaction commits late is delivered by `after_seq`
/// although its `revoked_at` is older than the previous poll; `since`
/// (the old protocol) misses it, which is the bug.
async fn late_commit_reaches_the_feed(env: TestEnv) {
    let srv = start(&env, |_| {}).await;
    let db = db(&env).await;
    let now = galion_common::time::now();
    let exp = now + secs(900);

    let first = feed(&srv, "after_seq=0").await;
    assert_eq!(jtis(&first), Vec::<String>::new());
    assert_eq!(cursor(&first), 0);
    assert_eq!(first["more"], false);

    revoke(&db, "early", exp, now).await;
    let f1 = feed(&srv, "after_seq=0").await;
    assert_eq!(jtis(&f1), ["early"]);
    let c1 = cursor(&f1);
    assert!(c1 > 0);
    assert_eq!(f1["revocations"][0]["seq"].as_i64(), Some(c1));
    assert_eq!(f1["revocations"][0]["exp"].as_i64(), Some(exp.timestamp()));

    // Stamped ten minutes ago (a transaction that waited on a lock, a
    // paused process), still open while the reader polls.
    let late = revoke_open(&db, "late", exp, now - secs(600)).await;
    let f2 = feed(&srv, &format!("after_seq={c1}")).await;
    assert_eq!(jtis(&f2), Vec::<String>::new());
    assert_eq!(cursor(&f2), c1, "an empty page keeps the cursor");
    let server_time = f2["server_time"].as_i64().unwrap();
    late.commit().await.unwrap();

    let f3 = feed(&srv, &format!("after_seq={c1}")).await;
    assert_eq!(jtis(&f3), ["late"]);
    assert!(cursor(&f3) > c1);
    let by_time = feed(&srv, &format!("since={}", server_time - 1)).await;
    assert!(
        !jtis(&by_time).contains(&"late".to_owned()),
        "the time-based feed was expected to miss it: {by_time}"
    );
    // A `since` answer carries no seq a poller could resume from.
    assert_eq!(cursor(&by_time), 0);

    // A token past `exp` but within the retention is still listed
    // (verifiers accept it for their leeway); one past the retention not.
    revoke(&db, "just-expired", now - secs(10), now).await;
    revoke(&db, "long-expired", now - secs(3600), now).await;
    let f4 = feed(&srv, &format!("after_seq={}", cursor(&f3))).await;
    assert_eq!(jtis(&f4), ["just-expired"]);

    // The whole list, in seq order, from the start.
    let all = feed(&srv, "after_seq=0").await;
    assert_eq!(jtis(&all), ["early", "late", "just-expired"]);
    let seqs: Vec<i64> = all["revocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(cursor(&all), *seqs.last().unwrap());

    // A cursor from another database (restored from a backup): the feed
    // starts over instead of hiding everything below that cursor.
    let ahead = feed(&srv, "after_seq=1000000000").await;
    assert_eq!(jtis(&ahead), jtis(&all));

    for bad in ["after_seq=-1", "after_seq=x", "after_seq=1%20OR%201=1"] {
        let r = http()
            .get(format!("{}/revocations?{bad}", srv.url))
            .bearer_auth(SERVICE_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    db.close().await;
    srv.stop().await;
}

/// More than a page: `more` is set and following `cursor` reaches the end
/// without losing or repeating a row.
async fn feed_pages(env: TestEnv) {
    let srv = start(&env, |_| {}).await;
    let db = db(&env).await;
    let now = galion_common::time::now();
    let total = PAGE as usize + 5;
    let mut tx = db.begin().await.unwrap();
    for i in 0..total {
        accounts::revoke_jti(&mut tx, &format!("j{i:05}"), None, now + secs(900), now)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = feed(&srv, &format!("after_seq={after}")).await;
        seen.extend(jtis(&page));
        after = cursor(&page);
        if page["more"] == false {
            break;
        }
        assert!(seen.len() <= total, "the feed does not end");
    }
    let expected: Vec<String> = (0..total).map(|i| format!("j{i:05}")).collect();
    assert_eq!(seen, expected);
    db.close().await;
    srv.stop().await;
}

/// Cleanup keeps a revocation until `exp` + retention, so auth and users
/// (which check the table) refuse the token for the verifiers' leeway.
async fn cleanup_keeps_revocations_for_the_retention(env: TestEnv) {
    let db = db(&env).await;
    let now = galion_common::time::now();
    revoke(&db, "recent", now - secs(10), now - secs(20)).await;
    revoke(&db, "old", now - secs(301), now - secs(400)).await;
    revoke(&db, "live", now + secs(60), now).await;
    let deleted = delete_expired_revocations(&db, now, Duration::from_secs(300))
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    assert!(accounts::is_jti_revoked(&db, "recent").await.unwrap());
    assert!(accounts::is_jti_revoked(&db, "live").await.unwrap());
    assert!(!accounts::is_jti_revoked(&db, "old").await.unwrap());
    db.close().await;
}

fn redis_url() -> String {
    std::env::var("GALION_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

/// Subscribes to `channel` on a thread of its own (the synchronous client
/// needs no extra stream crate) and collects the jtis of the messages until
/// `stop` is set; returns once subscribed.
async fn listen(
    channel: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<String>> {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let handle = std::thread::spawn(move || {
        let client = redis::Client::open(redis_url().as_str()).unwrap();
        let mut conn = client.get_connection().unwrap();
        conn.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut ps = conn.as_pubsub();
        ps.subscribe(&channel).unwrap();
        let _ = ready_tx.send(());
        let mut got = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match ps.get_message() {
                Ok(msg) => {
                    let payload: Vec<u8> = msg.get_payload().unwrap();
                    let v: Value = serde_json::from_slice(&payload).unwrap();
                    got.push(v["jti"].as_str().unwrap().to_owned());
                }
                Err(e) if e.is_timeout() => {}
                Err(e) => panic!("subscription failed: {e}"),
            }
        }
        got
    });
    ready_rx.await.unwrap();
    handle
}

/// The publisher tails by seq: a revocation committed after the publisher
/// has moved past later-stamped ones is still written and announced, with
/// a TTL reaching `exp` + retention.
async fn late_commit_reaches_redis(env: TestEnv) {
    let url = redis_url();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = match client.get_multiplexed_async_connection().await {
        Ok(c) => c,
        Err(e) => panic!("this test needs Redis at {url} (set GALION_TEST_REDIS_URL): {e}"),
    };
    let prefix = format!("{}:", unique("galion-test-revoked"));
    let channel = format!("{prefix}channel");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = listen(channel.clone(), stop.clone()).await;

    let db = db(&env).await;
    let shutdown = CancellationToken::new();
    let retention = Duration::from_secs(300);
    let mut opts = publish::Options::new(retention);
    opts.key_prefix = prefix.clone();
    opts.channel = channel.clone();
    opts.interval = Duration::from_millis(50);
    publish::spawn(db.clone(), &url, opts, shutdown.clone()).unwrap();

    let reader = conn.clone();
    let get = |jti: &str| {
        let mut conn = reader.clone();
        let key = format!("{prefix}{jti}");
        async move {
            redis::cmd("GET")
                .arg(&key)
                .query_async::<Option<i64>>(&mut conn)
                .await
                .unwrap()
        }
    };
    let now = galion_common::time::now();
    let exp = now + secs(900);
    revoke(&db, "early", exp, now).await;
    eventually(
        "the early revocation in redis",
        Duration::from_secs(10),
        || get("early"),
    )
    .await;

    // The publisher is past "early" (stamped now); "late" is stamped ten
    // minutes earlier and commits after it: a time cursor never sees it.
    // (No later revocation can commit while it is open: SQLite has one
    // writer, and on PostgreSQL the insert trigger's lock orders them.)
    let late = revoke_open(&db, "late", exp, now - secs(600)).await;
    // Let the publisher make a few passes (50 ms apart) while it is open;
    // the check below holds however many it made.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get("late").await, None);
    late.commit().await.unwrap();
    let value = eventually(
        "the late revocation in redis",
        Duration::from_secs(10),
        || get("late"),
    )
    .await;
    assert_eq!(value, exp.timestamp());
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{prefix}late"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 900 && ttl <= 1200, "TTL until exp + retention: {ttl}");

    // Past `exp`, within the retention: still mirrored, for the rest of it.
    revoke(&db, "just-expired", now - secs(10), now).await;
    eventually(
        "the just-expired revocation in redis",
        Duration::from_secs(10),
        || get("just-expired"),
    )
    .await;
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{prefix}just-expired"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 290, "{ttl}");

    shutdown.cancel();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let announced = tokio::task::spawn_blocking(move || listener.join().unwrap())
        .await
        .unwrap();
    for jti in ["early", "late", "just-expired"] {
        assert!(
            announced.iter().any(|j| j == jti),
            "{jti} not announced: {announced:?}"
        );
    }
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    db.close().await;
}

/// PostgreSQL: two revoking transactions in flight. The second cannot draw
/// a seq until the first has committed (the insert trigger's advisory
/// lock), so a reader that sees the second's row has seen the first's, and
/// following the highest seq seen never skips one.
async fn concurrent_revocations_commit_in_seq_order(env: TestEnv) {
    let srv = start(&env, |_| {}).await;
    let db = db(&env).await;
    let now = galion_common::time::now();
    let exp = now + secs(900);
    let first = revoke_open(&db, "first", exp, now).await;

    let second = {
        let db = db.clone();
        tokio::spawn(async move {
            revoke(&db, "second", exp, galion_common::time::now()).await;
        })
    };
    eventually(
        "the second revocation waiting for the first",
        Duration::from_secs(10),
        || {
            let db = db.clone();
            async move {
                let waiting: (i64,) = with_db!(&db, |p| {
                    sqlx::query_as(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            .fetch_one(p)
            .await
                })
                .unwrap();
                (waiting.0 == 1).then_some(())
            }
        },
    )
    .await;
    let f = feed(&srv, "after_seq=0").await;
    assert_eq!(jtis(&f), Vec::<String>::new());
    assert_eq!(cursor(&f), 0);

    first.commit().await.unwrap();
    second.await.unwrap();
    let f = feed(&srv, "after_seq=0").await;
    assert_eq!(jtis(&f), ["first", "second"]);
    let seqs: Vec<i64> = f["revocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    assert!(seqs[0] < seqs[1], "{seqs:?}");
    db.close().await;
    srv.stop().await;
}

/// A service verifying tokens itself without auth's database (analytics)
/// learns logouts from the feed: `JwtVerifier::watch_revocations`.
async fn remote_verifier_refuses_revoked_tokens(env: TestEnv) {
    let srv = start(&env, |_| {}).await;
    let settings = galion_auth::AuthSettings::for_tests(&env.database_url, &env.dir);
    let mut verifier = JwtVerifier::remote(&settings.common.jwt, &srv.url, Duration::from_secs(10));
    let shutdown = CancellationToken::new();
    verifier.watch_revocations(
        &srv.url,
        ServiceToken::new(SERVICE_TOKEN.into()),
        Duration::from_millis(50),
        shutdown.clone(),
    );
    register(&srv, "vic@example.com", "correct horse battery").await;
    let t = login(&srv, "vic@example.com", "correct horse battery").await;
    let access = t["access_token"].as_str().unwrap();
    let other = login(&srv, "vic@example.com", "correct horse battery").await;
    let other = other["access_token"].as_str().unwrap();
    assert!(verifier.verify(access).await.is_ok());
    let r = http()
        .post(format!("{}/logout", srv.url))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    eventually(
        "the verifier refusing the revoked token",
        Duration::from_secs(10),
        || async { matches!(verifier.verify(access).await, Err(JwtError::Revoked)).then_some(()) },
    )
    .await;
    // The session that did not log out is untouched.
    assert!(verifier.verify(other).await.is_ok());
    shutdown.cancel();
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_revocations_commit_in_seq_order_postgres() {
    galion_common::testing::run(Engine::Postgres, concurrent_revocations_commit_in_seq_order).await
}

engine_tests!(
    late_commit_reaches_the_feed,
    feed_pages,
    cleanup_keeps_revocations_for_the_retention,
    late_commit_reaches_redis,
    remote_verifier_refuses_revoked_tokens
);
