//! Cluster mode: mirrors revoked access-token ids into Redis so every
//! gateway instance can refuse them without polling `/revocations`.
//!
//! Enabled by `GALION_REDIS_URL`. A background task tails `revoked_tokens`
//! (which galion-users also writes, on delete/deactivate) every 250 ms and,
//! for each new row, sets `galion:revoked:<jti>` = `<exp unix secs>` with a
//! TTL until the token's expiry, and publishes `{"jti","exp"}` on the
//! `galion:revocations` channel. Writes are idempotent, so several auth
//! instances may publish the same rows. If Redis is down the task retries
//! from the same position; nothing is skipped.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use galion_common::db::Db;
use galion_common::with_db;
use tokio_util::sync::CancellationToken;

/// Key prefix of revoked jtis.
pub const KEY_PREFIX: &str = "galion:revoked:";
/// Pub/sub channel of revocations.
pub const CHANNEL: &str = "galion:revocations";

#[derive(sqlx::FromRow)]
struct Row {
    jti: String,
    expires_at: DateTime<Utc>,
    revoked_at: DateTime<Utc>,
}

/// Starts the publisher. The Redis URL is validated here (startup error);
/// connection failures later are retried.
pub fn spawn(
    db: Db,
    redis_url: &str,
    lookback: Duration,
    shutdown: CancellationToken,
) -> Result<(), redis::RedisError> {
    let client = redis::Client::open(redis_url)?;
    tokio::spawn(async move {
        let mut cursor = galion_common::time::now()
            - chrono::Duration::from_std(lookback).unwrap_or(chrono::Duration::hours(1));
        let mut seen_at_cursor: HashSet<String> = HashSet::new();
        let mut conn: Option<redis::aio::ConnectionManager> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            if conn.is_none() {
                match redis::aio::ConnectionManager::new(client.clone()).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "redis unreachable; revocations not mirrored yet");
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            match publish_new(&db, c, &mut cursor, &mut seen_at_cursor).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(count = n, "revocations mirrored to redis"),
                Err(e) => {
                    tracing::warn!(error = %e, "mirroring revocations to redis failed; will retry")
                }
            }
        }
    });
    Ok(())
}

async fn publish_new(
    db: &Db,
    conn: &mut redis::aio::ConnectionManager,
    cursor: &mut DateTime<Utc>,
    seen_at_cursor: &mut HashSet<String>,
) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    let now = galion_common::time::now();
    let rows = with_db!(db, |p| {
        sqlx::query_as::<_, Row>(
        "SELECT jti, expires_at, revoked_at FROM revoked_tokens WHERE revoked_at >= $1 AND expires_at > $2 \
         ORDER BY revoked_at LIMIT 1000"
    )
    .bind(*cursor)
    .bind(now)
    .fetch_all(p)
    .await
    })?;
    let mut published = 0;
    for row in rows {
        if row.revoked_at == *cursor && seen_at_cursor.contains(&row.jti) {
            continue;
        }
        let ttl = (row.expires_at - now).num_seconds().max(1) as u64;
        let exp = row.expires_at.timestamp();
        let message = serde_json::json!({"jti": row.jti, "exp": exp}).to_string();
        redis::pipe()
            .set_ex(format!("{KEY_PREFIX}{}", row.jti), exp, ttl)
            .ignore()
            .publish(CHANNEL, message)
            .ignore()
            .query_async::<()>(conn)
            .await?;
        if row.revoked_at > *cursor {
            *cursor = row.revoked_at;
            seen_at_cursor.clear();
        }
        seen_at_cursor.insert(row.jti);
        published += 1;
    }
    Ok(published)
}
