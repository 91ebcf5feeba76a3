//! `GET /events` (filters, pagination) and `GET /stats` (counts by type per
//! hour or day). Admin only.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use galion_common::db::Db;
use galion_common::outbox::Event;
use galion_common::time::parse_instant;
use galion_common::{with_db, ApiError, ApiQuery};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::types::Json as SqlJson;
use uuid::Uuid;

use crate::AppState;

#[derive(Deserialize)]
pub struct EventsQuery {
    #[serde(rename = "type")]
    event_type: Option<String>,
    user_id: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct EventRow {
    id: Uuid,
    event_type: String,
    user_id: Option<Uuid>,
    service: String,
    occurred_at: DateTime<Utc>,
    data: SqlJson<Value>,
}

#[derive(Serialize)]
pub struct EventPage {
    events: Vec<Event>,
    limit: i64,
    offset: i64,
    next_offset: Option<i64>,
}

fn instant(raw: Option<&str>, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    raw.map(|r| {
        parse_instant(r)
            .ok_or_else(|| ApiError::BadRequest(format!("{name} must be unix seconds or RFC 3339")))
    })
    .transpose()
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    crate::callers::admin(&state, &headers).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let offset = q.offset.unwrap_or(0).max(0);
    let user_id = match q.user_id.as_deref() {
        Some(raw) => Some(
            Uuid::parse_str(raw)
                .map_err(|_| ApiError::BadRequest("user_id must be a UUID".into()))?,
        ),
        None => None,
    };
    let from = instant(q.from.as_deref(), "from")?;
    let to = instant(q.to.as_deref(), "to")?;
    // Fetch one extra row to know whether another page exists.
    let rows = with_db!(&state.db, |p| sqlx::query_as::<_, EventRow>(
        "SELECT id, event_type, user_id, service, occurred_at, data FROM events \
         WHERE ($1 IS NULL OR event_type = $1) AND ($2 IS NULL OR user_id = $2) \
           AND ($3 IS NULL OR occurred_at >= $3) AND ($4 IS NULL OR occurred_at < $4) \
         ORDER BY occurred_at DESC, id DESC LIMIT $5 OFFSET $6"
    )
    .bind(q.event_type.as_deref())
    .bind(user_id)
    .bind(from)
    .bind(to)
    .bind(limit + 1)
    .bind(offset)
    .fetch_all(p)
    .await)?;
    let more = rows.len() as i64 > limit;
    let events = rows
        .into_iter()
        .take(limit as usize)
        .map(|r| Event {
            id: r.id,
            event_type: r.event_type,
            user_id: r.user_id,
            service: r.service,
            timestamp: r.occurred_at,
            data: r.data.0,
        })
        .collect();
    Ok(Json(EventPage {
        events,
        limit,
        offset,
        next_offset: more.then_some(offset + limit),
    }))
}

#[derive(Deserialize)]
pub struct StatsQuery {
    bucket: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

#[derive(Serialize, sqlx::FromRow)]
pub struct StatRow {
    bucket_start: String,
    event_type: String,
    count: i64,
}

#[derive(Serialize)]
pub struct Stats {
    bucket: &'static str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    series: Vec<StatRow>,
}

/// The engine-specific bucketing expression (RFC 3339 text in both).
fn bucket_sql(db: &Db, hourly: bool) -> &'static str {
    match (db.is_postgres(), hourly) {
        (true, true) => "to_char(date_trunc('hour', occurred_at AT TIME ZONE 'UTC'), 'YYYY-MM-DD\"T\"HH24:00:00\"Z\"')",
        (true, false) => "to_char(date_trunc('day', occurred_at AT TIME ZONE 'UTC'), 'YYYY-MM-DD\"T\"00:00:00\"Z\"')",
        (false, true) => "strftime('%Y-%m-%dT%H:00:00Z', occurred_at)",
        (false, false) => "strftime('%Y-%m-%dT00:00:00Z', occurred_at)",
    }
}

pub async fn stats(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<StatsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    crate::callers::admin(&state, &headers).await?;
    let (hourly, name) = match q.bucket.as_deref().unwrap_or("hour") {
        "hour" => (true, "hour"),
        "day" => (false, "day"),
        _ => return Err(ApiError::BadRequest("bucket must be hour or day".into())),
    };
    let now = galion_common::time::now();
    let to = instant(q.to.as_deref(), "to")?.unwrap_or(now + chrono::Duration::seconds(1));
    let default_span = if hourly {
        chrono::Duration::hours(48)
    } else {
        chrono::Duration::days(30)
    };
    let from = instant(q.from.as_deref(), "from")?.unwrap_or(to - default_span);
    if from >= to {
        return Err(ApiError::BadRequest("from must be before to".into()));
    }
    let sql = format!(
        "SELECT {b} AS bucket_start, event_type, COUNT(*) AS count FROM events \
         WHERE occurred_at >= $1 AND occurred_at < $2 AND ($3 IS NULL OR event_type = $3) \
         GROUP BY 1, 2 ORDER BY 1, 2",
        b = bucket_sql(&state.db, hourly)
    );
    let series = with_db!(&state.db, |p| sqlx::query_as::<_, StatRow>(&sql)
        .bind(from)
        .bind(to)
        .bind(q.event_type.as_deref())
        .fetch_all(p)
        .await)?;
    Ok(Json(Stats {
        bucket: name,
        from,
        to,
        series,
    }))
}
