//! `/users` endpoints. Authorisation: the caller is resolved from a verified
//! JWT to their current database row; admins may act on anyone, users only
//! on themselves, and only admins change `role` or `is_active`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use galion_common::accounts::{self, UserRow, UserView, USER_COLUMNS};
use galion_common::db::{is_unique_violation, like_pattern};
use galion_common::outbox::enqueue;
use galion_common::{with_db, with_tx, ApiError, ApiJson, ApiQuery};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::{AppState, SERVICE};

/// The caller's live account, from a verified, unrevoked access token.
async fn caller(state: &AppState, headers: &HeaderMap) -> Result<UserRow, ApiError> {
    let token = galion_common::auth::bearer(headers).ok_or_else(ApiError::invalid_token)?;
    let claims = state.verifier.verify(token).await.map_err(|e| {
        tracing::debug!(error = %e, "access token rejected");
        ApiError::invalid_token()
    })?;
    if accounts::is_jti_revoked(&state.db, &claims.jti).await? {
        return Err(ApiError::invalid_token());
    }
    let id = claims.user_id().ok_or_else(ApiError::invalid_token)?;
    accounts::find_by_id(&state.db, id)
        .await?
        .filter(UserRow::is_usable)
        .ok_or_else(ApiError::invalid_token)
}

/// Parses a path id; anything that is not a UUID cannot name a user.
fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound)
}

fn authorize_target(caller: &UserRow, target: Uuid) -> Result<(), ApiError> {
    if caller.id == target || caller.is_admin() {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<i64>,
    offset: Option<i64>,
    q: Option<String>,
}

#[derive(Serialize)]
pub struct UserPage {
    users: Vec<UserView>,
    total: i64,
    limit: i64,
    offset: i64,
    next_offset: Option<i64>,
}

/// `GET /users?limit&offset&q` (admin): live users, oldest first; `q`
/// matches email or name, case-insensitively, as a literal substring.
pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let me = caller(&state, &headers).await?;
    if !me.is_admin() {
        return Err(ApiError::Forbidden);
    }
    let limit = q.limit.unwrap_or(20).clamp(1, 100);
    let offset = q.offset.unwrap_or(0).max(0);
    let pattern =
        q.q.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(like_pattern);
    let filter = "deleted_at IS NULL AND ($1 IS NULL OR LOWER(email) LIKE $1 ESCAPE '\\' OR LOWER(name) LIKE $1 ESCAPE '\\')";
    let list_sql = format!("SELECT {USER_COLUMNS} FROM users WHERE {filter} ORDER BY created_at, id LIMIT $2 OFFSET $3");
    let count_sql = format!("SELECT COUNT(*) FROM users WHERE {filter}");
    let rows = with_db!(&state.db, |p| sqlx::query_as::<_, UserRow>(&list_sql)
        .bind(pattern.as_deref())
        .bind(limit)
        .bind(offset)
        .fetch_all(p)
        .await)?;
    let (total,): (i64,) = with_db!(&state.db, |p| sqlx::query_as(&count_sql)
        .bind(pattern.as_deref())
        .fetch_one(p)
        .await)?;
    let next_offset = (offset + limit < total).then_some(offset + limit);
    Ok(Json(UserPage {
        users: rows.iter().map(UserRow::view).collect(),
        total,
        limit,
        offset,
        next_offset,
    }))
}

/// `GET /users/me`.
pub async fn me(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(caller(&state, &headers).await?.view()))
}

/// `GET /users/{id}` (self or admin).
pub async fn get_one(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let me = caller(&state, &headers).await?;
    let id = parse_id(&id)?;
    authorize_target(&me, id)?;
    let user = accounts::find_by_id(&state.db, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(user.view()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    name: Option<String>,
    email: Option<String>,
    role: Option<String>,
    is_active: Option<bool>,
}

/// `PATCH /users/{id}` (self or admin; `role`/`is_active` admin only). A new
/// email must be verified again; deactivation revokes every session.
pub async fn patch(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PatchBody>,
) -> Result<impl IntoResponse, ApiError> {
    let me = caller(&state, &headers).await?;
    let id = parse_id(&id)?;
    authorize_target(&me, id)?;
    if (body.role.is_some() || body.is_active.is_some()) && !me.is_admin() {
        return Err(ApiError::Forbidden);
    }
    let target = accounts::find_by_id(&state.db, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let mut changed = Vec::new();
    let name = match &body.name {
        Some(n) => {
            let n = accounts::validate_name(n)?;
            if n != target.name {
                changed.push("name");
            }
            n
        }
        None => target.name.clone(),
    };
    let email = match &body.email {
        Some(e) => {
            let e = accounts::normalize_email(e);
            accounts::validate_email(&e)?;
            if e != target.email {
                changed.push("email");
            }
            e
        }
        None => target.email.clone(),
    };
    let role = match body.role.as_deref() {
        Some(r @ ("user" | "admin")) => {
            if r != target.role {
                changed.push("role");
            }
            r.to_string()
        }
        Some(_) => return Err(ApiError::Validation("role must be user or admin".into())),
        None => target.role.clone(),
    };
    let is_active = body.is_active.unwrap_or(target.is_active);
    if is_active != target.is_active {
        changed.push("is_active");
    }
    if changed.is_empty() {
        return Ok(Json(target.view()));
    }
    let email_changed = changed.contains(&"email");
    let email_verified = target.email_verified && !email_changed;
    let now = galion_common::time::now();
    let mut tx = state.db.begin().await?;
    let sql = format!(
        "UPDATE users SET name = $1, email = $2, role = $3, is_active = $4, email_verified = $5, updated_at = $6 \
         WHERE id = $7 AND deleted_at IS NULL RETURNING {USER_COLUMNS}"
    );
    let updated = with_tx!(&mut tx, |c| sqlx::query_as::<_, UserRow>(&sql)
        .bind(&name)
        .bind(&email)
        .bind(&role)
        .bind(is_active)
        .bind(email_verified)
        .bind(now)
        .bind(id)
        .fetch_optional(c)
        .await);
    let updated = match updated {
        Ok(Some(u)) => u,
        Ok(None) => return Err(ApiError::NotFound),
        Err(e) if is_unique_violation(&e) => {
            return Err(ApiError::Conflict("email already registered".into()))
        }
        Err(e) => return Err(e.into()),
    };
    if email_changed {
        // Links mailed to the old address must not verify the new one.
        with_tx!(&mut tx, |c| {
            sqlx::query(
            "UPDATE one_time_tokens SET used_at = $1 WHERE user_id = $2 AND purpose = 'verify_email' AND used_at IS NULL"
        )
        .bind(now)
        .bind(id)
        .execute(c)
        .await.map(|r| r.rows_affected())
        })?;
    }
    if !is_active && target.is_active {
        accounts::revoke_all_sessions(&mut tx, id, now).await?;
    }
    enqueue(
        &mut tx,
        SERVICE,
        "user.updated",
        Some(id),
        json!({"fields": changed, "by": me.id}),
    )
    .await?;
    tx.commit().await?;
    state.relay.wake();
    Ok(Json(updated.view()))
}

/// `DELETE /users/{id}` (self or admin) → 204. Soft delete; every session
/// of the account is revoked.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let me = caller(&state, &headers).await?;
    let id = parse_id(&id)?;
    authorize_target(&me, id)?;
    let now = galion_common::time::now();
    let mut tx = state.db.begin().await?;
    let n = with_tx!(&mut tx, |c| {
        sqlx::query(
        "UPDATE users SET deleted_at = $1, is_active = $2, updated_at = $1 WHERE id = $3 AND deleted_at IS NULL"
    )
    .bind(now)
    .bind(false)
    .bind(id)
    .execute(c)
    .await.map(|r| r.rows_affected())
    })?;
    if n == 0 {
        return Err(ApiError::NotFound);
    }
    accounts::revoke_all_sessions(&mut tx, id, now).await?;
    enqueue(
        &mut tx,
        SERVICE,
        "user.deleted",
        Some(id),
        json!({"by": me.id}),
    )
    .await?;
    tx.commit().await?;
    state.relay.wake();
    Ok(StatusCode::NO_CONTENT)
}
