//! Transactional outbox and its relay to galion-analytics.
//!
//! Services call [`enqueue`] inside the transaction that makes the change, so
//! an event exists exactly when the change does. The relay (one background
//! task per service instance) POSTs undelivered rows in batches to
//! `{analytics}/events` with the service token, marks them delivered on
//! success and backs off exponentially while analytics is unavailable.
//! Delivery is at-least-once; analytics deduplicates by event id, so several
//! relays or a crash between POST and mark are harmless. Because state lives
//! in the table, a restarted service resumes where it stopped.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::types::Json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auth::ServiceToken;
use crate::config::RelaySettings;
use crate::db::{Db, Tx};
use crate::metrics::Metrics;
use crate::{with_db, with_tx};

/// The wire shape of an event (`POST /events`, `GET /events`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub id: Uuid,
    pub event_type: String,
    pub user_id: Option<Uuid>,
    pub service: String,
    pub timestamp: DateTime<Utc>,
    #[serde(default)]
    pub data: Value,
}

/// Writes an event into the outbox as part of `tx`.
pub async fn enqueue(
    tx: &mut Tx,
    service: &str,
    event_type: &str,
    user_id: Option<Uuid>,
    data: Value,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    let now = crate::time::now();
    with_tx!(tx, |c| {
        sqlx::query(
        "INSERT INTO outbox (id, event_type, user_id, service, occurred_at, data, created_at, attempts) \
         VALUES ($1, $2, $3, $4, $5, $6, $5, 0)"
    )
    .bind(id)
    .bind(event_type)
    .bind(user_id)
    .bind(service)
    .bind(now)
    .bind(Json(&data))
    .execute(c)
    .await.map(|r| r.rows_affected())
    })?;
    Ok(id)
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: Uuid,
    event_type: String,
    user_id: Option<Uuid>,
    service: String,
    occurred_at: DateTime<Utc>,
    data: Json<Value>,
}

/// Wakes the relay right after a commit instead of waiting for its next poll.
#[derive(Clone, Default)]
pub struct RelayHandle {
    notify: Arc<Notify>,
}

impl RelayHandle {
    pub fn wake(&self) {
        self.notify.notify_one();
    }
}

struct Relay {
    db: Db,
    /// Only this service's rows: auth and users share one outbox table and
    /// each relays its own events.
    service: &'static str,
    http: reqwest::Client,
    url: String,
    token: ServiceToken,
    settings: RelaySettings,
    delivered: prometheus::IntCounter,
    failures: prometheus::IntCounter,
    pending: prometheus::IntGauge,
}

enum Outcome {
    Delivered(usize),
    Failed(String),
}

/// Starts the relay task; it stops when `shutdown` is cancelled.
pub fn spawn_relay(
    db: Db,
    service: &'static str,
    analytics_url: &str,
    token: ServiceToken,
    settings: RelaySettings,
    metrics: &Metrics,
    shutdown: CancellationToken,
) -> Result<(RelayHandle, tokio::task::JoinHandle<()>), prometheus::Error> {
    let relay = Relay {
        db,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new()),
        service,
        url: format!("{}/events", analytics_url.trim_end_matches('/')),
        token,
        settings,
        delivered: metrics.counter(
            "outbox_events_delivered_total",
            "Outbox events delivered to analytics",
        )?,
        failures: metrics.counter(
            "outbox_delivery_failures_total",
            "Failed outbox delivery attempts",
        )?,
        pending: metrics.gauge(
            "outbox_events_pending",
            "Outbox events of this service not yet delivered (alert when it grows)",
        )?,
    };
    let handle = RelayHandle::default();
    let notify = handle.notify.clone();
    let task = tokio::spawn(async move { relay.run(notify, shutdown).await });
    Ok((handle, task))
}

impl Relay {
    async fn run(self, notify: Arc<Notify>, shutdown: CancellationToken) {
        tracing::info!(target_url = %self.url, "outbox relay started");
        let mut backoff = Duration::ZERO;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let outcome = self.deliver_batch().await;
            self.update_pending().await;
            match outcome {
                Outcome::Delivered(n) if n >= self.settings.batch_size as usize => {
                    backoff = Duration::ZERO;
                    continue; // more may be pending
                }
                Outcome::Delivered(_) => {
                    backoff = Duration::ZERO;
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = notify.notified() => {}
                        _ = tokio::time::sleep(self.settings.poll_interval) => {}
                    }
                }
                Outcome::Failed(reason) => {
                    self.failures.inc();
                    backoff = if backoff.is_zero() {
                        Duration::from_millis(250)
                    } else {
                        (backoff * 2).min(self.settings.max_backoff)
                    };
                    // Jitter keeps several instances from retrying in lockstep.
                    let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64 / 4);
                    let wait = backoff + Duration::from_millis(jitter);
                    tracing::warn!(reason = %reason, retry_in_ms = wait.as_millis() as u64, "outbox delivery failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        tracing::info!("outbox relay stopped");
    }

    async fn deliver_batch(&self) -> Outcome {
        let limit = i64::from(self.settings.batch_size);
        let rows = with_db!(&self.db, |p| sqlx::query_as::<_, OutboxRow>(
            "SELECT id, event_type, user_id, service, occurred_at, data FROM outbox \
             WHERE delivered_at IS NULL AND service = $2 ORDER BY created_at, id LIMIT $1"
        )
        .bind(limit)
        .bind(self.service)
        .fetch_all(p)
        .await);
        let rows = match rows {
            Ok(rows) if rows.is_empty() => return Outcome::Delivered(0),
            Ok(rows) => rows,
            Err(e) => return Outcome::Failed(format!("reading outbox: {e}")),
        };
        let events: Vec<Event> = rows
            .into_iter()
            .map(|r| Event {
                id: r.id,
                event_type: r.event_type,
                user_id: r.user_id,
                service: r.service,
                timestamp: r.occurred_at,
                data: r.data.0,
            })
            .collect();
        let resp = self
            .http
            .post(&self.url)
            .bearer_auth(self.token.as_str())
            .json(&serde_json::json!({ "events": events }))
            .send()
            .await;
        match resp {
            Ok(r) if r.status().is_success() => {}
            Ok(r) if r.status() == reqwest::StatusCode::UNPROCESSABLE_ENTITY => {
                // Analytics rejected every event: retrying cannot help, and
                // keeping them would block the queue forever.
                tracing::error!(
                    count = events.len(),
                    "analytics rejected an outbox batch; dropping it"
                );
            }
            Ok(r) => return Outcome::Failed(format!("analytics answered {}", r.status())),
            Err(e) => return Outcome::Failed(format!("cannot reach analytics: {e}")),
        }
        if let Err(e) = self.mark_delivered(&events).await {
            return Outcome::Failed(format!("marking outbox rows delivered: {e}"));
        }
        self.delivered.inc_by(events.len() as u64);
        Outcome::Delivered(events.len())
    }

    async fn update_pending(&self) {
        let count: Result<(i64,), sqlx::Error> = with_db!(&self.db, |p| sqlx::query_as(
            "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL AND service = $1"
        )
        .bind(self.service)
        .fetch_one(p)
        .await);
        if let Ok((n,)) = count {
            self.pending.set(n);
        }
    }

    async fn mark_delivered(&self, events: &[Event]) -> Result<(), sqlx::Error> {
        let now = crate::time::now();
        let mut tx = self.db.begin().await?;
        for ev in events {
            with_tx!(&mut tx, |c| sqlx::query(
                "UPDATE outbox SET delivered_at = $1, attempts = attempts + 1 WHERE id = $2"
            )
            .bind(now)
            .bind(ev.id)
            .execute(c)
            .await
            .map(|r| r.rows_affected()))?;
        }
        tx.commit().await
    }
}

/// Deletes delivered outbox rows older than `keep`; called periodically.
pub async fn prune_delivered(db: &Db, keep: Duration) -> Result<u64, sqlx::Error> {
    let cutoff =
        crate::time::now() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::days(7));
    with_db!(db, |p| sqlx::query(
        "DELETE FROM outbox WHERE delivered_at IS NOT NULL AND delivered_at < $1"
    )
    .bind(cutoff)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
}
