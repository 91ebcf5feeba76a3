//! Issuing sessions: a signed access JWT plus an opaque refresh token
//! (32 random bytes, stored as SHA-256) in a rotation family. The access
//! token's jti is stored with the refresh token so revoking a family (logout,
//! reuse detection, delete) can also revoke the access tokens it produced.

use chrono::{DateTime, Utc};
use galion_common::accounts::UserRow;
use galion_common::db::Tx;
use galion_common::jwt::Claims;
use galion_common::{with_tx, ApiError};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::AppState;

/// Body of `/login` and `/refresh`.
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
}

/// Hex SHA-256 of an opaque token, as stored.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Signs an access token for `user` and stores a new refresh token in
/// `family` (a new family when `None`), inside `tx`.
pub async fn issue_session(
    state: &AppState,
    tx: &mut Tx,
    user: &UserRow,
    family: Option<Uuid>,
    now: DateTime<Utc>,
) -> Result<TokenResponse, ApiError> {
    let ttl = state.settings.access_ttl;
    let exp = now + chrono::Duration::from_std(ttl).map_err(ApiError::internal)?;
    let jti = Uuid::new_v4().to_string();
    let claims = Claims {
        sub: user.id.to_string(),
        email: user.email.clone(),
        role: user.role.clone(),
        iss: state.settings.common.jwt.issuer.clone(),
        aud: state.settings.common.jwt.audience.clone(),
        iat: now.timestamp(),
        nbf: now.timestamp(),
        exp: exp.timestamp(),
        jti: jti.clone(),
    };
    let access_token = state.keys.sign(&claims).map_err(ApiError::internal)?;
    let refresh_token = galion_common::secrets::random_token();
    let refresh_exp =
        now + chrono::Duration::from_std(state.settings.refresh_ttl).map_err(ApiError::internal)?;
    with_tx!(tx, |c| {
        sqlx::query(
        "INSERT INTO refresh_tokens (id, token_hash, family_id, user_id, access_jti, access_expires_at, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    )
    .bind(Uuid::new_v4())
    .bind(token_hash(&refresh_token))
    .bind(family.unwrap_or_else(Uuid::new_v4))
    .bind(user.id)
    .bind(&jti)
    .bind(exp)
    .bind(now)
    .bind(refresh_exp)
    .execute(c)
    .await.map(|r| r.rows_affected())
    })?;
    Ok(TokenResponse {
        access_token,
        refresh_token,
        token_type: "Bearer",
        expires_in: ttl.as_secs(),
    })
}

/// The verified claims of the request's bearer token, refused when revoked.
pub async fn authenticate(
    state: &AppState,
    headers: &axum::http::HeaderMap,
) -> Result<Claims, ApiError> {
    let token = galion_common::auth::bearer(headers).ok_or_else(ApiError::invalid_token)?;
    let claims = state.keys.verify(token).await.map_err(|e| {
        tracing::debug!(error = %e, "access token rejected");
        ApiError::invalid_token()
    })?;
    if galion_common::accounts::is_jti_revoked(&state.db, &claims.jti).await? {
        return Err(ApiError::invalid_token());
    }
    Ok(claims)
}
