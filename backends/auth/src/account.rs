//! Account endpoints: register, login, refresh, logout, me.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use chrono::DateTime;
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

/// `POST /login` → tokens; one 401 for every failure.
pub async fn login(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<impl IntoResponse, ApiError> {
    let email = accounts::normalize_email(&body.email);
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
    let now = galion_common::time::now();
    let user = match user {
        Some(u) if ok && u.is_usable() => u,
        other => {
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
    state.relay.wake();
    state.logins.with_label_values(&["success"]).inc();
    Ok(Json(tokens))
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
