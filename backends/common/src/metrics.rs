//! Prometheus metrics: a registry per service (not the process-global one,
//! so tests can run several services in one process), HTTP request metrics
//! labelled by matched route, and the `/metrics` handler.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

/// HTTP metrics plus the registry services add their own metrics to.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    /// 1 when the database answered at the last scrape (set by `/metrics`).
    pub database_up: prometheus::IntGauge,
}

impl Metrics {
    /// Creates the registry with `http_requests_total{route,method,code}`,
    /// `http_request_duration_seconds{route}`, `galion_build_info` and the
    /// `process_*` families; every series carries a constant `service` label.
    pub fn new(service: &str) -> Result<Arc<Metrics>, prometheus::Error> {
        let mut labels = std::collections::HashMap::new();
        labels.insert("service".to_string(), service.to_string());
        let registry = Registry::new_custom(None, Some(labels))?;
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route, method and status code",
            ),
            &["route", "method", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency by route",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["route"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        let build_info = prometheus::IntGaugeVec::new(
            Opts::new(
                "galion_build_info",
                "Always 1; the labels name the running build.",
            ),
            &["version", "commit"],
        )?;
        registry.register(Box::new(build_info.clone()))?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("GALION_COMMIT")])
            .set(1);
        // process_cpu_seconds_total, process_resident_memory_bytes,
        // process_open_fds, process_start_time_seconds, ... Several services in
        // one test process each report that process: harmless.
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let database_up = prometheus::IntGauge::new(
            "galion_database_up",
            "1 when the service's database (SQLite or PostgreSQL) answered at the last scrape",
        )?;
        registry.register(Box::new(database_up.clone()))?;
        Ok(Arc::new(Metrics {
            registry,
            requests,
            duration,
            database_up,
        }))
    }

    /// Registers a counter vector on this registry.
    pub fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, prometheus::Error> {
        let c = IntCounterVec::new(Opts::new(name, help), labels)?;
        self.registry.register(Box::new(c.clone()))?;
        Ok(c)
    }

    /// Registers a plain counter on this registry.
    pub fn counter(
        &self,
        name: &str,
        help: &str,
    ) -> Result<prometheus::IntCounter, prometheus::Error> {
        let c = prometheus::IntCounter::new(name, help)?;
        self.registry.register(Box::new(c.clone()))?;
        Ok(c)
    }

    /// Registers a gauge on this registry.
    pub fn gauge(&self, name: &str, help: &str) -> Result<prometheus::IntGauge, prometheus::Error> {
        let g = prometheus::IntGauge::new(name, help)?;
        self.registry.register(Box::new(g.clone()))?;
        Ok(g)
    }

    fn render(&self) -> Result<String, String> {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .map_err(|e| e.to_string())?;
        String::from_utf8(buf).map_err(|e| e.to_string())
    }
}

/// Middleware recording every request. Routes are labelled by their
/// pattern (`/users/{id}`), never the raw path, to keep cardinality bounded.
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    metrics
        .duration
        .with_label_values(&[route.as_str()])
        .observe(start.elapsed().as_secs_f64());
    metrics
        .requests
        .with_label_values(&[route.as_str(), method.as_str(), resp.status().as_str()])
        .inc();
    resp
}

/// `GET /metrics` in the Prometheus text format.
pub async fn handler(State(metrics): State<Arc<Metrics>>) -> Response {
    match metrics.render() {
        Ok(body) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
