//! The admin listener: Prometheus metrics, health, and the authenticated admin API.
//!
//! `/metrics`, `/health/live` and `/health/ready` are open (the listener is on
//! loopback by default); everything under `/admin/` needs `Authorization: Bearer T`
//! where SHA-256(T) is listed in `admin.token_sha256`.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

mod bans;
mod reply;

use reply::{error, json_response};

use crate::metrics;
use crate::reload::Reloader;
use crate::shield::Shield;
use crate::snapshot::{summary_of, SnapshotHandle};

pub struct AdminApp {
    snapshot: SnapshotHandle,
    reloader: Arc<Reloader>,
    shield: Arc<Shield>,
}

/// Constant-time check of a bearer token against the configured digests.
pub fn token_ok(header: Option<&[u8]>, digests: &[[u8; 32]]) -> bool {
    let Some(token) = header
        .and_then(|h| std::str::from_utf8(h).ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
    else {
        return false;
    };
    if token.is_empty() {
        return false;
    }
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    // Check every entry so timing does not reveal which one matched.
    digests
        .iter()
        .fold(0u8, |acc, d| acc | d.ct_eq(&digest).unwrap_u8())
        == 1
}

impl AdminApp {
    pub fn new(snapshot: SnapshotHandle, reloader: Arc<Reloader>, shield: Arc<Shield>) -> Self {
        AdminApp {
            snapshot,
            reloader,
            shield,
        }
    }

    fn ready(&self) -> Response<Vec<u8>> {
        let snap = self.snapshot.load();
        let mut down = Vec::new();
        for pool in snap.pools.values() {
            if pool.config.health_check.is_none() {
                continue;
            }
            if !(0..pool.servers.len()).any(|i| pool.available(i)) {
                down.push(pool.name.to_string());
            }
        }
        // Ready, but say so when a certificate is about to expire.
        let warnings: Vec<String> = crate::tls::expiring_within(&snap.config.tls, 14)
            .into_iter()
            .map(|(hosts, days)| format!("certificate for {hosts} expires in {days} day(s)"))
            .collect();
        if down.is_empty() {
            json_response(
                StatusCode::OK,
                json!({"status": "ready", "generation": snap.generation, "pid": std::process::id(), "warnings": warnings}),
            )
        } else {
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "not_ready", "pools_without_healthy_server": down}),
            )
        }
    }

    async fn admin(&self, method: &Method, path: &str, body: &[u8]) -> Response<Vec<u8>> {
        if path == "/admin/bans" || path.starts_with("/admin/bans/") {
            let snap = self.snapshot.load_full();
            return bans::handle(&self.shield, &snap, method, path, body).await;
        }
        match (method, path) {
            (&Method::POST, "/admin/cache/purge") => purge(body),
            (&Method::GET, "/admin/config") => {
                let snap = self.snapshot.load();
                let loaded = snap
                    .loaded_at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let mut body = summary_of(&snap.config);
                body["generation"] = json!(snap.generation);
                body["loaded_at_unix"] = json!(loaded);
                body["file"] = json!(self.reloader.path().display().to_string());
                json_response(StatusCode::OK, body)
            }
            (&Method::POST, "/admin/upgrade") => self.upgrade().await,
            (&Method::POST, "/admin/reload") => match self.reloader.reload("admin api") {
                // The generation serving now: `galion-gateway reload` reports it.
                Ok(outcome) => json_response(
                    StatusCode::OK,
                    json!({"result": outcome.as_str(), "generation": self.snapshot.load().generation}),
                ),
                Err(e) => json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"error": {"code": "invalid_config", "message": e.to_string()}}),
                ),
            },
            _ => error(StatusCode::NOT_FOUND, "not_found", "unknown admin endpoint"),
        }
    }
}

impl AdminApp {
    /// `POST /admin/upgrade`: start the binary on disk as a successor and hand
    /// it the listeners (see [`crate::upgrade`]).
    async fn upgrade(&self) -> Response<Vec<u8>> {
        let config = self.reloader.path().to_path_buf();
        let sock = self.reloader.server_at_start().upgrade_sock.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            crate::upgrade::start(crate::upgrade::Request {
                config: &config,
                upgrade_sock: sock.as_deref(),
            })
        })
        .await;
        match outcome {
            Ok(crate::upgrade::Outcome::Started { pid, binary }) => json_response(
                StatusCode::ACCEPTED,
                json!({"result": "upgrading", "old_pid": std::process::id(), "pid": pid,
                       "binary": binary.display().to_string()}),
            ),
            Ok(crate::upgrade::Outcome::Refused(why)) => {
                error(StatusCode::UNPROCESSABLE_ENTITY, "upgrade_refused", &why)
            }
            Ok(crate::upgrade::Outcome::Failed(why)) => {
                tracing::error!("binary upgrade failed: {why}");
                error(StatusCode::INTERNAL_SERVER_ERROR, "upgrade_failed", &why)
            }
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "upgrade_failed",
                &format!("upgrade task: {e}"),
            ),
        }
    }
}

/// `POST /admin/cache/purge` with `{"url": "https://galion.app/a?b"}` (that URL, every
/// variant and identity) or `{"prefix": "galion.app/static/"}`.
fn purge(body: &[u8]) -> Response<Vec<u8>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Purge {
        url: Option<String>,
        prefix: Option<String>,
    }
    let strip = |s: &str| {
        let s = s.trim();
        let s = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"))
            .unwrap_or(s);
        s.to_ascii_lowercase()
            .split_once('/')
            .map(|(host, _)| format!("{host}{}", &s[host.len()..]))
            .unwrap_or_else(|| s.to_ascii_lowercase())
    };
    match serde_json::from_slice::<Purge>(body) {
        Ok(Purge {
            url: Some(u),
            prefix: None,
        }) => json_response(
            StatusCode::OK,
            json!({"purged": crate::cache::purge(&strip(&u), false)}),
        ),
        Ok(Purge {
            url: None,
            prefix: Some(p),
        }) if !p.trim().is_empty() => json_response(
            StatusCode::OK,
            json!({"purged": crate::cache::purge(&strip(&p), true)}),
        ),
        _ => error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "send {\"url\": \"https://host/path?query\"} or {\"prefix\": \"host/path\"}",
        ),
    }
}

/// The request body of an admin call (small JSON documents only).
async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Response<Vec<u8>>> {
    const MAX: usize = 64 * 1024;
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX {
                    return Err(error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        "admin requests are limited to 64 KiB",
                    ));
                }
            }
            Ok(None) => return Ok(body),
            Err(_) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "could not read the request body",
                ))
            }
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_owned();
        let auth = req
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes().to_vec());
        match (&method, path.as_str()) {
            (&Method::GET, "/metrics") => {
                let body = metrics::render();
                Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "text/plain; version=0.0.4")
                    .header("content-length", body.len())
                    .body(body)
                    .unwrap_or_else(|_| Response::new(Vec::new()))
            }
            // The pid tells a binary upgrade which process answered.
            (&Method::GET, "/health/live") => json_response(
                StatusCode::OK,
                json!({"status": "live", "pid": std::process::id()}),
            ),
            (&Method::GET, "/health/ready") => self.ready(),
            (_, p) if p.starts_with("/admin/") => {
                let digests = self.snapshot.load().config.admin.token_sha256.clone();
                if token_ok(auth.as_deref(), &digests) {
                    match read_body(session).await {
                        Ok(body) => self.admin(&method, p, &body).await,
                        Err(r) => r,
                    }
                } else {
                    let mut r = error(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "a valid admin bearer token is required",
                    );
                    r.headers_mut().insert(
                        "www-authenticate",
                        http::HeaderValue::from_static("Bearer realm=\"galion-admin\""),
                    );
                    r
                }
            }
            _ => error(StatusCode::NOT_FOUND, "not_found", "unknown endpoint"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        let d: [u8; 32] = Sha256::digest(b"s3cret").into();
        assert!(token_ok(Some(b"Bearer s3cret"), &[d]));
        assert!(!token_ok(Some(b"Bearer nope"), &[d]));
        assert!(!token_ok(Some(b"s3cret"), &[d]));
        assert!(!token_ok(None, &[d]));
        assert!(!token_ok(Some(b"Bearer s3cret"), &[]));
        assert!(!token_ok(Some(b"Bearer "), &[d]));
    }
}
