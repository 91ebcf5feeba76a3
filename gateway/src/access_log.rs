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

use tracing_subscriber::filter::{filter_fn, EnvFilter, LevelFilter};
use tracing_subscriber::prelude::*;

use crate::config::{AccessLogSettings, LogTarget};
use crate::log_writer::{self, LazyWriter, LogFile, Sink};

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

/// The client address, or nothing, formatted without a `String` per line.
pub struct OptIp(pub Option<std::net::IpAddr>);

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
