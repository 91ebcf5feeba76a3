//! The HTTP health check of a pool (pingora's), as its config describes it;
//! `services::HealthChecker` runs them.

use pingora::lb::health_check::HttpHealthCheck;
use pingora::prelude::RequestHeader;

use crate::config::HealthCheckConfig;

/// Builds pingora's HTTP health check for a pool.
pub fn http_check(
    hc: &HealthCheckConfig,
    tls: Option<&crate::config::UpstreamTls>,
) -> Option<HttpHealthCheck> {
    let host = hc
        .host
        .as_deref()
        .or(tls.map(|t| t.sni.as_str()).filter(|s| !s.is_empty()))
        .unwrap_or("localhost");
    let mut check = HttpHealthCheck::new(host, tls.is_some());
    if let Some(t) = tls {
        check.peer_template.sni = t.sni.clone();
        check.peer_template.options.verify_cert = t.verify;
        check.peer_template.options.verify_hostname = t.verify;
    }
    let mut req = RequestHeader::build("GET", hc.path.as_bytes(), None).ok()?;
    req.insert_header("Host", host).ok()?;
    req.insert_header("User-Agent", "galion-gateway-health")
        .ok()?;
    check.req = req;
    check.consecutive_success = hc.healthy_threshold;
    check.consecutive_failure = hc.unhealthy_threshold;
    check.peer_template.options.connection_timeout = Some(hc.timeout);
    check.peer_template.options.read_timeout = Some(hc.timeout);
    Some(check)
}
