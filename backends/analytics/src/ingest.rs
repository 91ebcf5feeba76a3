//! `POST /events`: validates a batch (≤ 1000) and stores each event once.
//!
//! Body: `{"events": [...]}` or a bare array of
//! `{id, event_type, user_id, service, timestamp, data}`. Invalid events are
//! reported by index and counted; valid ones are stored with
//! `ON CONFLICT (id) DO NOTHING`, which makes redelivery by the outbox relay
//! harmless. If every event is invalid the answer is 422.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use galion_common::outbox::Event;
use galion_common::{with_tx, ApiError, ApiJson};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::types::Json as SqlJson;

use crate::AppState;

/// Largest `data` object accepted, serialised.
const MAX_DATA_BYTES: usize = 16 * 1024;

#[derive(Deserialize)]
#[serde(untagged)]
pub enum Batch {
    Wrapped { events: Vec<Value> },
    Bare(Vec<Value>),
}

#[derive(Serialize)]
pub struct Rejected {
    index: usize,
    error: String,
}

#[derive(Serialize)]
pub struct IngestResult {
    received: usize,
    stored: u64,
    duplicates: u64,
    rejected: Vec<Rejected>,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

/// Checks one event; returns it normalised (`data: null` becomes `{}`).
pub fn validate(raw: Value, now: DateTime<Utc>) -> Result<Event, String> {
    let mut ev: Event = serde_json::from_value(raw).map_err(|e| e.to_string())?;
    if !valid_name(&ev.event_type) {
        return Err("event_type must be 1-64 chars of a-z 0-9 . _ -".into());
    }
    if !valid_name(&ev.service) {
        return Err("service must be 1-64 chars of a-z 0-9 . _ -".into());
    }
    if ev.timestamp > now + chrono::Duration::minutes(5) {
        return Err("timestamp is in the future".into());
    }
    match &ev.data {
        Value::Null => ev.data = Value::Object(Default::default()),
        Value::Object(_) => {}
        _ => return Err("data must be an object".into()),
    }
    if ev.data.to_string().len() > MAX_DATA_BYTES {
        return Err(format!("data exceeds {MAX_DATA_BYTES} bytes"));
    }
    Ok(ev)
}

pub async fn post_events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(batch): ApiJson<Batch>,
) -> Result<impl IntoResponse, ApiError> {
    crate::caller(&state, &headers, true).await?;
    let raw = match batch {
        Batch::Wrapped { events } | Batch::Bare(events) => events,
    };
    if raw.is_empty() {
        return Err(ApiError::Validation("events must not be empty".into()));
    }
    if raw.len() > state.settings.max_batch {
        state.rejected.inc_by(raw.len() as u64);
        return Err(ApiError::PayloadTooLarge(format!(
            "at most {} events per batch",
            state.settings.max_batch
        )));
    }
    let received = raw.len();
    state.received.inc_by(received as u64);
    let now = galion_common::time::now();
    let mut valid = Vec::with_capacity(received);
    let mut rejected = Vec::new();
    for (index, ev) in raw.into_iter().enumerate() {
        match validate(ev, now) {
            Ok(ev) => valid.push(ev),
            Err(error) => rejected.push(Rejected { index, error }),
        }
    }
    state.rejected.inc_by(rejected.len() as u64);
    if valid.is_empty() {
        let first = rejected
            .first()
            .map(|r| format!("event {}: {}", r.index, r.error))
            .unwrap_or_default();
        return Err(ApiError::Validation(format!(
            "no valid event in the batch ({first})"
        )));
    }
    let mut stored = 0u64;
    let mut tx = state.db.begin().await?;
    for ev in &valid {
        stored += with_tx!(&mut tx, |c| {
            sqlx::query(
            "INSERT INTO events (id, event_type, user_id, service, occurred_at, data, received_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING"
        )
        .bind(ev.id)
        .bind(&ev.event_type)
        .bind(ev.user_id)
        .bind(&ev.service)
        .bind(ev.timestamp)
        .bind(SqlJson(&ev.data))
        .bind(now)
        .execute(c)
        .await.map(|r| r.rows_affected())
        })?;
    }
    tx.commit().await?;
    state.stored.inc_by(stored);
    let duplicates = valid.len() as u64 - stored;
    Ok(Json(IngestResult {
        received,
        stored,
        duplicates,
        rejected,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validation() {
        let now = Utc::now();
        let ok = json!({"id": uuid::Uuid::new_v4(), "event_type": "user.registered", "user_id": null,
                        "service": "auth", "timestamp": now, "data": null});
        assert!(validate(ok.clone(), now).is_ok());
        let mut bad = ok.clone();
        bad["event_type"] = json!("DROP TABLE events;--");
        assert!(validate(bad, now).is_err());
        let mut bad = ok.clone();
        bad["data"] = json!([1]);
        assert!(validate(bad, now).is_err());
        let mut bad = ok;
        bad["id"] = json!("not-a-uuid");
        assert!(validate(bad, now).is_err());
    }
}
