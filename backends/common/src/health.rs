//! `/health` and `/health/live` (the process is up), `/health/ready` (the
//! database answers) and `/metrics`, mounted the same way on every service.
//!
//! The health routes answer anyone: load balancers, systemd and the
//! gateway's active health checks call them without credentials, and they
//! reveal nothing but up/down.
//!
//! `/metrics` requires `Authorization: Bearer <token>`, the metrics token
//! (`GALION_METRICS_TOKEN`, `GALION_METRICS_TOKEN_FILE` or
//! `metrics_token_file:` in the YAML file) or, when none is configured, the
//! service token. The services listen on loopback and the gateway denies
//! these paths, but a broad proxy route (issue 21: a `strip_prefix` route
//! forwarding every path of galion-auth) once published them; the token
//! keeps route counts, login outcomes and outbox depth private even then.
//! Missing or wrong token: 401 in the usual JSON error shape with
//! `WWW-Authenticate: Bearer`. Prometheus reads the token from a file:
//!
//! ```yaml
//! scrape_configs:
//!   - job_name: galion-backends
//!     authorization:
//!       type: Bearer
//!       credentials_file: /etc/prometheus/galion-metrics-token  # same value as GALION_METRICS_TOKEN_FILE
//!     static_configs:
//!       - targets: ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
//! ```

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::auth::{bearer, ServiceToken};
use crate::config::CommonSettings;
use crate::db::Db;
use crate::error::ApiError;
use crate::metrics::{self, Metrics};

#[derive(Clone)]
struct HealthState {
    db: Db,
    metrics: Arc<Metrics>,
    /// What `/metrics` requires (see the module documentation).
    scrape_token: ServiceToken,
}

/// The operational routes, with their own state so any service can merge them.
pub fn routes<S: Clone + Send + Sync + 'static>(
    db: Db,
    metrics: Arc<Metrics>,
    settings: &CommonSettings,
) -> Router<S> {
    Router::new()
        .route("/health", get(live))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics_handler))
        .with_state(HealthState {
            db,
            metrics,
            scrape_token: settings.metrics_scrape_token(),
        })
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

async fn metrics_handler(State(s): State<HealthState>, headers: HeaderMap) -> Response {
    match bearer(&headers) {
        Some(token) if s.scrape_token.matches(token) => {
            // Asked at scrape time, so the alert sees an outage within one
            // scrape interval (a pool that cannot connect gives up in 2 s).
            let up = tokio::time::timeout(std::time::Duration::from_secs(2), s.db.ping())
                .await
                .is_ok_and(|r| r.is_ok());
            s.metrics.database_up.set(i64::from(up));
            metrics::handler(State(s.metrics)).await
        }
        presented => unauthorized(presented.is_some()),
    }
}

/// The 401 for `/metrics`. RFC 6750 §3.1: a request that carried no token
/// gets a bare challenge, one with a wrong token gets `error="invalid_token"`.
fn unauthorized(token_presented: bool) -> Response {
    let mut resp = ApiError::Unauthorized {
        code: "invalid_token",
        message: "missing or invalid metrics token",
    }
    .into_response();
    let challenge = if token_presented {
        "Bearer realm=\"metrics\", error=\"invalid_token\""
    } else {
        "Bearer realm=\"metrics\""
    };
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    resp
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::db::DbOptions;
    use serde_json::Value;

    /// Serves the health routes alone on a loopback port, with a metrics
    /// token when `metrics_token` is set.
    async fn serve(metrics_token: Option<&str>) -> (String, tokio::task::JoinHandle<()>) {
        let dir = std::env::temp_dir();
        let mut settings = CommonSettings::for_tests("sqlite::memory:", &dir);
        settings.metrics_token = metrics_token.map(|t| ServiceToken::new(t.into()));
        let db = Db::connect("sqlite::memory:", &DbOptions::default())
            .await
            .unwrap();
        let metrics = Metrics::new("test").unwrap();
        metrics
            .counter("test_scraped_total", "A series to find")
            .unwrap();
        let app: Router = routes(db, metrics, &settings);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (url, task)
    }

    async fn scrape(url: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = reqwest::Client::new().get(format!("{url}/metrics"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }

    async fn assert_refused(r: reqwest::Response, challenge: &str) {
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE.as_str()], challenge);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_token");
        assert_eq!(body["error"]["message"], "missing or invalid metrics token");
    }

    #[tokio::test]
    async fn metrics_need_the_service_token_when_no_metrics_token_is_set() {
        let (url, task) = serve(None).await;
        assert_refused(scrape(&url, None).await, "Bearer realm=\"metrics\"").await;
        assert_refused(
            scrape(&url, Some("wrong")).await,
            "Bearer realm=\"metrics\", error=\"invalid_token\"",
        )
        .await;
        let r = scrape(&url, Some("test-service-token")).await;
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().contains("test_scraped_total"));
        // A Basic header carrying the right value is not a bearer token.
        let r = reqwest::Client::new()
            .get(format!("{url}/metrics"))
            .basic_auth("test-service-token", None::<&str>)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        task.abort();
    }

    #[tokio::test]
    async fn a_metrics_token_replaces_the_service_token_and_health_stays_open() {
        let (url, task) = serve(Some("scrape-only")).await;
        assert_eq!(scrape(&url, Some("scrape-only")).await.status(), 200);
        assert_refused(
            scrape(&url, Some("test-service-token")).await,
            "Bearer realm=\"metrics\", error=\"invalid_token\"",
        )
        .await;
        for path in ["/health", "/health/live", "/health/ready"] {
            let r = reqwest::get(format!("{url}{path}")).await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
        }
        task.abort();
    }
}
