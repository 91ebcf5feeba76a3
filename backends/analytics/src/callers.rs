//! Who is calling, from the request's own credentials.
//!
//! The gateway forwards the client's `Authorization` and `X-API-Key`
//! unchanged and never lends its service token, so analytics checks them
//! itself. The `X-User-*` headers the gateway adds are not read: identity
//! comes from what was verified here, and no header grants authority.

use axum::http::{HeaderMap, HeaderName};
use galion_common::ApiError;
use uuid::Uuid;

use crate::AppState;

static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The writer of a `POST /events` batch, which decides what its events may
/// say about themselves (see [`crate::ingest`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Writer {
    /// The service token: the outbox relays of auth and users, which write
    /// on behalf of users and are trusted with every field.
    Service,
    /// A signed-in user (admin or not): a JWT verified against auth's JWKS.
    User(Uuid),
    /// An ingestion API key, by its configured name.
    ApiKey(String),
}

fn invalid_api_key() -> ApiError {
    ApiError::Unauthorized {
        code: "invalid_api_key",
        message: "missing or invalid API key",
    }
}

/// Identifies the writer of `POST /events`. An `X-API-Key` header decides
/// on its own when present (as at the gateway, whose `any: [jwt, api_key]`
/// prefers it), so a bad key is a 401 even beside a good token; otherwise
/// the bearer token must be the service token or a valid JWT. Anything else
/// is a 401.
pub async fn writer(state: &AppState, headers: &HeaderMap) -> Result<Writer, ApiError> {
    let mut keys = headers.get_all(&X_API_KEY).iter();
    if let Some(key) = keys.next() {
        // Two keys would leave which one counts to each reader's whim.
        if keys.next().is_some() {
            return Err(invalid_api_key());
        }
        return state
            .settings
            .api_keys
            .lookup(key.as_bytes())
            .map(|name| Writer::ApiKey(name.to_string()))
            .ok_or_else(invalid_api_key);
    }
    let token = galion_common::auth::bearer(headers).ok_or_else(ApiError::invalid_token)?;
    if state.settings.common.service_token.matches(token) {
        return Ok(Writer::Service);
    }
    let claims = state.verifier.verify(token).await.map_err(|e| {
        tracing::debug!(error = %e, "token rejected");
        ApiError::invalid_token()
    })?;
    // Events are stamped with `sub`; a token whose subject is not a user id
    // cannot be stamped, so it cannot write.
    claims
        .user_id()
        .map(Writer::User)
        .ok_or_else(ApiError::invalid_token)
}

/// Readers (`GET /events`, `GET /stats`): a valid admin JWT only. No or an
/// invalid token is 401; the service token or a non-admin token is 403.
pub async fn admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let token = galion_common::auth::bearer(headers).ok_or_else(ApiError::invalid_token)?;
    if state.settings.common.service_token.matches(token) {
        return Err(ApiError::Forbidden);
    }
    let claims = state.verifier.verify(token).await.map_err(|e| {
        tracing::debug!(error = %e, "token rejected");
        ApiError::invalid_token()
    })?;
    if claims.is_admin() {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}
