//! Issue 22, item 3: galion-auth delivers `mail_outbox` over SMTP (to a
//! real SMTP listener started by the test) or, in dev, as `.eml` files.
//! Each scenario runs on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use galion_auth::settings::{MailTransport, SmtpPassword, SmtpSettings, SmtpTls};
use galion_auth::AuthSettings;
use galion_common::db::Db;
use galion_common::testing::{
    eventually, free_addr, SinkMail, SinkMode, SmtpSink, TestEnv, TestServer,
};
use galion_common::{engine_tests, with_db};
use reqwest::StatusCode;
use serde_json::json;
use support::*;

const PASSWORD: &str = "correct horse battery";
const WAIT: Duration = Duration::from_secs(20);

/// Points the sender at a plaintext relay on loopback.
fn relay_at(s: &mut AuthSettings, addr: SocketAddr) {
    s.mail.transport = MailTransport::Smtp(SmtpSettings {
        host: "127.0.0.1".into(),
        port: addr.port(),
        tls: SmtpTls::None,
        credentials: None,
        timeout: Duration::from_secs(5),
    });
}

/// The body of a message, quoted-printable decoded when so encoded (lettre
/// picks it for lines of 76 characters or more, which the links are).
fn body_of(message: &str) -> String {
    let (head, body) = message.split_once("\r\n\r\n").expect("no body");
    if !head
        .to_ascii_lowercase()
        .contains("content-transfer-encoding: quoted-printable")
    {
        return body.to_string();
    }
    let raw = body.replace("=\r\n", "");
    let bytes = raw.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// The `token=` of the link in a mail.
fn token_in(message: &str) -> String {
    body_of(message)
        .split("token=")
        .nth(1)
        .expect("no link in the mail")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

async fn mail_for(sink: &SmtpSink, to: &str, subject: &str) -> SinkMail {
    eventually(&format!("a mail {subject:?} to {to}"), WAIT, || async {
        sink.mails_to(to)
            .into_iter()
            .find(|m| m.data.contains(&format!("Subject: {subject}")))
    })
    .await
}

/// (attempts, sent, dead, last_error) of the newest mail to `to`.
async fn row_state(db: &Db, to: &str) -> (i32, bool, bool, Option<String>) {
    type At = Option<chrono::DateTime<chrono::Utc>>;
    let (attempts, sent, dead, err): (i32, At, At, Option<String>) =
        with_db!(db, |p| sqlx::query_as(
            "SELECT attempts, sent_at, dead_at, last_error FROM mail_outbox WHERE to_email = $1 ORDER BY created_at DESC LIMIT 1"
        )
        .bind(to)
        .fetch_one(p)
        .await)
        .unwrap();
    (attempts, sent.is_some(), dead.is_some(), err)
}

async fn wait_dead(db: &Db, to: &str) -> (i32, Option<String>) {
    eventually(&format!("the mail to {to} dead-lettered"), WAIT, || async {
        let (attempts, sent, dead, err) = row_state(db, to).await;
        assert!(!sent, "a refused mail was marked sent");
        dead.then_some((attempts, err))
    })
    .await
}

async fn access_token(srv: &TestServer, email: &str, password: &str) -> String {
    login(srv, email, password).await["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Registration's verification mail goes through a real SMTP exchange
/// (with AUTH), and its link verifies the account through the API.
async fn verification_mail_arrives_over_smtp_and_verifies(env: TestEnv) {
    let sink = SmtpSink::start(SinkMode::Accept).await;
    let srv = start(&env, |s| {
        relay_at(s, sink.addr);
        if let MailTransport::Smtp(smtp) = &mut s.mail.transport {
            smtp.credentials = Some(("mailer".into(), SmtpPassword::new("relay-secret".into())));
        }
        s.mail.from = "Galion <no-reply@galion.test>".into();
    })
    .await;
    let db = db(&env).await;
    register(&srv, "vera@example.com", PASSWORD).await;
    let mail = mail_for(&sink, "vera@example.com", "Confirm your email address").await;
    assert_eq!(mail.from, "no-reply@galion.test");
    assert!(mail.data.contains("To: vera@example.com"), "{}", mail.data);
    let (id,): (uuid::Uuid,) = with_db!(&db, |p| sqlx::query_as(
        "SELECT id FROM mail_outbox WHERE to_email = $1"
    )
    .bind("vera@example.com")
    .fetch_one(p)
    .await)
    .unwrap();
    // The Message-ID is the row's, so a duplicate is recognisable.
    assert!(
        mail.data
            .contains(&format!("Message-ID: <{id}@galion.test>")),
        "{}",
        mail.data
    );
    assert!(body_of(&mail.data).contains("https://galion.test/verify-email?token="));
    assert_eq!(
        sink.logins(),
        vec![("mailer".to_string(), "relay-secret".to_string())]
    );

    let (s, body) = post(
        &srv,
        "/verify-email/confirm",
        json!({"token": token_in(&mail.data)}),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let access = access_token(&srv, "vera@example.com", PASSWORD).await;
    let me: serde_json::Value = me(&srv, &access).await.json().await.unwrap();
    assert_eq!(me["email_verified"], true, "{me}");

    let (attempts, sent, dead, err) = row_state(&db, "vera@example.com").await;
    assert_eq!((attempts, sent, dead, err), (1, true, false, None));
    assert_eq!(metric(&srv, "auth_mail_sent_total").await, 1);
    assert_eq!(metric(&srv, "auth_mail_failed_total").await, 0);
    eventually("the outbox depth to drop to 0", WAIT, || async {
        (metric(&srv, "auth_mail_outbox_depth").await == 0).then_some(())
    })
    .await;
    srv.stop().await;
    db.close().await;
}

/// A reset mail arrives over SMTP and its link sets a new password: the
/// new one logs in, the old one no longer does.
async fn reset_mail_arrives_over_smtp_and_resets_password(env: TestEnv) {
    let sink = SmtpSink::start(SinkMode::Accept).await;
    let srv = start(&env, |s| relay_at(s, sink.addr)).await;
    register(&srv, "rosa@example.com", PASSWORD).await;
    mail_for(&sink, "rosa@example.com", "Confirm your email address").await;
    let (s, _) = post(
        &srv,
        "/password-reset/request",
        json!({"email": "rosa@example.com"}),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let mail = mail_for(&sink, "rosa@example.com", "Reset your password").await;
    assert!(body_of(&mail.data).contains("https://galion.test/reset-password?token="));
    let new_password = "a brand new passphrase";
    let (s, body) = post(
        &srv,
        "/password-reset/confirm",
        json!({"token": token_in(&mail.data), "password": new_password}),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    login(&srv, "rosa@example.com", new_password).await;
    let (s, _) = post(
        &srv,
        "/login",
        json!({"email": "rosa@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(sink.mails_to("rosa@example.com").len(), 2);
    assert_eq!(metric(&srv, "auth_mail_sent_total").await, 2);
    srv.stop().await;
}

/// A relay that refuses (4xx on RCPT, then 5xx after DATA) gets the mail
/// `max_attempts` times with growing pauses; then it is dead-lettered,
/// counted, and never tried again.
async fn refused_mail_is_retried_with_backoff_then_dead_lettered(env: TestEnv) {
    let sink = SmtpSink::start(SinkMode::RefuseRcpt(451)).await;
    let srv = start(&env, |s| relay_at(s, sink.addr)).await;
    let db = db(&env).await;
    let base = Duration::from_millis(100); // AuthSettings::for_tests
    register(&srv, "tempfail@example.com", PASSWORD).await;
    let (attempts, err) = wait_dead(&db, "tempfail@example.com").await;
    assert_eq!(attempts, 3);
    assert!(err.as_deref().unwrap_or("").contains("451"), "{err:?}");
    let times = sink.attempts();
    assert_eq!(times.len(), 3, "one SMTP transaction per attempt");
    // Equal jitter: the n-th pause is at least half of base * 2^(n-1).
    assert!(times[1] - times[0] >= base / 2, "{times:?}");
    assert!(times[2] - times[1] >= base, "{times:?}");
    assert_eq!(metric(&srv, "auth_mail_failed_total").await, 3);
    assert_eq!(metric(&srv, "auth_mail_dead_lettered_total").await, 1);
    assert_eq!(metric(&srv, "auth_mail_sent_total").await, 0);

    sink.set_mode(SinkMode::RefuseData(554));
    register(&srv, "permfail@example.com", PASSWORD).await;
    let (attempts, err) = wait_dead(&db, "permfail@example.com").await;
    assert_eq!(attempts, 3);
    assert!(err.as_deref().unwrap_or("").contains("554"), "{err:?}");
    assert_eq!(metric(&srv, "auth_mail_failed_total").await, 6);
    assert_eq!(metric(&srv, "auth_mail_dead_lettered_total").await, 2);
    eventually("the dead-letter gauge", WAIT, || async {
        (metric(&srv, "auth_mail_dead_letters").await == 2).then_some(())
    })
    .await;

    // Dead letters stay dead when the relay recovers.
    sink.set_mode(SinkMode::Accept);
    let before = sink.attempts().len();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(sink.attempts().len(), before);
    assert!(sink.mails().is_empty());
    srv.stop().await;
    db.close().await;
}

/// A relay that is down: the attempts fail at connect and the mail is
/// dead-lettered; a mail whose relay comes back before its attempts run
/// out is delivered once.
async fn relay_down_is_retried_then_dead_lettered_or_delivered(env: TestEnv) {
    let down = free_addr().await;
    let srv = start(&env, |s| relay_at(s, down)).await;
    let db = db(&env).await;
    register(&srv, "nobody-home@example.com", PASSWORD).await;
    let (attempts, err) = wait_dead(&db, "nobody-home@example.com").await;
    assert_eq!(attempts, 3);
    assert!(err.is_some());
    assert_eq!(metric(&srv, "auth_mail_failed_total").await, 3);
    assert_eq!(metric(&srv, "auth_mail_dead_lettered_total").await, 1);
    srv.stop().await;

    let srv = start(&env, |s| {
        relay_at(s, down);
        s.mail.max_attempts = 20;
    })
    .await;
    register(&srv, "patient@example.com", PASSWORD).await;
    eventually("two failed attempts", WAIT, || async {
        (row_state(&db, "patient@example.com").await.0 >= 2).then_some(())
    })
    .await;
    let sink = SmtpSink::start_at(down, SinkMode::Accept).await;
    mail_for(&sink, "patient@example.com", "Confirm your email address").await;
    // The sink has the mail as soon as the SMTP transaction ends; the sender
    // records it as sent a moment later.
    eventually("the mail recorded as sent", WAIT, || async {
        let (_, sent, dead, _) = row_state(&db, "patient@example.com").await;
        (sent && !dead).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.mails().len(), 1, "delivered exactly once");
    srv.stop().await;
    db.close().await;
}

/// A restarted service does not send a delivered mail again, leaves alone
/// a mail another live instance has claimed, and takes it over once that
/// lease has expired. Shutdown stops the sender promptly.
async fn restart_does_not_resend_delivered_mail(env: TestEnv) {
    let sink = SmtpSink::start(SinkMode::Accept).await;
    let srv = start(&env, |s| relay_at(s, sink.addr)).await;
    let db = db(&env).await;
    register(&srv, "once@example.com", PASSWORD).await;
    mail_for(&sink, "once@example.com", "Confirm your email address").await;
    let stopping = std::time::Instant::now();
    srv.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        stopping.elapsed()
    );

    // Another instance's claim: a live lease on a queued mail.
    let claimed = uuid::Uuid::new_v4();
    let now = galion_common::time::now();
    with_db!(&db, |p| sqlx::query(
        "INSERT INTO mail_outbox (id, to_email, subject, body, created_at, lease_owner, lease_until) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)"
    )
    .bind(claimed)
    .bind("claimed@example.com")
    .bind("Claimed elsewhere")
    .bind("Hello")
    .bind(now)
    .bind(uuid::Uuid::new_v4())
    .bind(now + chrono::Duration::hours(1))
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();

    let srv = start(&env, |s| relay_at(s, sink.addr)).await;
    register(&srv, "twice@example.com", PASSWORD).await;
    // The sender of the new instance is running and has scanned the table…
    mail_for(&sink, "twice@example.com", "Confirm your email address").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // …and neither resent the delivered mail nor took the claimed one.
    assert_eq!(sink.mails_to("once@example.com").len(), 1);
    assert!(sink.mails_to("claimed@example.com").is_empty());
    assert_eq!(metric(&srv, "auth_mail_sent_total").await, 1);

    // The other instance died: its lease runs out and this one sends.
    with_db!(&db, |p| sqlx::query(
        "UPDATE mail_outbox SET lease_until = $1 WHERE id = $2"
    )
    .bind(galion_common::time::now() - chrono::Duration::seconds(1))
    .bind(claimed)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    mail_for(&sink, "claimed@example.com", "Claimed elsewhere").await;
    srv.stop().await;
    assert_eq!(sink.mails().len(), 3);
    db.close().await;
}

/// At most `per_recipient_limit` mails per window go to one address; the
/// rest wait (without using attempts) until the window has room.
async fn per_recipient_limit_defers_mail(env: TestEnv) {
    let sink = SmtpSink::start(SinkMode::Accept).await;
    let srv = start(&env, |s| {
        relay_at(s, sink.addr);
        s.mail.per_recipient_limit = 1;
        s.mail.per_recipient_window = Duration::from_secs(3600);
    })
    .await;
    let db = db(&env).await;
    register(&srv, "busy@example.com", PASSWORD).await;
    mail_for(&sink, "busy@example.com", "Confirm your email address").await;
    let (s, _) = post(
        &srv,
        "/password-reset/request",
        json!({"email": "busy@example.com"}),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    eventually("the reset mail deferred", WAIT, || async {
        (metric(&srv, "auth_mail_deferred_total").await == 1).then_some(())
    })
    .await;
    let (attempts, sent, dead, _) = row_state(&db, "busy@example.com").await;
    assert_eq!((attempts, sent, dead), (0, false, false));
    let (next,): (Option<chrono::DateTime<chrono::Utc>>,) = with_db!(&db, |p| sqlx::query_as(
        "SELECT next_attempt_at FROM mail_outbox WHERE to_email = $1 AND sent_at IS NULL"
    )
    .bind("busy@example.com")
    .fetch_one(p)
    .await)
    .unwrap();
    assert!(next.unwrap() > galion_common::time::now() + chrono::Duration::minutes(50));
    assert_eq!(sink.mails_to("busy@example.com").len(), 1);
    assert_eq!(metric(&srv, "auth_mail_outbox_depth").await, 1);
    srv.stop().await;
    db.close().await;
}

/// Dev default (no SMTP configured): one `.eml` per mail under
/// `$GALION_DATA_DIR/mail`, the file 0600 and the directory 0700, and the
/// link in it works.
async fn dev_mode_writes_private_eml_files(env: TestEnv) {
    let srv = start(&env, |_| {}).await;
    let dir = env.dir.join("mail");
    register(&srv, "dev@example.com", PASSWORD).await;
    let path = eventually("an .eml file", WAIT, || async {
        std::fs::read_dir(&dir).ok().and_then(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "eml"))
        })
    })
    .await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600, "{}", path.display());
    assert_eq!(mode(&dir), 0o700);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("To: dev@example.com"), "{text}");
    assert!(
        text.contains("Subject: Confirm your email address"),
        "{text}"
    );
    let (s, body) = post(
        &srv,
        "/verify-email/confirm",
        json!({"token": token_in(&text)}),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let db = db(&env).await;
    let (attempts, sent, _, _) = row_state(&db, "dev@example.com").await;
    assert_eq!((attempts, sent), (1, true));
    assert_eq!(metric(&srv, "auth_mail_sent_total").await, 1);
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    srv.stop().await;
    db.close().await;
}

engine_tests!(
    verification_mail_arrives_over_smtp_and_verifies,
    reset_mail_arrives_over_smtp_and_resets_password,
    refused_mail_is_retried_with_backoff_then_dead_lettered,
    relay_down_is_retried_then_dead_lettered_or_delivered,
    restart_does_not_resend_delivered_mail,
    per_recipient_limit_defers_mail,
    dev_mode_writes_private_eml_files,
);
