//! `/health` (the process is up), `/health/ready` (the database answers) and
//! `/metrics`, mounted the same way on every service.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::db::Db;
use crate::metrics::{self, Metrics};

#[derive(Clone)]
struct HealthState {
    db: Db,
    metrics: Arc<Metrics>,
}

/// The operational routes, with their own state so any service can merge them.
pub fn routes<S: Clone + Send + Sync + 'static>(db: Db, metrics: Arc<Metrics>) -> Router<S> {
    Router::new()
        .route("/health", get(live))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics_handler))
        .with_state(HealthState { db, metrics })
}

async fn live() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn ready(State(s): State<HealthState>) -> impl IntoResponse {
    match s.db.ping().await {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({"status": "ok", "database": s.db.engine()})),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "database": "unreachable"})),
            )
        }
    }
}

async fn metrics_handler(State(s): State<HealthState>) -> axum::response::Response {
    metrics::handler(State(s.metrics)).await
}
