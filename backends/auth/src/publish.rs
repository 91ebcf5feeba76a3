//! Cluster mode: mirrors revoked access-token ids into Redis so every
//! gateway instance can refuse them without waiting for its next poll of
//! `/revocations`.
//!
//! Enabled by `GALION_REDIS_URL`. A background task tails `revoked_tokens`
//! (which galion-users also writes, on delete/deactivate) by sequence number
//! every 250 ms and, for each new row, sets `galion:revoked:<jti>` = `<exp
//! unix secs>` with a TTL until `exp` + the revocation retention (verifiers
//! accept a token until `exp` + their leeway, which the retention exceeds),
//! and publishes `{"jti","exp"}` on the `galion:revocations` channel.
//!
//! Tailing by seq, not by `revoked_at`: the timestamp is taken before the
//! revoking transaction commits, so a slow commit used to land behind the
//! time cursor and was never published (issue 21). Seqs become visible in
//! order (see `revocations::rows_after`), so the cursor can follow the last
//! one published. Nothing is persisted: a restarted publisher starts from
//! seq 0 and republishes every revocation still within its retention, which
//! is idempotent (the same key and value; gateways ignore known jtis), as is
//! several auth instances publishing the same rows. If Redis is down the
//! task retries from the same cursor; nothing is skipped.

use std::time::Duration;

use galion_common::db::Db;
use tokio_util::sync::CancellationToken;

use crate::revocations::{self, Row};

/// Key prefix of revoked jtis.
pub const KEY_PREFIX: &str = "galion:revoked:";
/// Pub/sub channel of revocations.
pub const CHANNEL: &str = "galion:revocations";

/// What the publisher writes where, and how often it looks.
#[derive(Clone, Debug)]
pub struct Options {
    /// Prefix of the `<prefix><jti>` keys.
    pub key_prefix: String,
    /// Channel the gateways subscribe to.
    pub channel: String,
    /// Keys live until the token's `exp` + this.
    pub retention: Duration,
    /// Pause between two looks at the table when nothing is pending.
    pub interval: Duration,
}

impl Options {
    /// The production key prefix and channel.
    pub fn new(retention: Duration) -> Self {
        Options {
            key_prefix: KEY_PREFIX.to_owned(),
            channel: CHANNEL.to_owned(),
            retention,
            interval: Duration::from_millis(250),
        }
    }
}

/// Starts the publisher. The Redis URL is validated here (startup error);
/// connection failures later are retried.
pub fn spawn(
    db: Db,
    redis_url: &str,
    opts: Options,
    shutdown: CancellationToken,
) -> Result<(), redis::RedisError> {
    let client = redis::Client::open(redis_url)?;
    tokio::spawn(async move {
        let mut cursor: i64 = 0;
        let mut conn: Option<redis::aio::ConnectionManager> = None;
        // The first pass runs at once; a full page is followed by the next
        // one without pausing, so a backlog drains at Redis speed.
        let mut pause = Duration::ZERO;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = opts.interval;
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
            match publish_new(&db, c, &opts, &mut cursor).await {
                Ok((0, _)) => {}
                Ok((n, more)) => {
                    tracing::debug!(count = n, cursor, "revocations mirrored to redis");
                    if more {
                        pause = Duration::ZERO;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "mirroring revocations to redis failed; will retry")
                }
            }
        }
    });
    Ok(())
}

/// Publishes one page of rows after `cursor` and advances it past them;
/// returns how many were published and whether more are waiting.
async fn publish_new(
    db: &Db,
    conn: &mut redis::aio::ConnectionManager,
    opts: &Options,
    cursor: &mut i64,
) -> Result<(usize, bool), Box<dyn std::error::Error + Send + Sync>> {
    let now = galion_common::time::now();
    let from = revocations::effective_cursor(db, *cursor).await?;
    let cutoff = revocations::retention_cutoff(now, opts.retention);
    let rows = revocations::rows_after(db, from, cutoff, revocations::PAGE).await?;
    let Some(last) = rows.last().map(|r| r.seq) else {
        *cursor = from;
        return Ok((0, false));
    };
    let more = rows.len() as i64 >= revocations::PAGE;
    // One round trip for the page. If it fails the cursor stays and the
    // whole page is sent again: every command is idempotent.
    let mut pipe = redis::pipe();
    for Row {
        jti, expires_at, ..
    } in &rows
    {
        let exp = expires_at.timestamp();
        let keep_until =
            exp.saturating_add(i64::try_from(opts.retention.as_secs()).unwrap_or(i64::MAX));
        let ttl = keep_until.saturating_sub(now.timestamp()).max(1) as u64;
        let message = serde_json::json!({"jti": jti, "exp": exp}).to_string();
        pipe.set_ex(format!("{}{jti}", opts.key_prefix), exp, ttl)
            .ignore()
            .publish(&opts.channel, message)
            .ignore();
    }
    pipe.query_async::<()>(conn).await?;
    *cursor = last;
    Ok((rows.len(), more))
}
