//! Account endpoints: register, login, refresh, logout, me.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use galion_common::accounts::{self, UserRow, USER_COLUMNS};
use galion_common::db::is_unique_violation;
use galion_common::outbox::enqueue;
use galion_common::{with_db, with_tx, ApiError, ApiJson};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::password::check_strength;
use crate::tokens::{authenticate, issue_session, token_hash};
use crate::{email, AppState, SERVICE};

#[derive(Deserialize)]
pub struct RegisterBody {
    email: String,
    password: String,
    name: String,
}

#[derive(Deserialize)]
pub struct LoginBody {
    email: String,
    password: String,
}

#[derive(Deserialize)]
pub struct RefreshBody {
    refresh_token: String,
}

fn invalid_credentials() -> ApiError {
    ApiError::Unauthorized {
        code: "invalid_credentials",
        message: "invalid email or password",
    }
}

fn invalid_refresh() -> ApiError {
    ApiError::Unauthorized {
        code: "invalid_grant",
        message: "invalid or expired refresh token",
    }
}

/// `POST /register` → 201 user object.
pub async fn register(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<RegisterBody>,
) -> Result<impl IntoResponse, ApiError> {
    let email = accounts::normalize_email(&body.email);
    accounts::validate_email(&email)?;
    let name = accounts::validate_name(&body.name)?;
    check_strength(&body.password, &email)?;
    let hash = state.hasher.hash(&body.password).await?;
    let now = galion_common::time::now();
    let id = Uuid::now_v7();
    let mut tx = state.db.begin().await?;
    let sql = format!(
        "INSERT INTO users (id, email, name, password_hash, role, email_verified, is_active, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, 'user', $5, $6, $7, $7) RETURNING {USER_COLUMNS}"
    );
    let inserted = with_tx!(&mut tx, |c| sqlx::query_as::<_, UserRow>(&sql)
        .bind(id)
        .bind(&email)
        .bind(&name)
        .bind(&hash)
        .bind(false)
        .bind(true)
        .bind(now)
        .fetch_one(c)
        .await);
    let user = match inserted {
        Ok(u) => u,
        Err(e) if is_unique_violation(&e) => {
            return Err(ApiError::Conflict("email already registered".into()))
        }
        Err(e) => return Err(e.into()),
    };
    enqueue(
        &mut tx,
        SERVICE,
        "user.registered",
        Some(user.id),
        json!({"email_domain": email.rsplit('@').next()}),
    )
    .await?;
    let mail = email::queue_verification(&state, &mut tx, &user, now).await?;
    tx.commit().await?;
    mail.log(&state);
    state.relay.wake();
    state.registrations.inc();
    Ok((StatusCode::CREATED, Json(user.view())))
}

/// Failed logins for one email within [`LOGIN_WINDOW`] after which that
/// email is throttled: guessing one account's password from many addresses
/// (which per-IP limits and jails at the gateway do not see) gets this many
/// tries, then one per [`LOGIN_COOLDOWN`].
pub const LOGIN_FAILURE_LIMIT: i64 = 10;
pub const LOGIN_WINDOW: Duration = Duration::from_secs(15 * 60);
/// How long a throttled email waits after its latest failure. Short, because
/// anyone can throttle anyone's email: this is how long an attacker can keep
/// the owner out with one wrong password per cool-down.
pub const LOGIN_COOLDOWN: Duration = Duration::from_secs(5 * 60);

/// The throttle key of a normalised email: a hash, so the table lists no
/// addresses, and computed for unknown emails too, so being throttled says
/// nothing about whether an account exists.
fn throttle_key(email: &str) -> String {
    token_hash(&format!("login-throttle:{email}"))
}

/// Failures of `key` in the window before `now` (other than row `except`)
/// and the newest of them.
async fn recent_failures(
    state: &AppState,
    key: &str,
    now: DateTime<Utc>,
    except: Option<Uuid>,
) -> Result<(i64, Option<DateTime<Utc>>), ApiError> {
    let since = now - chrono::Duration::from_std(LOGIN_WINDOW).map_err(ApiError::internal)?;
    let except = except.unwrap_or_else(Uuid::nil);
    Ok(with_db!(&state.db, |p| {
        sqlx::query_as(
        "SELECT COUNT(*), MAX(failed_at) FROM login_failures WHERE key_hash = $1 AND failed_at > $2 AND id <> $3"
    )
    .bind(key)
    .bind(since)
    .bind(except)
    .fetch_one(p)
    .await
    })?)
}

/// How long `key` must wait, if it is throttled.
fn throttled_for(
    (failures, newest): (i64, Option<DateTime<Utc>>),
    now: DateTime<Utc>,
) -> Option<Duration> {
    let newest = newest.filter(|_| failures >= LOGIN_FAILURE_LIMIT)?;
    let until = newest + chrono::Duration::from_std(LOGIN_COOLDOWN).ok()?;
    (until - now).to_std().ok().filter(|d| !d.is_zero())
}

/// The 429 of a throttled email (same code as the gateway's own limits).
fn throttled(state: &AppState, wait: Duration) -> ApiError {
    state.logins.with_label_values(&["throttled"]).inc();
    ApiError::RateLimited {
        retry_after: wait,
        message: "too many failed logins for this email: retry later",
    }
}

/// Records a failed login of `key` and says whether it came over the limit
/// (then the caller answers 429, not 401, and the row is removed again so
/// throttled attempts do not prolong the cool-down). Insert first, count
/// after: of concurrent failures, each counts every one committed before
/// it, so at most [`LOGIN_FAILURE_LIMIT`] of a burst are answered 401.
async fn record_failure(
    state: &AppState,
    key: &str,
    now: DateTime<Utc>,
) -> Result<Option<Duration>, ApiError> {
    let id = Uuid::new_v4();
    let expired = now - chrono::Duration::from_std(LOGIN_WINDOW).map_err(ApiError::internal)?;
    // Old rows of every key go as new ones come: no cleanup task needed.
    with_db!(&state.db, |p| sqlx::query(
        "DELETE FROM login_failures WHERE failed_at < $1"
    )
    .bind(expired)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?;
    with_db!(&state.db, |p| sqlx::query(
        "INSERT INTO login_failures (id, key_hash, failed_at) VALUES ($1, $2, $3)"
    )
    .bind(id)
    .bind(key)
    .bind(now)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?;
    let wait = throttled_for(recent_failures(state, key, now, Some(id)).await?, now);
    if wait.is_some() {
        with_db!(&state.db, |p| sqlx::query(
            "DELETE FROM login_failures WHERE id = $1"
        )
        .bind(id)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))?;
    }
    Ok(wait)
}

/// `POST /login` → tokens; one 401 for every failure, 429 with
/// `Retry-After` while the email is throttled (see [`LOGIN_FAILURE_LIMIT`]).
///
/// The throttle lives in the database (`login_failures`), not in process
/// memory: it then holds across auth instances and restarts, which an
/// attacker spreading guesses over time or a cluster would otherwise get
/// around, at the price of a query per login and two writes per failure
/// (a failure already writes an outbox event).
pub async fn login(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Response, ApiError> {
    let email = accounts::normalize_email(&body.email);
    let key = throttle_key(&email);
    let now = galion_common::time::now();
    // Before the password is looked at: a throttled guess learns nothing,
    // and costs no argon2 work.
    let before = recent_failures(&state, &key, now, None).await?;
    if let Some(wait) = throttled_for(before, now) {
        return Err(throttled(&state, wait));
    }
    let user = accounts::find_by_email(&state.db, &email).await?;
    // Verify even for unknown emails (against a dummy) so timing does not
    // reveal which addresses have accounts.
    let ok = state
        .hasher
        .verify(
            &body.password,
            user.as_ref().map(|u| u.password_hash.as_str()),
        )
        .await?;
    // After the (slow) verification: the failure's time starts its cool-down.
    let now = galion_common::time::now();
    let user = match user {
        Some(u) if ok && u.is_usable() => {
            // A correct password that other requests' failures put over the
            // limit while it was being checked is refused too, or a burst of
            // guesses would learn which one was right.
            if let Some(wait) = throttled_for(recent_failures(&state, &key, now, None).await?, now)
            {
                return Err(throttled(&state, wait));
            }
            u
        }
        other => {
            if let Some(wait) = record_failure(&state, &key, now).await? {
                return Err(throttled(&state, wait));
            }
            let mut tx = state.db.begin().await?;
            enqueue(
                &mut tx,
                SERVICE,
                "user.login_failed",
                other.map(|u| u.id),
                json!({"reason": "invalid_credentials"}),
            )
            .await?;
            tx.commit().await?;
            state.relay.wake();
            state.logins.with_label_values(&["failure"]).inc();
            return Err(invalid_credentials());
        }
    };
    let mut tx = state.db.begin().await?;
    with_tx!(&mut tx, |c| sqlx::query(
        "UPDATE users SET last_login_at = $1 WHERE id = $2"
    )
    .bind(now)
    .bind(user.id)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    let tokens = issue_session(&state, &mut tx, &user, None, now).await?;
    enqueue(&mut tx, SERVICE, "user.logged_in", Some(user.id), json!({})).await?;
    tx.commit().await?;
    // The owner is in: earlier typos no longer count towards the limit.
    if before.0 > 0 {
        with_db!(&state.db, |p| sqlx::query(
            "DELETE FROM login_failures WHERE key_hash = $1"
        )
        .bind(&key)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))?;
    }
    state.relay.wake();
    state.logins.with_label_values(&["success"]).inc();
    Ok(Json(tokens).into_response())
}

#[derive(sqlx::FromRow)]
struct RefreshRow {
    id: Uuid,
    family_id: Uuid,
    user_id: Uuid,
    expires_at: DateTime<chrono::Utc>,
    used_at: Option<DateTime<chrono::Utc>>,
    revoked_at: Option<DateTime<chrono::Utc>>,
}

async fn find_refresh(state: &AppState, token: &str) -> Result<Option<RefreshRow>, ApiError> {
    let hash = token_hash(token);
    Ok(with_db!(&state.db, |p| {
        sqlx::query_as::<_, RefreshRow>(
        "SELECT id, family_id, user_id, expires_at, used_at, revoked_at FROM refresh_tokens WHERE token_hash = $1"
    )
    .bind(&hash)
    .fetch_optional(p)
    .await
    })?)
}

async fn revoke_family(state: &AppState, family: Uuid) -> Result<(), ApiError> {
    let mut tx = state.db.begin().await?;
    accounts::revoke_family(&mut tx, family, galion_common::time::now()).await?;
    tx.commit().await?;
    Ok(())
}

/// `POST /refresh`: rotates the refresh token. Presenting a spent token
/// means it was stolen (or replayed): the whole family is revoked.
pub async fn refresh(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<impl IntoResponse, ApiError> {
    let row = find_refresh(&state, &body.refresh_token)
        .await?
        .ok_or_else(invalid_refresh)?;
    let now = galion_common::time::now();
    if row.revoked_at.is_some() {
        return Err(invalid_refresh());
    }
    if row.used_at.is_some() {
        tracing::warn!(family = %row.family_id, user = %row.user_id, "refresh token reuse detected; revoking the family");
        state.refresh_reuse.inc();
        revoke_family(&state, row.family_id).await?;
        return Err(invalid_refresh());
    }
    if row.expires_at <= now {
        return Err(invalid_refresh());
    }
    let user = accounts::find_by_id(&state.db, row.user_id)
        .await?
        .filter(UserRow::is_usable)
        .ok_or_else(invalid_refresh)?;
    let mut tx = state.db.begin().await?;
    // The conditional update makes two concurrent refreshes with the same
    // token race safely: exactly one wins, the other is treated as reuse.
    let claimed = with_tx!(&mut tx, |c| {
        sqlx::query(
        "UPDATE refresh_tokens SET used_at = $1 WHERE id = $2 AND used_at IS NULL AND revoked_at IS NULL"
    )
    .bind(now)
    .bind(row.id)
    .execute(c)
    .await.map(|r| r.rows_affected())
    })?;
    if claimed != 1 {
        drop(tx);
        state.refresh_reuse.inc();
        revoke_family(&state, row.family_id).await?;
        return Err(invalid_refresh());
    }
    let tokens = issue_session(&state, &mut tx, &user, Some(row.family_id), now).await?;
    tx.commit().await?;
    Ok(Json(tokens))
}

/// `POST /logout` (bearer, optional `{"refresh_token"}`) → 204. Revokes the
/// access token's jti and the refresh family of the given token.
pub async fn logout(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let claims = authenticate(&state, &headers).await?;
    let refresh = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let parsed: RefreshBody =
            serde_json::from_slice(&body).map_err(|e| ApiError::Validation(e.to_string()))?;
        Some(parsed.refresh_token)
    };
    let user_id = claims.user_id();
    let now = galion_common::time::now();
    let exp = DateTime::from_timestamp(claims.exp, 0).unwrap_or(now);
    let family = match &refresh {
        Some(t) => find_refresh(&state, t)
            .await?
            .filter(|r| Some(r.user_id) == user_id)
            .map(|r| r.family_id),
        None => None,
    };
    let mut tx = state.db.begin().await?;
    accounts::revoke_jti(&mut tx, &claims.jti, user_id, exp, now).await?;
    if let Some(family) = family {
        accounts::revoke_family(&mut tx, family, now).await?;
    }
    enqueue(&mut tx, SERVICE, "user.logged_out", user_id, json!({})).await?;
    tx.commit().await?;
    state.relay.wake();
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /me` → the caller's user object.
pub async fn me(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let claims = authenticate(&state, &headers).await?;
    let id = claims.user_id().ok_or_else(ApiError::invalid_token)?;
    let user = accounts::find_by_id(&state.db, id)
        .await?
        .filter(UserRow::is_usable)
        .ok_or_else(ApiError::invalid_token)?;
    Ok(Json(user.view()))
}
