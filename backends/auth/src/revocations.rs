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

/// Most rows in one answer; a full page says `more: true` and the poller asks
/// again from its `cursor` at once.
pub const PAGE: i64 = 1000;

#[derive(Deserialize)]
pub struct FeedQuery {
    /// Rows with a sequence number above this one (the previous `cursor`).
    after_seq: Option<String>,
    /// Compatibility with pollers that predate `after_seq`: rows revoked at
    /// or after this instant. Misses revocations whose transaction commits
    /// more than the poller's overlap after their `revoked_at` (issue 21).
    since: Option<String>,
}

#[derive(Serialize)]
pub struct Revocation {
    jti: String,
    /// Unix seconds. Verifiers accept a token until `exp` + their leeway, so
    /// they must keep the entry until then, not drop it at `exp`.
    exp: i64,
    /// Unix seconds.
    revoked_at: i64,
    seq: i64,
}

#[derive(Serialize)]
pub struct RevocationList {
    revocations: Vec<Revocation>,
    /// Pass this back as `after_seq` on the next poll: every revocation with
    /// a higher sequence number is yet to be seen.
    cursor: i64,
    /// The page was full: poll again at once from `cursor`.
    more: bool,
    /// For `since` pollers: pass back as `since` on the next poll.
    server_time: i64,
}

#[derive(sqlx::FromRow)]
pub struct Row {
    pub seq: i64,
    pub jti: String,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: DateTime<Utc>,
}

/// Rows with `seq > after`, in seq order, at most `limit`, skipping those
/// past their retention (`expires_at <= cutoff`, which a verifier refuses
/// as expired anyway).
///
/// Advancing a cursor to the last seq returned is sound on both engines:
/// seqs become visible in order (SQLite has one writer; on PostgreSQL the
/// insert trigger of migration 20261205000001 serialises revoking
/// transactions from seq assignment to commit). Skipping expired rows in the
/// query is sound too: an expired row never becomes live again.
pub async fn rows_after(
    db: &Db,
    after: i64,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Row>, sqlx::Error> {
    with_db!(db, |p| {
        sqlx::query_as::<_, Row>(
            "SELECT seq, jti, expires_at, revoked_at FROM revoked_tokens \
             WHERE seq > $1 AND expires_at > $2 ORDER BY seq LIMIT $3",
        )
        .bind(after)
        .bind(cutoff)
        .bind(limit)
        .fetch_all(p)
        .await
    })
}

/// The highest seq ever assigned, committed or not (0 before the first).
/// Only used to notice a cursor from another database (restored from a
/// backup, replaced): a cursor above it would otherwise hide every new
/// revocation until the sequence caught up.
async fn high_water(db: &Db) -> Result<i64, sqlx::Error> {
    let hw: Option<(i64,)> =
        match db {
            Db::Sqlite(p) => {
                sqlx::query_as("SELECT seq FROM sqlite_sequence WHERE name = 'revoked_tokens'")
                    .fetch_optional(p)
                    .await?
            }
            Db::Postgres(p) => sqlx::query_as(
                "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM revoked_tokens_seq_seq",
            )
            .fetch_optional(p)
            .await?,
        };
    Ok(hw.map_or(0, |h| h.0))
}

/// Where a reader holding `cursor` must read from: `cursor`, or 0 when the
/// database's sequence is behind it (a different database now; re-reading
/// everything is idempotent for the reader).
pub async fn effective_cursor(db: &Db, cursor: i64) -> Result<i64, sqlx::Error> {
    if cursor <= 0 {
        return Ok(0);
    }
    let hw = high_water(db).await?;
    if cursor > hw {
        tracing::warn!(
            cursor,
            high_water = hw,
            "revocation cursor ahead of the database's sequence; reading from the start"
        );
        return Ok(0);
    }
    Ok(cursor)
}

/// `GET /revocations?after_seq=N` (or the older `?since=<unix secs|RFC
/// 3339>`): revocations still within their retention, in seq order, with
/// the `cursor` to pass back. Without either parameter, from the start.
pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<FeedQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let presented = galion_common::auth::bearer(&headers).ok_or_else(ApiError::invalid_token)?;
    if !state.settings.common.service_token.matches(presented) {
        return Err(ApiError::invalid_token());
    }
    let after = match q.after_seq.as_deref() {
        Some(raw) => Some(
            raw.trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    ApiError::BadRequest("after_seq must be a non-negative integer".into())
                })?,
        ),
        None => None,
    };
    let since = match (&after, q.since.as_deref()) {
        (None, Some(raw)) => Some(galion_common::time::parse_instant(raw).ok_or_else(|| {
            ApiError::BadRequest("since must be unix seconds or RFC 3339".into())
        })?),
        _ => None,
    };
    let now = galion_common::time::now();
    let cutoff = retention_cutoff(now, state.settings.revocation_retention);
    let (rows, cursor, more) = match since {
        Some(since) => {
            let rows = with_db!(&state.db, |p| {
                sqlx::query_as::<_, Row>(
                    "SELECT seq, jti, expires_at, revoked_at FROM revoked_tokens \
                     WHERE revoked_at >= $1 AND expires_at > $2 ORDER BY seq",
                )
                .bind(since)
                .bind(cutoff)
                .fetch_all(p)
                .await
            })?;
            // No seq cursor from a time window: rows with lower seqs may lie
            // before `since` and still be unseen, so 0 is the only honest value.
            (rows, 0, false)
        }
        None => {
            let from = effective_cursor(&state.db, after.unwrap_or(0)).await?;
            let rows = rows_after(&state.db, from, cutoff, PAGE).await?;
            let cursor = rows.last().map_or(from, |r| r.seq);
            let more = rows.len() as i64 >= PAGE;
            (rows, cursor, more)
        }
    };
    let revocations = rows
        .into_iter()
        .map(|r| Revocation {
            jti: r.jti,
            exp: r.expires_at.timestamp(),
            revoked_at: r.revoked_at.timestamp(),
            seq: r.seq,
        })
        .collect();
    Ok(Json(RevocationList {
        revocations,
        cursor,
        more,
        server_time: now.timestamp(),
    }))
}

/// Tokens that expired at or before this instant are past `retention`: no
/// verifier accepts them any more (their leeway is shorter), so neither the
/// table nor the feed needs to carry them. An out-of-range retention keeps
/// everything rather than overflowing.
pub fn retention_cutoff(now: DateTime<Utc>, retention: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(retention)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// Hourly: forget revocations past `exp` + `retention`, refresh tokens and
/// one-time tokens that have expired, and delivered outbox rows older than a
/// week.
///
/// A revocation must outlive `exp` by at least every verifier's leeway: the
/// gateway, users and auth accept a token until `exp` + leeway, and learn or
/// check revocations from this table (issue 21: rows deleted at `exp` let a
/// logged-out token back in for the leeway).
pub fn spawn_cleanup(db: Db, retention: Duration, shutdown: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            }
            let now = galion_common::time::now();
            let result: Result<(), sqlx::Error> = async {
                delete_expired_revocations(&db, now, retention).await?;
                with_db!(&db, |p| {
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

/// Deletes revocations whose token expired more than `retention` before
/// `now`; returns how many.
pub async fn delete_expired_revocations(
    db: &Db,
    now: DateTime<Utc>,
    retention: Duration,
) -> Result<u64, sqlx::Error> {
    let cutoff = retention_cutoff(now, retention);
    with_db!(db, |p| {
        sqlx::query("DELETE FROM revoked_tokens WHERE expires_at <= $1")
            .bind(cutoff)
            .execute(p)
            .await
            .map(|r| r.rows_affected())
    })
}
