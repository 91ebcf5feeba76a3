//! Binding, serving and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use sd_notify::NotifyState;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::{self, Metrics};

/// Binds the listener, with an error that says what to do about it.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, std::io::Error> {
    TcpListener::bind(addr).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            " (is another process using the port?)"
        } else {
            ""
        };
        std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}{hint}"))
    })
}

/// Adds the request-metrics layer and the JSON 404/405 fallbacks to a router.
pub fn finish(router: Router, metrics: Arc<Metrics>) -> Router {
    router
        .fallback(crate::error::not_found)
        .method_not_allowed_fallback(crate::error::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            metrics::track,
        ))
}

/// Serves until `shutdown` is cancelled, then drains in-flight requests.
///
/// Under systemd (`Type=notify`) it says `READY=1` here: the caller has
/// migrated the database and bound the listener. It pings the watchdog from
/// the runtime that serves requests and says `STOPPING=1` when draining starts.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let status = format!("listening on {}", listener.local_addr()?);
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    if let Some(period) = sd_notify::watchdog_enabled().map(|d| d / 2) {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(period) => notify(&[NotifyState::Watchdog]),
                }
            }
        });
    }
    axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(async move {
            shutdown.cancelled().await;
            notify(&[
                NotifyState::Stopping,
                NotifyState::Status("draining requests"),
            ]);
        })
        .await
}

/// Tells systemd (a no-op without `NOTIFY_SOCKET`).
fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// Cancels `token` on SIGTERM or SIGINT.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot install SIGTERM handler; only Ctrl-C stops the service");
                let _ = ctrl_c.await;
            }
        }
        tracing::info!("shutdown signal received, draining");
        token.cancel();
    });
}
