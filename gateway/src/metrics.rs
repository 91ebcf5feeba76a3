//! Prometheus metrics with the names of the spec.
//!
//! Families are registered once per process. The snapshot builder resolves the
//! label sets it can know in advance (per route, per pool, per server) into plain
//! handles, so the request path increments atomics instead of hashing labels.

use std::sync::{Arc, OnceLock};

use http::Method;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_healthy: IntGaugeVec,
    pub upstream_retries: IntCounterVec,
    pub config_reloads: IntCounterVec,
    /// ACME orders by result (issued, failed).
    pub acme_orders: IntCounterVec,
    pub config_last_success: Gauge,
    pub config_generation: IntGauge,
    pub open_connections: IntGaugeVec,
    pub auth_rejected: IntCounterVec,
    pub tls_cert_expiry: prometheus::GaugeVec,
    pub tls_certificate_expiry: prometheus::GaugeVec,
    pub rate_limited: IntCounterVec,
    pub bans_active: IntGauge,
    pub bans_total: IntCounterVec,
    pub redis_up: IntGauge,
    pub store_fallback: IntCounterVec,
    pub cache_lookups: IntCounterVec,
    pub cache_size: IntGauge,
    pub request_bytes: IntCounterVec,
    pub response_bytes: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub access_log_dropped: IntCounter,
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("gauge {name}: {e}"));
    r.register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    g
}

/// Registers a collector made by `made` and returns it; both steps fail only
/// on a programming error (a bad name, a duplicate).
fn registered<C: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    name: &str,
    made: Result<C, prometheus::Error>,
) -> C {
    let c = made.unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    // Registration only fails on a duplicate name, which is a programming error.
    r.register(Box::new(v.clone()))
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    v
}

impl Metrics {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = counter_vec(
            &registry,
            "gateway_requests_total",
            "Requests answered, by host, route, method and status code.",
            &["host", "route", "method", "code"],
        );
        let duration = registered(
            &registry,
            "gateway_request_duration_seconds",
            HistogramVec::new(
                HistogramOpts::new(
                    "gateway_request_duration_seconds",
                    "Time from request start to the end of the response.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ]),
                &["host", "route"],
            ),
        );
        let upstream_requests = counter_vec(
            &registry,
            "gateway_upstream_requests_total",
            "Attempts to upstream servers by outcome (ok, connect_error, timeout, error).",
            &["upstream", "outcome"],
        );
        let upstream_healthy = registered(
            &registry,
            "gateway_upstream_healthy",
            IntGaugeVec::new(
                Opts::new(
                    "gateway_upstream_healthy",
                    "1 when the server passes its health checks and is not ejected.",
                ),
                &["upstream", "server"],
            ),
        );
        let upstream_retries = counter_vec(
            &registry,
            "gateway_upstream_retries_total",
            "Requests retried on another attempt.",
            &["upstream"],
        );
        let config_reloads = counter_vec(
            &registry,
            "gateway_config_reloads_total",
            "Configuration reloads by result (success, error).",
            &["result"],
        );
        let acme_orders = counter_vec(
            &registry,
            "gateway_acme_orders_total",
            "Certificate orders to the ACME CA by result (issued, failed).",
            &["result"],
        );
        let config_last_success = registered(
            &registry,
            "gateway_config_last_reload_success_timestamp_seconds",
            Gauge::new(
                "gateway_config_last_reload_success_timestamp_seconds",
                "Unix time of the last configuration successfully applied.",
            ),
        );
        let config_generation = gauge(
            &registry,
            "gateway_config_generation",
            "Generation of the configuration serving (1 at start, +1 per applied reload).",
        );
        let open_connections = registered(
            &registry,
            "gateway_open_connections",
            IntGaugeVec::new(
                Opts::new(
                    "gateway_open_connections",
                    "Client connections currently open, by proxy listener (http, https).",
                ),
                &["listener"],
            ),
        );
        let auth_rejected = counter_vec(
            &registry,
            "gateway_auth_rejected_total",
            "Requests refused by access control, by reason.",
            &["reason"],
        );
        let tls_cert_expiry = registered(
            &registry,
            "gateway_tls_cert_expiry_timestamp_seconds",
            prometheus::GaugeVec::new(
                Opts::new(
                    "gateway_tls_cert_expiry_timestamp_seconds",
                    "Unix time at which the certificate serving a host expires.",
                ),
                &["host"],
            ),
        );
        let tls_certificate_expiry = registered(
            &registry,
            "gateway_tls_certificate_expiry_timestamp_seconds",
            prometheus::GaugeVec::new(
            Opts::new(
                "gateway_tls_certificate_expiry_timestamp_seconds",
                "Unix time at which the certificate serving a host expires (same value as gateway_tls_cert_expiry_timestamp_seconds).",
            ),
            &["host"],
        ),
        );
        let rate_limited = counter_vec(
            &registry,
            "gateway_rate_limited_total",
            "Requests refused with 429 by a rate limit, by route.",
            &["route"],
        );
        let bans_active = gauge(
            &registry,
            "gateway_bans_active",
            "IPs and networks currently banned.",
        );
        let bans_total = counter_vec(
            &registry,
            "gateway_bans_total",
            "Bans issued, by jail (`manual` for the admin API).",
            &["jail"],
        );
        let redis_up = gauge(
            &registry,
            "gateway_redis_up",
            "1 while the cluster store (Redis) answers; 0 while the gateway runs on local state.",
        );
        let store_fallback = counter_vec(
            &registry,
            "gateway_store_fallback_total",
            "Decisions taken locally because Redis was unreachable, by component.",
            &["component"],
        );
        let cache_lookups = counter_vec(
            &registry,
            "gateway_cache_lookups_total",
            "Requests on cached routes by route and cache status (HIT, MISS, STALE, EXPIRED, BYPASS).",
            &["route", "status"],
        );
        let cache_size = gauge(
            &registry,
            "gateway_cache_size_bytes",
            "Bytes held by the response cache (bodies and headers).",
        );
        let request_bytes = counter_vec(
            &registry,
            "gateway_request_bytes_total",
            "Request body bytes received from clients, by host.",
            &["host"],
        );
        let response_bytes = counter_vec(
            &registry,
            "gateway_response_bytes_total",
            "Response body bytes sent to clients, by host.",
            &["host"],
        );
        let upstream_duration = registered(
            &registry,
            "gateway_upstream_response_duration_seconds",
            HistogramVec::new(
                HistogramOpts::new(
                    "gateway_upstream_response_duration_seconds",
                    "Time from picking an upstream server to its response head, by upstream pool.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ]),
                &["upstream"],
            ),
        );
        let access_log_dropped = registered(
            &registry,
            "gateway_access_log_dropped_total",
            IntCounter::new(
                "gateway_access_log_dropped_total",
                "Access log lines dropped because the writer fell behind (the queue was full).",
            ),
        );
        let build_info = registered(
            &registry,
            "gateway_build_info",
            IntGaugeVec::new(
                Opts::new(
                    "gateway_build_info",
                    "Always 1; the labels name the running build.",
                ),
                &["version", "commit"],
            ),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("GALION_COMMIT")])
            .set(1);
        // process_cpu_seconds_total, process_resident_memory_bytes,
        // process_open_fds, process_max_fds, process_start_time_seconds, ...
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .unwrap_or_else(|e| panic!("register process collector: {e}"));
        store_fallback.with_label_values(&["rate_limit"]);
        store_fallback.with_label_values(&["bans"]);
        // Make the reload series visible from the start.
        config_reloads.with_label_values(&["success"]);
        config_reloads.with_label_values(&["error"]);
        acme_orders.with_label_values(&["issued"]);
        acme_orders.with_label_values(&["failed"]);
        Metrics {
            registry,
            requests,
            duration,
            upstream_requests,
            upstream_healthy,
            upstream_retries,
            config_reloads,
            acme_orders,
            config_last_success,
            config_generation,
            open_connections,
            auth_rejected,
            tls_cert_expiry,
            tls_certificate_expiry,
            rate_limited,
            bans_active,
            bans_total,
            redis_up,
            store_fallback,
            cache_lookups,
            cache_size,
            request_bytes,
            response_bytes,
            upstream_duration,
            access_log_dropped,
        }
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> Vec<u8> {
        self.cache_size.set(crate::cache::size_bytes() as i64);
        // The writer counts what it dropped; the counter catches up here.
        let dropped = crate::log_writer::dropped_lines();
        let seen = self.access_log_dropped.get();
        if dropped > seen {
            self.access_log_dropped.inc_by(dropped - seen);
        }
        let mut buf = Vec::with_capacity(16 * 1024);
        let enc = TextEncoder::new();
        if let Err(e) = enc.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        buf
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Arc<Metrics> {
    static M: OnceLock<Arc<Metrics>> = OnceLock::new();
    M.get_or_init(|| Arc::new(Metrics::new()))
}

/// Methods with their own label; everything else is counted as `OTHER` so a client
/// cannot grow the label set.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER",
];
/// Status codes with a pre-resolved counter; rarer codes fall back to a label lookup.
const CODES: [u16; 20] = [
    200, 201, 204, 206, 301, 302, 304, 308, 400, 401, 403, 404, 405, 408, 413, 429, 500, 502, 503,
    504,
];

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

/// Per-route handles, built once per snapshot.
pub struct RouteMetrics {
    host: Arc<str>,
    route: Arc<str>,
    duration: Histogram,
    request_bytes: IntCounter,
    response_bytes: IntCounter,
    // Lazily filled: most (method, code) pairs never occur on a given route.
    requests: Box<[OnceLock<IntCounter>]>,
}

impl RouteMetrics {
    pub fn new(host: &str, route: &str) -> Self {
        let m = metrics();
        RouteMetrics {
            host: host.into(),
            route: route.into(),
            duration: m.duration.with_label_values(&[host, route]),
            request_bytes: m.request_bytes.with_label_values(&[host]),
            response_bytes: m.response_bytes.with_label_values(&[host]),
            requests: (0..METHODS.len() * CODES.len())
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    /// Body bytes in and out of one request.
    pub fn record_bytes(&self, received: u64, sent: u64) {
        if received > 0 {
            self.request_bytes.inc_by(received);
        }
        if sent > 0 {
            self.response_bytes.inc_by(sent);
        }
    }

    pub fn record(&self, method: &Method, code: u16, seconds: f64) {
        self.duration.observe(seconds);
        let mi = method_index(method);
        match CODES.iter().position(|c| *c == code) {
            Some(ci) => self.requests[mi * CODES.len() + ci]
                .get_or_init(|| {
                    metrics().requests.with_label_values(&[
                        &self.host,
                        &self.route,
                        METHODS[mi],
                        &code.to_string(),
                    ])
                })
                .inc(),
            None => metrics()
                .requests
                .with_label_values(&[&self.host, &self.route, METHODS[mi], &code.to_string()])
                .inc(),
        }
    }
}

/// Per-pool handles.
pub struct PoolMetrics {
    pub ok: IntCounter,
    pub connect_error: IntCounter,
    pub timeout: IntCounter,
    pub error: IntCounter,
    pub retries: IntCounter,
    pub response_duration: Histogram,
}

impl PoolMetrics {
    pub fn new(pool: &str) -> Self {
        let m = metrics();
        let o = |outcome: &str| m.upstream_requests.with_label_values(&[pool, outcome]);
        PoolMetrics {
            ok: o("ok"),
            connect_error: o("connect_error"),
            timeout: o("timeout"),
            error: o("error"),
            retries: m.upstream_retries.with_label_values(&[pool]),
            response_duration: m.upstream_duration.with_label_values(&[pool]),
        }
    }
}

/// Requests answered before a route was known (unknown host, no route, bad path).
pub fn unrouted() -> &'static RouteMetrics {
    static U: OnceLock<RouteMetrics> = OnceLock::new();
    U.get_or_init(|| RouteMetrics::new("_", "_none"))
}

/// Creates the series the configuration makes possible, at 0, before the
/// first event: a counter that appears only at its first increment makes
/// `rate()` and `increase()` miss that increment, and alert rules and
/// dashboards find nothing to evaluate.
///
/// `routes`: (route name, its rate-limit policy's name, whether it is cached).
pub fn declare<'a>(
    jails: impl Iterator<Item = &'a str>,
    routes: impl Iterator<Item = (&'a str, Option<&'a str>, bool)>,
) {
    let m = metrics();
    for jail in jails.chain(["manual"]) {
        m.bans_total.with_label_values(&[jail]);
    }
    for (route, policy, cached) in routes {
        if let Some(policy) = policy {
            m.rate_limited.with_label_values(&[policy]);
        }
        if cached {
            for status in ["HIT", "MISS", "STALE", "EXPIRED", "BYPASS"] {
                m.cache_lookups.with_label_values(&[route, status]);
            }
        }
    }
}

/// What a reload removed: its metric series go, so a dashboard does not
/// show a removed route for ever and the label sets stay bounded.
#[derive(Debug, Default, PartialEq)]
pub struct Gone {
    /// (host, route) pairs no longer configured.
    pub routes: Vec<(String, String)>,
    /// Route names no host uses any more (series labelled by route alone).
    pub route_names: Vec<String>,
    pub pools: Vec<String>,
}

pub fn forget(gone: &Gone) {
    let m = metrics();
    for (host, route) in &gone.routes {
        remove_where(&m.requests, &[("host", host), ("route", route)]);
        remove_where(&m.duration, &[("host", host), ("route", route)]);
    }
    for route in &gone.route_names {
        remove_where(&m.cache_lookups, &[("route", route)]);
        remove_where(&m.rate_limited, &[("route", route)]);
    }
    for pool in &gone.pools {
        remove_where(&m.upstream_requests, &[("upstream", pool)]);
        remove_where(&m.upstream_retries, &[("upstream", pool)]);
        remove_where(&m.upstream_healthy, &[("upstream", pool)]);
        remove_where(&m.upstream_duration, &[("upstream", pool)]);
    }
}

/// Removes every series of `vec` whose labels include all of `matching`.
fn remove_where<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
    matching: &[(&str, &str)],
) {
    use prometheus::core::Collector;
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels: Vec<(&str, &str)> = metric
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            if matching.iter().all(|m| labels.contains(m)) {
                let map: std::collections::HashMap<&str, &str> = labels.into_iter().collect();
                let _ = vec.remove(&map);
            }
        }
    }
}

/// Encodes metrics for the admin endpoint.
pub fn render() -> Vec<u8> {
    metrics().render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_metrics_count_by_method_and_code() {
        let r = RouteMetrics::new("h.test", "r1");
        r.record(&Method::GET, 200, 0.001);
        r.record(&Method::GET, 200, 0.001);
        r.record(
            &Method::from_bytes(b"PROPFIND").unwrap_or(Method::GET),
            418,
            0.001,
        );
        let text = String::from_utf8(render()).unwrap_or_default();
        assert!(text.contains(
            r#"gateway_requests_total{code="200",host="h.test",method="GET",route="r1"} 2"#
        ));
        assert!(text.contains(r#"code="418",host="h.test",method="OTHER",route="r1"} 1"#));
    }
}
