//! `GET /.well-known/jwks.json` and `GET /revocations`, the two documents
//! the gateway polls, plus the cleanup of expired revocations.
//!
//! `/revocations` requires the service token (`Authorization: Bearer
//! $GALION_SERVICE_TOKEN`): a jti is harmless alone, but the list reveals
//! who logs out when, which is nobody's business but the gateway's.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use galion_common::db::Db;
use galion_common::{with_db, ApiError, ApiQuery};
use serde::{Deserialize, Serialize};

use crate::AppState;

/// `GET /.well-known/jwks.json`: current and recently retired keys.
pub async fn jwks(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "public, max-age=60")],
        Json(state.keys.jwks()),
    )
}

#[derive(Deserialize)]
pub struct SinceQuery {
    since: Option<String>,
}

#[derive(Serialize)]
pub struct Revocation {
    jti: String,
    /// Unix seconds; the gateway can forget the entry after this.
    exp: i64,
    /// Unix seconds.
    revoked_at: i64,
}

#[derive(Serialize)]
pub struct RevocationList {
    revocations: Vec<Revocation>,
    /// Pass this back as `since` on the next poll.
    server_time: i64,
}

#[derive(sqlx::FromRow)]
struct Row {
    jti: String,
    expires_at: DateTime<Utc>,
    revoked_at: DateTime<Utc>,
}

/// `GET /revocations?since=<unix secs|RFC 3339>`: unexpired revoked jtis
/// revoked at or after `since` (all unexpired ones without it).
pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<SinceQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let presented = galion_common::auth::bearer(&headers).ok_or_else(ApiError::invalid_token)?;
    if !state.settings.common.service_token.matches(presented) {
        return Err(ApiError::invalid_token());
    }
    let since = match q.since.as_deref() {
        Some(raw) => galion_common::time::parse_instant(raw)
            .ok_or_else(|| ApiError::BadRequest("since must be unix seconds or RFC 3339".into()))?,
        None => DateTime::<Utc>::UNIX_EPOCH,
    };
    let now = galion_common::time::now();
    let rows = with_db!(&state.db, |p| {
        sqlx::query_as::<_, Row>(
        "SELECT jti, expires_at, revoked_at FROM revoked_tokens WHERE revoked_at >= $1 AND expires_at > $2 ORDER BY revoked_at"
    )
    .bind(since)
    .bind(now)
    .fetch_all(p)
    .await
    })?;
    let revocations = rows
        .into_iter()
        .map(|r| Revocation {
            jti: r.jti,
            exp: r.expires_at.timestamp(),
            revoked_at: r.revoked_at.timestamp(),
        })
        .collect();
    Ok(Json(RevocationList {
        revocations,
        server_time: now.timestamp(),
    }))
}

/// Hourly: forget revocations, refresh tokens and one-time tokens that
/// have expired, and delivered outbox rows older than a week.
pub fn spawn_cleanup(db: Db, shutdown: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            }
            let now = galion_common::time::now();
            let result: Result<(), sqlx::Error> = async {
                with_db!(&db, |p| {
                    sqlx::query("DELETE FROM revoked_tokens WHERE expires_at < $1")
                        .bind(now)
                        .execute(p)
                        .await
                        .map(|r| r.rows_affected())?;
                    sqlx::query("DELETE FROM refresh_tokens WHERE expires_at < $1")
                        .bind(now)
                        .execute(p)
                        .await
                        .map(|r| r.rows_affected())?;
                    sqlx::query("DELETE FROM one_time_tokens WHERE expires_at < $1")
                        .bind(now)
                        .execute(p)
                        .await
                        .map(|r| r.rows_affected())
                })?;
                galion_common::outbox::prune_delivered(&db, Duration::from_secs(7 * 86400)).await?;
                Ok(())
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "cleanup failed");
            }
        }
    });
}
