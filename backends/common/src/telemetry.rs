//! Logging: JSON lines on stdout (one object per event), filtered by
//! `RUST_LOG` (default `info`). `GALION_LOG_FORMAT=pretty` for humans.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call more than once (later calls
/// are no-ops), which keeps tests that start several services simple.
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let pretty = std::env::var("GALION_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("pretty"));
    // A log line that cannot be written (stdout piped to a reader that is
    // gone, as when Ctrl-C stops `tee` first) is dropped: tracing-subscriber's
    // fallback report goes to stderr, the same dead pipe, and that failure
    // panics, which under `panic = "abort"` kills the service mid-shutdown.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .log_internal_errors(false);
    let _ = if pretty {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    };
}
