//! Logging setup and the JSON access log.
//!
//! Application logs go to stderr (level from `RUST_LOG`; text, or JSON with
//! `GALION_LOG_FORMAT=json`). The access log is one JSON object per request
//! under the `access` target, whatever `RUST_LOG` says, written through a
//! non-blocking writer so a slow disk or terminal never stalls a request task
//! ([`crate::log_writer`]).

use std::io::IsTerminal;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tracing_subscriber::filter::{filter_fn, EnvFilter, LevelFilter};
use tracing_subscriber::prelude::*;

use crate::config::{AccessLogSettings, LogTarget};
use crate::log_writer::{self, LazyWriter, LogFile, Sink};
use crate::pipeline::{LocalReply, RequestCtx};

pub const TARGET: &str = "access";

/// The running access log: see [`crate::log_writer`].
pub struct AccessLog {
    writer: LazyWriter,
    /// `None` when the log goes to stdout: nothing to reopen.
    reopen: Option<Arc<AtomicBool>>,
}

impl AccessLog {
    /// Set by `SIGUSR1`/`SIGHUP`: the file is opened again before the next line.
    pub fn reopen_flag(&self) -> Option<Arc<AtomicBool>> {
        self.reopen.clone()
    }

    /// Writes out the queued lines and stops the writer thread.
    pub fn finish(&self) {
        self.writer.finish();
    }
}

/// Installs the global subscriber. The file is opened here, so a bad path stops
/// the start with a clear error; call [`AccessLog::finish`] at shutdown.
pub fn init(settings: &AccessLogSettings) -> std::io::Result<AccessLog> {
    let (sink, reopen) = match &settings.target {
        LogTarget::Stdout => (Sink::Stdout, None),
        LogTarget::File(path) => {
            let reopen = Arc::new(AtomicBool::new(false));
            let file = LogFile::new(path.clone(), log_writer::open_append(path)?, reopen.clone());
            (Sink::File(file), Some(reopen))
        }
    };
    let writer = LazyWriter::new(sink);
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // The access log is a record of traffic, not a diagnostic: `RUST_LOG`
    // (even `warn` or `off`) does not silence it; `access_log.enabled` does.
    let access = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_target(false)
        .with_level(false)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(writer.clone())
        // The level hint matters: with none, the subscriber's maximum level
        // is TRACE, and so is the `log` crate's (set from it at init), so
        // every `log::debug!` inside pingora is formatted and filtered on
        // every request. The access line is an INFO event.
        .with_filter(filter_fn(|m| m.target() == TARGET).with_max_level_hint(LevelFilter::INFO));
    // The gateway's own logs: text for people, or JSON lines like the
    // backends' with `GALION_LOG_FORMAT=json` (one switch for all four).
    let json = std::env::var("GALION_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let text = (!json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter_fn(|m| m.target() != TARGET))
            .with_filter(filter())
    });
    let json = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .with_filter(filter_fn(|m| m.target() != TARGET))
            .with_filter(filter())
    });
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = tracing_subscriber::registry()
        .with(access)
        .with(text)
        .with(json)
        .try_init();
    Ok(AccessLog { writer, reopen })
}

/// What the access log needs of the request, however it was proxied.
pub struct Line<'a> {
    /// HTTP/2 carries the host in `:authority` (the URI), HTTP/1.1 in `Host`.
    pub host: &'a str,
    pub method: &'a http::Method,
    pub path: &'a str,
    /// Response body bytes sent to the client.
    pub bytes: usize,
}

/// One access log line.
pub fn write(line: &Line<'_>, ctx: &RequestCtx, status: u16, elapsed: Duration) {
    if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        return;
    }
    let host = line.host;
    let route = ctx.route.as_ref().map_or("", |r| &r.name);
    // The pool the route forwards to; `upstream` is its server that answered.
    let pool = ctx
        .route
        .as_ref()
        .and_then(|r| r.pool())
        .map_or("", |p| &*p.name);
    let upstream = match (&ctx.route, ctx.last_server()) {
        (Some(r), Some(i)) => r
            .pool()
            .and_then(|p| p.servers.get(i))
            .map_or("", |s| s.label.as_str()),
        _ => "",
    };
    let local = match ctx.local {
        Some(LocalReply::UnknownHost) => "unknown_host",
        Some(LocalReply::NoRoute) => "no_route",
        Some(LocalReply::MethodNotAllowed) => "method_not_allowed",
        Some(LocalReply::BadRequest) => "bad_request",
        Some(LocalReply::HeadersTooLarge) => "headers_too_large",
        Some(LocalReply::BodyTooLarge) => "body_too_large",
        Some(LocalReply::Unauthorized) => "unauthorized",
        Some(LocalReply::Forbidden) => "forbidden",
        Some(LocalReply::Preflight) => "cors_preflight",
        Some(LocalReply::Redirect) => "https_redirect",
        Some(LocalReply::Acme) => "acme_challenge",
        Some(LocalReply::RateLimited) => "rate_limited",
        Some(LocalReply::Banned) => "banned",
        Some(LocalReply::Dropped) => "banned_drop",
        Some(LocalReply::BadForwarding) => "bad_forwarding",
        Some(LocalReply::RouteAction) => "route_action",
        Some(LocalReply::TooSlow) => "too_slow",
        None => "",
    };
    let auth = match (&ctx.identity, ctx.auth_reject) {
        (_, Some(r)) => r.as_str(),
        (Some(id), None) => match id.kind {
            crate::auth::IdentityKind::Jwt => "jwt",
            crate::auth::IdentityKind::ApiKey => "api_key",
        },
        (None, None) => "public",
    };
    let user = ctx.identity.as_ref().map_or("", |i| i.subject.as_str());
    let empty = crate::pipeline::LogFields::default();
    let f = ctx.log.as_deref().unwrap_or(&empty);
    tracing::info!(
        target: TARGET,
        request_id = ctx.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
        client_ip = %OptIp(ctx.client.ip),
        host,
        route,
        method = line.method.as_str(),
        path = line.path,
        query = f.query.as_str(),
        protocol = f.protocol,
        status,
        bytes = line.bytes,
        bytes_in = ctx.body_bytes,
        pool,
        upstream,
        attempts = ctx.attempts.count,
        upstream_ms = ctx.attempts.upstream_time.map(|t| t.as_secs_f64() * 1000.0),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        cache = ctx.cache_status.unwrap_or(""),
        auth,
        user,
        user_agent = f.user_agent.as_str(),
        referer = f.referer.as_str(),
        tls = f.tls,
        local,
    );
}

/// The client address, or nothing, formatted without a `String` per line.
struct OptIp(Option<std::net::IpAddr>);

impl std::fmt::Display for OptIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => ip.fmt(f),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::OptIp;

    /// What is off stays cheap: the subscriber's maximum level (and the `log`
    /// crate's, which pingora logs through) is the most verbose of the access
    /// line and `RUST_LOG`, never TRACE by default.
    #[test]
    fn the_maximum_level_is_what_is_on() {
        let settings = crate::config::AccessLogSettings {
            enabled: true,
            target: crate::config::LogTarget::Stdout,
            redact_query: std::sync::Arc::from([]),
        };
        let _log = super::init(&settings);
        let expected = match std::env::var("RUST_LOG") {
            Ok(v) if !v.is_empty() => return, // a developer's own filter
            _ => super::LevelFilter::INFO,
        };
        assert_eq!(tracing::level_filters::LevelFilter::current(), expected);
        assert!(!tracing::enabled!(target: "pingora_core::any", tracing::Level::DEBUG));
    }

    #[test]
    fn the_client_address_is_written_as_is_or_left_empty() {
        assert_eq!(OptIp(Some([10, 0, 0, 1].into())).to_string(), "10.0.0.1");
        assert_eq!(
            OptIp(Some(std::net::Ipv6Addr::LOCALHOST.into())).to_string(),
            "::1"
        );
        assert_eq!(OptIp(None).to_string(), "");
    }
}
