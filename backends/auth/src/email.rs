//! Email verification and password reset: single-use tokens (random, stored
//! as SHA-256, expiring) sent by writing to `mail_outbox` in the same
//! transaction; the sender in `mailer` delivers that table.
//!
//! Mail on request is limited per account: at most [`MAIL_LIMIT`] mails of
//! one purpose per [`MAIL_WINDOW`] (issue 21: 40 reset requests from 40
//! addresses queued 40 mails for one victim; a per-IP limit at the gateway
//! cannot see that). The count comes from the database, so it holds across
//! auth instances and restarts. Over the limit the endpoint answers exactly
//! as when it queues, so it reveals neither that the address has an account
//! nor that it is being throttled.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use galion_common::accounts::{self, UserRow};
use galion_common::config::RunMode;
use galion_common::db::Tx;
use galion_common::{with_db, with_tx, ApiError, ApiJson};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::password::check_strength;
use crate::tokens::{authenticate, token_hash};
use crate::AppState;

const VERIFY_TTL: Duration = Duration::from_secs(24 * 3600);
const RESET_TTL: Duration = Duration::from_secs(3600);

/// Mails of one purpose (reset, verification) one account may be sent per
/// [`MAIL_WINDOW`]; enough for a lost mail or two, too few to flood an
/// inbox. The verification mail sent at registration counts. Constants
/// rather than settings: `AuthSettings` belongs to other work in progress;
/// make them settings when there is a reason to tune them.
pub const MAIL_LIMIT: i64 = 3;
pub const MAIL_WINDOW: Duration = Duration::from_secs(3600);

// The limit counts `one_time_tokens` rows, which the cleanup task deletes
// once expired: a token must outlive the window or sent mails would stop
// counting before the window ends.
const _: () = assert!(MAIL_WINDOW.as_secs() <= RESET_TTL.as_secs());
const _: () = assert!(MAIL_WINDOW.as_secs() <= VERIFY_TTL.as_secs());

/// A mail written in a transaction, logged once that transaction commits.
pub struct QueuedMail {
    to: String,
    subject: &'static str,
    link: String,
}

impl QueuedMail {
    /// Logs the mail and wakes the sender; call after the commit.
    pub fn log(&self, state: &AppState) {
        state.mailer.wake();
        if state.settings.common.mode == RunMode::Dev {
            tracing::info!(to = %self.to, subject = self.subject, link = %self.link, "mail queued (dev: link logged)");
        } else {
            tracing::info!(to = %self.to, subject = self.subject, "mail queued");
        }
    }
}

async fn queue(
    state: &AppState,
    tx: &mut Tx,
    user: &UserRow,
    purpose: &'static str,
    ttl: Duration,
    now: DateTime<Utc>,
) -> Result<QueuedMail, ApiError> {
    let token = galion_common::secrets::random_token();
    let expires = now + chrono::Duration::from_std(ttl).map_err(ApiError::internal)?;
    with_tx!(&mut *tx, |c| {
        sqlx::query(
        "INSERT INTO one_time_tokens (id, user_id, purpose, token_hash, expires_at, created_at) VALUES ($1, $2, $3, $4, $5, $6)"
    )
    .bind(Uuid::new_v4())
    .bind(user.id)
    .bind(purpose)
    .bind(token_hash(&token))
    .bind(expires)
    .bind(now)
    .execute(c)
    .await.map(|r| r.rows_affected())
    })?;
    let (subject, path) = match purpose {
        "verify_email" => ("Confirm your email address", "verify-email"),
        _ => ("Reset your password", "reset-password"),
    };
    let link = format!(
        "{}/{path}?token={token}",
        state.settings.public_url.trim_end_matches('/')
    );
    let body = format!(
        "Hello {},\n\nOpen this link (valid {}):\n{link}\n",
        user.name,
        humantime::format_duration(ttl)
    );
    with_tx!(tx, |c| {
        sqlx::query("INSERT INTO mail_outbox (id, to_email, subject, body, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(Uuid::new_v4())
        .bind(&user.email)
        .bind(subject)
        .bind(body)
        .bind(now)
        .execute(c)
        .await.map(|r| r.rows_affected())
    })?;
    Ok(QueuedMail {
        to: user.email.clone(),
        subject,
        link,
    })
}

/// Queues a mail of `purpose` for `user` in its own transaction unless the
/// account already had [`MAIL_LIMIT`] of them in the last [`MAIL_WINDOW`];
/// `None` when throttled.
async fn queue_limited(
    state: &AppState,
    user: &UserRow,
    purpose: &'static str,
    ttl: Duration,
) -> Result<Option<QueuedMail>, ApiError> {
    let now = galion_common::time::now();
    let since = now - chrono::Duration::from_std(MAIL_WINDOW).map_err(ApiError::internal)?;
    let mut tx = state.db.begin().await?;
    // Count and insert under a lock on the account, or concurrent requests
    // (on any instance) would all count below the limit and all queue. The
    // no-op UPDATE as first statement is that lock on both engines: a row
    // lock on PostgreSQL, and on SQLite the write lock taken up front (a
    // transaction that reads first cannot upgrade once another writer has
    // committed, and would fail with SQLITE_BUSY).
    with_tx!(&mut tx, |c| sqlx::query(
        "UPDATE users SET updated_at = updated_at WHERE id = $1"
    )
    .bind(user.id)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    let (sent,): (i64,) = with_tx!(&mut tx, |c| {
        sqlx::query_as(
        "SELECT COUNT(*) FROM one_time_tokens WHERE user_id = $1 AND purpose = $2 AND created_at > $3"
    )
    .bind(user.id)
    .bind(purpose)
    .bind(since)
    .fetch_one(c)
    .await
    })?;
    if sent >= MAIL_LIMIT {
        tx.commit().await?;
        // The user id, never the address: logs are read more widely than
        // the users table.
        tracing::info!(
            user_id = %user.id,
            purpose,
            limit = MAIL_LIMIT,
            window = %humantime::format_duration(MAIL_WINDOW),
            "mail not queued: per-account limit reached"
        );
        state.mail_throttled.with_label_values(&[purpose]).inc();
        return Ok(None);
    }
    let mail = queue(state, &mut tx, user, purpose, ttl, now).await?;
    tx.commit().await?;
    Ok(Some(mail))
}

/// Queues a verification mail for `user` inside `tx`.
pub async fn queue_verification(
    state: &AppState,
    tx: &mut Tx,
    user: &UserRow,
    now: DateTime<Utc>,
) -> Result<QueuedMail, ApiError> {
    queue(state, tx, user, "verify_email", VERIFY_TTL, now).await
}

/// Claims an unused, unexpired token of `purpose` inside `tx`; returns its user.
async fn consume(
    tx: &mut Tx,
    token: &str,
    purpose: &str,
    now: DateTime<Utc>,
) -> Result<Uuid, ApiError> {
    let invalid = || ApiError::BadRequest("invalid or expired token".into());
    let hash = token_hash(token);
    let row: Option<(Uuid, Uuid)> = with_tx!(&mut *tx, |c| {
        sqlx::query_as(
        "SELECT id, user_id FROM one_time_tokens WHERE token_hash = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > $3"
    )
    .bind(&hash)
    .bind(purpose)
    .bind(now)
    .fetch_optional(c)
    .await
    })?;
    let (id, user_id) = row.ok_or_else(invalid)?;
    let claimed = with_tx!(tx, |c| sqlx::query(
        "UPDATE one_time_tokens SET used_at = $1 WHERE id = $2 AND used_at IS NULL"
    )
    .bind(now)
    .bind(id)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    if claimed != 1 {
        return Err(invalid());
    }
    Ok(user_id)
}

#[derive(Deserialize)]
pub struct TokenBody {
    token: String,
}

#[derive(Deserialize)]
pub struct ResetRequestBody {
    email: String,
}

#[derive(Deserialize)]
pub struct ResetConfirmBody {
    token: String,
    password: String,
}

/// `POST /verify-email/request` (bearer) → 202; sends a new link.
pub async fn verify_request(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let claims = authenticate(&state, &headers).await?;
    let id = claims.user_id().ok_or_else(ApiError::invalid_token)?;
    let user = accounts::find_by_id(&state.db, id)
        .await?
        .filter(UserRow::is_usable)
        .ok_or_else(ApiError::invalid_token)?;
    if user.email_verified {
        return Ok((StatusCode::OK, Json(json!({"status": "already_verified"}))));
    }
    // Throttled or not, the same answer: the client cannot tell (and a
    // script retrying on anything else gains nothing).
    if let Some(mail) = queue_limited(&state, &user, "verify_email", VERIFY_TTL).await? {
        mail.log(&state);
    }
    Ok((StatusCode::ACCEPTED, Json(json!({"status": "queued"}))))
}

/// `POST /verify-email/confirm {"token"}` → 204.
pub async fn verify_confirm(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<TokenBody>,
) -> Result<impl IntoResponse, ApiError> {
    let now = galion_common::time::now();
    let mut tx = state.db.begin().await?;
    let user_id = consume(&mut tx, &body.token, "verify_email", now).await?;
    with_tx!(&mut tx, |c| {
        sqlx::query("UPDATE users SET email_verified = $1, updated_at = $2 WHERE id = $3 AND deleted_at IS NULL")
        .bind(true)
        .bind(now)
        .bind(user_id)
        .execute(c)
        .await.map(|r| r.rows_affected())
    })?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /password-reset/request {"email"}` → always 202 (no enumeration),
/// whether the account exists, gets a mail, or is over its mail limit.
pub async fn reset_request(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<ResetRequestBody>,
) -> Result<impl IntoResponse, ApiError> {
    let email = accounts::normalize_email(&body.email);
    if let Some(user) = accounts::find_by_email(&state.db, &email)
        .await?
        .filter(UserRow::is_usable)
    {
        if let Some(mail) = queue_limited(&state, &user, "password_reset", RESET_TTL).await? {
            mail.log(&state);
        }
    }
    Ok((StatusCode::ACCEPTED, Json(json!({"status": "queued"}))))
}

/// `POST /password-reset/confirm {"token","password"}` → 204; every
/// session of the account is revoked.
pub async fn reset_confirm(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<ResetConfirmBody>,
) -> Result<impl IntoResponse, ApiError> {
    let hash_of = |t: &str| token_hash(t);
    let token_user: Option<(Uuid,)> = with_db!(&state.db, |p| {
        sqlx::query_as(
        "SELECT user_id FROM one_time_tokens WHERE token_hash = $1 AND purpose = 'password_reset'"
    )
    .bind(hash_of(&body.token))
    .fetch_optional(p)
    .await
    })?;
    let invalid = || ApiError::BadRequest("invalid or expired token".into());
    let user = match token_user {
        Some((id,)) => accounts::find_by_id(&state.db, id)
            .await?
            .ok_or_else(invalid)?,
        None => return Err(invalid()),
    };
    check_strength(&body.password, &user.email)?;
    let new_hash = state.hasher.hash(&body.password).await?;
    let now = galion_common::time::now();
    let mut tx = state.db.begin().await?;
    consume(&mut tx, &body.token, "password_reset", now).await?;
    with_tx!(&mut tx, |c| sqlx::query(
        "UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3"
    )
    .bind(&new_hash)
    .bind(now)
    .bind(user.id)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    accounts::revoke_all_sessions(&mut tx, user.id, now).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
