//! galion-analytics: stores events (`POST /events`, idempotent by id) and
//! answers admin queries (`GET /events`, `GET /stats`).
//!
//! Writers are the services (the outbox relays of auth and users, with the
//! service token), signed-in users (their JWT, verified here against auth's
//! JWKS) and holders of an ingestion API key (`X-API-Key`). Only the
//! services are trusted with what an event says about itself; the events of
//! users and API keys are stamped with who sent them ([`ingest`]). Readers
//! need an admin JWT. See [`callers`].

pub mod callers;
pub mod ingest;
pub mod query;
pub mod settings;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use galion_common::db::{Db, DbError};
use galion_common::jwt::JwtVerifier;
use galion_common::metrics::Metrics;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use settings::AnalyticsSettings;

pub struct AppState {
    pub db: Db,
    pub settings: AnalyticsSettings,
    pub verifier: JwtVerifier,
    pub metrics: Arc<Metrics>,
    pub received: prometheus::IntCounter,
    pub stored: prometheus::IntCounter,
    pub rejected: prometheus::IntCounter,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub fn app(state: Arc<AppState>) -> Router {
    let metrics = state.metrics.clone();
    let max_body = state.settings.max_body_bytes;
    let api = Router::new()
        .route("/events", get(query::list).post(ingest::post_events))
        .route("/stats", get(query::stats))
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .with_state(state.clone());
    let router = api.merge(galion_common::health::routes(
        state.db.clone(),
        metrics.clone(),
        &state.settings.common,
    ));
    galion_common::server::finish(router, metrics)
}

pub async fn build(
    settings: AnalyticsSettings,
    shutdown: &CancellationToken,
) -> Result<Arc<AppState>, StartupError> {
    let db = Db::connect(&settings.common.database_url, &settings.common.db).await?;
    let metrics = Metrics::new("analytics")?;
    let received = metrics.counter(
        "analytics_events_received_total",
        "Events received in POST /events",
    )?;
    let stored = metrics.counter(
        "analytics_events_stored_total",
        "Events stored (first delivery of an id)",
    )?;
    let rejected = metrics.counter(
        "analytics_events_rejected_total",
        "Events rejected by validation",
    )?;
    let mut verifier = JwtVerifier::remote(
        &settings.common.jwt,
        &settings.common.auth_url,
        Duration::from_secs(10),
    );
    // A logged-out user's token must not keep writing (or, for an admin,
    // reading) until it expires: revocations are polled from galion-auth
    // like the gateway does, and kept until exp + leeway.
    verifier.watch_revocations(
        &settings.common.auth_url,
        settings.common.service_token.clone(),
        Duration::from_millis(500),
        shutdown.clone(),
    );
    tracing::info!(database = db.engine(), "galion-analytics ready");
    Ok(Arc::new(AppState {
        db,
        settings,
        verifier,
        metrics,
        received,
        stored,
        rejected,
    }))
}

pub async fn run(
    settings: AnalyticsSettings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartupError> {
    let state = build(settings, &shutdown).await?;
    tracing::info!(addr = %listener.local_addr()?, "galion-analytics listening");
    galion_common::server::serve(listener, app(state.clone()), shutdown).await?;
    state.db.close().await;
    Ok(())
}
