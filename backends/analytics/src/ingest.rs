//! `POST /events`: validates a batch (≤ 1000) and stores each event once.
//!
//! Body: `{"events": [...]}` or a bare array of
//! `{id, event_type, user_id, service, timestamp, data}`. Invalid events are
//! reported by index and counted (`analytics_events_rejected_total`); valid
//! ones are stored with `ON CONFLICT (id) DO NOTHING`, which makes
//! redelivery by the outbox relay harmless. If every event is invalid the
//! answer is 422.
//!
//! What an event may say about itself depends on its writer
//! ([`Writer`]), because identity travels to analytics but authority does
//! not:
//!
//! * **The services** (service token: the outbox relays) write on behalf of
//!   users, so every field is theirs to set, as sent: any `user_id`,
//!   `service`, `event_type` and a past `timestamp` (a relay delivers late
//!   after an outage), not more than 5 minutes ahead.
//! * **Users** (JWT) and **API keys** have their events *stamped*:
//!   - `user_id` is the token's `sub` for a user and null for a key. The
//!     field may be omitted or null, or equal that value; any other value
//!     rejects the event (no silent rewrite: a client sending someone
//!     else's id has a bug or an intent worth surfacing).
//!   - `service` is `client` for users and the key's name for a key, under
//!     the same rule: omitted, or equal, or the event is rejected.
//!   - `timestamp` is kept when within the 5 minutes before arrival; an
//!     absent one, or one outside that window (backdated into past
//!     statistics, or ahead of arrival), becomes the arrival time. Clocks of
//!     clients are not trusted further than that, and refusing would lose
//!     the events of every device with a wrong clock.
//!   - `event_type`s in the services' namespace (`user.`: `user.registered`,
//!     `user.deleted`, …) are rejected: only the services report on
//!     accounts.
//!   - The stored `id` is derived from the writer and the sent id (a UUIDv8
//!     from SHA-256 of both, [`derived_id`]): the same writer sending the
//!     same id again stores once, but nobody can store an event under an id
//!     another writer will use. Without this a user who saw an outbox event's
//!     id could post it first and make the relay's delivery a "duplicate".
//!     The services' ids (UUIDv7 from the outbox) can never be derived ids,
//!     whose version is 8.

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
use sha2::{Digest, Sha256};
use sqlx::types::Json as SqlJson;
use uuid::Uuid;

pub use crate::callers::Writer;
use crate::AppState;

/// Largest `data` object accepted, serialised.
const MAX_DATA_BYTES: usize = 16 * 1024;

/// How far a timestamp may be ahead of arrival (services) or behind it
/// (users and API keys, whose clocks are not otherwise trusted).
const CLOCK_WINDOW: chrono::Duration = chrono::Duration::minutes(5);

/// The `service` stamped on users' events.
pub const CLIENT_SERVICE: &str = "client";

/// `service` values that belong to the services and to users: no API key
/// may be named after them (see `settings::ingestion_keys`).
pub const RESERVED_SERVICES: &[&str] = &["auth", "users", "analytics", CLIENT_SERVICE];

/// Event types only the services write (their outbox events about accounts).
const RESERVED_TYPE_PREFIXES: &[&str] = &["user."];

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

/// An event as sent: the fields a stamped writer may leave to analytics are
/// optional here, and required again for the services.
#[derive(Deserialize)]
struct Incoming {
    id: Uuid,
    event_type: String,
    #[serde(default)]
    user_id: Option<Uuid>,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    timestamp: Option<DateTime<Utc>>,
    #[serde(default)]
    data: Value,
}

pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

/// The id stored for an event that `writer` (not a service) sent as `sent`.
/// Distinct writers get unrelated ids for the same `sent` (SHA-256 with the
/// writer's identity), so none can occupy another's; the version nibble 8
/// keeps them apart from the outbox's v7 ids even without the hash.
pub fn derived_id(writer: &Writer, sent: Uuid) -> Uuid {
    let mut h = Sha256::new();
    h.update(b"galion-analytics event id v1\0");
    match writer {
        // The services' ids are the outbox's own, stored as sent.
        Writer::Service => return sent,
        Writer::User(id) => {
            h.update(b"user\0");
            h.update(id.as_bytes());
        }
        Writer::ApiKey(name) => {
            h.update(b"api-key\0");
            h.update(name.as_bytes());
            h.update(b"\0");
        }
    }
    h.update(sent.as_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::new_v8(bytes)
}

/// Checks one event from `writer` and returns what is stored: normalised
/// (`data: null` becomes `{}`) and, unless a service sent it, stamped with
/// its writer (module docs).
pub fn validate(raw: Value, writer: &Writer, now: DateTime<Utc>) -> Result<Event, String> {
    let ev: Incoming = serde_json::from_value(raw).map_err(|e| e.to_string())?;
    if !valid_name(&ev.event_type) {
        return Err("event_type must be 1-64 chars of a-z 0-9 . _ -".into());
    }
    let data = match ev.data {
        Value::Null => Value::Object(Default::default()),
        d @ Value::Object(_) => d,
        _ => return Err("data must be an object".into()),
    };
    if data.to_string().len() > MAX_DATA_BYTES {
        return Err(format!("data exceeds {MAX_DATA_BYTES} bytes"));
    }
    let (user_id, service) = match writer {
        Writer::Service => {
            let service = ev.service.ok_or("missing field `service`")?;
            if !valid_name(&service) {
                return Err("service must be 1-64 chars of a-z 0-9 . _ -".into());
            }
            let timestamp = ev.timestamp.ok_or("missing field `timestamp`")?;
            if timestamp > now + CLOCK_WINDOW {
                return Err("timestamp is in the future".into());
            }
            return Ok(Event {
                id: ev.id,
                event_type: ev.event_type,
                user_id: ev.user_id,
                service,
                timestamp,
                data,
            });
        }
        Writer::User(id) => (Some(*id), CLIENT_SERVICE),
        Writer::ApiKey(name) => (None, name.as_str()),
    };
    if RESERVED_TYPE_PREFIXES
        .iter()
        .any(|p| ev.event_type.starts_with(p))
    {
        return Err(format!(
            "event_type {}* is reserved for the Galion services",
            RESERVED_TYPE_PREFIXES.join("*, ")
        ));
    }
    if ev.user_id.is_some() && ev.user_id != user_id {
        return Err(match user_id {
            Some(_) => "user_id must be omitted or your own (it is taken from your token)",
            None => "user_id must be omitted (an API key writes for no user)",
        }
        .into());
    }
    if ev.service.as_deref().is_some_and(|s| s != service) {
        return Err(format!(
            "service must be omitted or {service:?} (it is taken from your credentials)"
        ));
    }
    let timestamp = ev
        .timestamp
        .filter(|t| *t <= now && *t >= now - CLOCK_WINDOW)
        .unwrap_or(now);
    Ok(Event {
        id: derived_id(writer, ev.id),
        event_type: ev.event_type,
        user_id,
        service: service.to_string(),
        timestamp,
        data,
    })
}

pub async fn post_events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(batch): ApiJson<Batch>,
) -> Result<impl IntoResponse, ApiError> {
    let writer = crate::callers::writer(&state, &headers).await?;
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
        match validate(ev, &writer, now) {
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
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        "2026-12-05T12:00:00Z".parse().unwrap()
    }

    fn user() -> Uuid {
        Uuid::parse_str("0192f0a0-0000-7000-8000-000000000001").unwrap()
    }

    /// A client event with only what a client must send.
    fn minimal(event_type: &str) -> Value {
        json!({"id": Uuid::new_v4(), "event_type": event_type})
    }

    #[test]
    fn validation() {
        let now = now();
        let svc = &Writer::Service;
        let ok = json!({"id": uuid::Uuid::new_v4(), "event_type": "user.registered", "user_id": null,
                        "service": "auth", "timestamp": now, "data": null});
        assert!(validate(ok.clone(), svc, now).is_ok());
        let mut bad = ok.clone();
        bad["event_type"] = json!("DROP TABLE events;--");
        assert!(validate(bad, svc, now).is_err());
        let mut bad = ok.clone();
        bad["data"] = json!([1]);
        assert!(validate(bad, svc, now).is_err());
        let mut bad = ok.clone();
        bad["id"] = json!("not-a-uuid");
        assert!(validate(bad, svc, now).is_err());
        // The services must say who they write as, and when.
        for field in ["service", "timestamp"] {
            let mut bad = ok.clone();
            bad.as_object_mut().unwrap().remove(field);
            let e = validate(bad, svc, now).unwrap_err();
            assert!(e.contains(field), "{e}");
        }
    }

    #[test]
    fn services_are_trusted_with_every_field() {
        let now = now();
        let someone = Uuid::new_v4();
        let id = Uuid::now_v7();
        let sent = json!({"id": id, "event_type": "user.deleted", "user_id": someone,
                          "service": "users", "timestamp": "2020-01-01T00:00:00Z", "data": {"a": 1}});
        let ev = validate(sent, &Writer::Service, now).unwrap();
        assert_eq!(
            ev,
            Event {
                id,
                event_type: "user.deleted".into(),
                user_id: Some(someone),
                service: "users".into(),
                timestamp: "2020-01-01T00:00:00Z".parse().unwrap(),
                data: json!({"a": 1}),
            }
        );
        let ahead = json!({"id": id, "event_type": "x", "service": "users",
                           "timestamp": now + chrono::Duration::minutes(6)});
        assert!(validate(ahead, &Writer::Service, now).is_err());
    }

    #[test]
    fn users_events_are_stamped_with_the_user() {
        let now = now();
        let w = Writer::User(user());
        let sent_id = Uuid::new_v4();
        let ev = validate(
            json!({"id": sent_id, "event_type": "page.view", "data": {"path": "/"}}),
            &w,
            now,
        )
        .unwrap();
        assert_eq!(ev.user_id, Some(user()));
        assert_eq!(ev.service, CLIENT_SERVICE);
        assert_eq!(ev.timestamp, now, "no timestamp: arrival time");
        assert_eq!(ev.id, derived_id(&w, sent_id));
        assert_eq!(ev.data, json!({"path": "/"}));
        // Sending what would be stamped anyway is fine.
        let same = json!({"id": sent_id, "event_type": "page.view", "user_id": user(),
                          "service": "client", "timestamp": now});
        assert_eq!(validate(same, &w, now).unwrap().id, ev.id);
        let null = json!({"id": sent_id, "event_type": "page.view", "user_id": null});
        assert_eq!(validate(null, &w, now).unwrap().user_id, Some(user()));
    }

    #[test]
    fn users_cannot_write_as_someone_else() {
        let now = now();
        let w = Writer::User(user());
        let mut other = minimal("page.view");
        other["user_id"] = json!(Uuid::new_v4());
        let e = validate(other, &w, now).unwrap_err();
        assert!(e.contains("user_id"), "{e}");
        for service in ["auth", "users", "analytics", "web"] {
            let mut as_service = minimal("page.view");
            as_service["service"] = json!(service);
            let e = validate(as_service, &w, now).unwrap_err();
            assert!(e.contains("service"), "{e}");
        }
        for reserved in [
            "user.registered",
            "user.logged_in",
            "user.logged_out",
            "user.login_failed",
            "user.updated",
            "user.deleted",
            "user.anything",
        ] {
            let e = validate(minimal(reserved), &w, now).unwrap_err();
            assert!(e.contains("reserved"), "{reserved}: {e}");
        }
        // Only the prefix is reserved, not every type containing "user".
        assert!(validate(minimal("users.page"), &w, now).is_ok());
        assert!(validate(minimal("page.user.click"), &w, now).is_ok());
    }

    #[test]
    fn client_timestamps_are_kept_only_near_arrival() {
        let now = now();
        let w = Writer::User(user());
        let at = |ts: DateTime<Utc>| {
            let mut ev = minimal("page.view");
            ev["timestamp"] = json!(ts);
            validate(ev, &w, now).unwrap().timestamp
        };
        let min = |n: i64| chrono::Duration::minutes(n);
        let sec = chrono::Duration::seconds(1);
        assert_eq!(at(now - min(4)), now - min(4));
        assert_eq!(at(now - min(5)), now - min(5));
        assert_eq!(at(now), now);
        // Backdated into past statistics, or ahead of arrival: arrival time.
        assert_eq!(at(now - min(5) - sec), now);
        assert_eq!(at("2020-01-01T00:00:00Z".parse().unwrap()), now);
        assert_eq!(at(now + sec), now);
        assert_eq!(at(now + min(60 * 24)), now);
    }

    #[test]
    fn api_keys_write_as_their_name_for_no_user() {
        let now = now();
        let w = Writer::ApiKey("dev-ingest".into());
        let ev = validate(minimal("page.view"), &w, now).unwrap();
        assert_eq!(
            (ev.user_id, ev.service.as_str(), ev.timestamp),
            (None, "dev-ingest", now)
        );
        let mut named = minimal("page.view");
        named["service"] = json!("dev-ingest");
        assert!(validate(named, &w, now).is_ok());
        let mut other = minimal("page.view");
        other["service"] = json!("auth");
        assert!(validate(other, &w, now).is_err());
        let mut for_user = minimal("page.view");
        for_user["user_id"] = json!(user());
        let e = validate(for_user, &w, now).unwrap_err();
        assert!(e.contains("user_id"), "{e}");
        assert!(validate(minimal("user.deleted"), &w, now).is_err());
    }

    #[test]
    fn derived_ids_are_per_writer_and_stable() {
        let sent = Uuid::now_v7();
        let alice = Writer::User(user());
        let bob = Writer::User(Uuid::new_v4());
        let key = Writer::ApiKey("dev-ingest".into());
        assert_eq!(derived_id(&Writer::Service, sent), sent);
        assert_eq!(derived_id(&alice, sent), derived_id(&alice, sent));
        let ids = [
            sent,
            derived_id(&alice, sent),
            derived_id(&bob, sent),
            derived_id(&key, sent),
            derived_id(&Writer::ApiKey("dev-ingest2".into()), sent),
        ];
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // Never an outbox (v7) id, whatever was sent.
        assert!(ids[1..].iter().all(|id| id.get_version_num() == 8));
    }
}
