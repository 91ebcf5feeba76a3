//! galion-auth: registration, login, JWT access tokens (EdDSA, `kid`),
//! rotating refresh tokens, logout/revocation, JWKS, email verification and
//! password reset. `main.rs` only parses arguments; everything testable is
//! here: [`build`] wires the state and background tasks, [`app`] is the
//! router and [`run`] serves it until shutdown.

pub mod account;
pub mod email;
pub mod keys;
pub mod mailer;
pub mod password;
pub mod publish;
pub mod revocations;
pub mod settings;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use galion_common::db::{Db, DbError};
use galion_common::metrics::Metrics;
use galion_common::outbox::{self, RelayHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use settings::AuthSettings;

/// How long shutdown waits for the mail in flight to be delivered and
/// marked; one cut off later is retried (and may arrive twice).
const MAILER_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The `service` field of events this service emits.
pub const SERVICE: &str = "auth";

/// Shared state of the handlers.
pub struct AppState {
    pub db: Db,
    pub settings: AuthSettings,
    pub keys: Arc<keys::KeyStore>,
    pub hasher: password::Hasher,
    pub metrics: Arc<Metrics>,
    pub relay: RelayHandle,
    pub logins: prometheus::IntCounterVec,
    pub registrations: prometheus::IntCounter,
    /// Refresh tokens presented again after use: the family was revoked.
    pub refresh_reuse: prometheus::IntCounter,
    /// Mails not queued because the account reached its per-window limit.
    pub mail_throttled: prometheus::IntCounterVec,
    /// Wakes the mail sender after a mail is committed.
    pub mailer: mailer::MailerHandle,
    /// The sender's task, awaited on shutdown (`None` when mail is off).
    mailer_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("signing keys: {0}")]
    Keys(#[from] keys::KeyError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("GALION_REDIS_URL: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("mail: {0}")]
    Mail(#[from] mailer::MailError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The router (without the listener).
pub fn app(state: Arc<AppState>) -> Router {
    let metrics = state.metrics.clone();
    let api = Router::new()
        .route("/register", post(account::register))
        .route("/login", post(account::login))
        .route("/refresh", post(account::refresh))
        .route("/logout", post(account::logout))
        .route("/me", get(account::me))
        .route("/.well-known/jwks.json", get(revocations::jwks))
        .route("/revocations", get(revocations::list))
        .route("/verify-email/request", post(email::verify_request))
        .route("/verify-email/confirm", post(email::verify_confirm))
        .route("/password-reset/request", post(email::reset_request))
        .route("/password-reset/confirm", post(email::reset_confirm))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(state.clone());
    let router = api.merge(galion_common::health::routes(
        state.db.clone(),
        metrics.clone(),
        &state.settings.common,
    ));
    galion_common::server::finish(router, metrics)
}

/// Opens the database, loads (or creates) signing keys and starts the
/// background tasks (outbox relay, key reloader, cleanup), which stop when
/// `shutdown` is cancelled.
pub async fn build(
    settings: AuthSettings,
    shutdown: &CancellationToken,
) -> Result<Arc<AppState>, StartupError> {
    let db = Db::connect(&settings.common.database_url, &settings.common.db).await?;
    let keys = Arc::new(keys::KeyStore::open(db.clone(), &settings).await?);
    keys.spawn_reloader(shutdown.clone());
    let metrics = Metrics::new(SERVICE)?;
    let relay = match &settings.common.analytics_url {
        Some(url) => {
            let (handle, _task) = outbox::spawn_relay(
                db.clone(),
                SERVICE,
                url,
                settings.common.service_token.clone(),
                settings.common.relay.clone(),
                &metrics,
                shutdown.clone(),
            )?;
            handle
        }
        None => RelayHandle::default(),
    };
    let logins = metrics.counter_vec(
        "auth_logins_total",
        "Login attempts by outcome",
        &["outcome"],
    )?;
    let registrations = metrics.counter("auth_registrations_total", "Accounts registered")?;
    let refresh_reuse = metrics.counter(
        "auth_refresh_reuse_detected_total",
        "Refresh tokens presented again after use (the token family is revoked)",
    )?;
    let mail_throttled = metrics.counter_vec(
        "auth_mail_throttled_total",
        "Mails not queued because the account reached its per-window limit",
        &["purpose"],
    )?;
    // Every outcome from the start, at 0: rate() and the alert rules see the
    // first failure too.
    for outcome in ["success", "failure", "throttled"] {
        logins.with_label_values(&[outcome]);
    }
    for purpose in ["verify_email", "password_reset"] {
        mail_throttled.with_label_values(&[purpose]);
    }
    let (mailer, mailer_task) =
        match mailer::spawn(db.clone(), &settings.mail, &metrics, shutdown.clone())? {
            Some(m) => (m.handle, Some(m.task)),
            None => {
                tracing::warn!(
                    "mail transport is off: mail_outbox is not delivered by this instance"
                );
                (mailer::MailerHandle::default(), None)
            }
        };
    password::warm_up();
    revocations::spawn_cleanup(db.clone(), settings.revocation_retention, shutdown.clone());
    if let Some(url) = &settings.redis_url {
        publish::spawn(
            db.clone(),
            url,
            publish::Options::new(settings.revocation_retention),
            shutdown.clone(),
        )?;
        tracing::info!("mirroring revocations to redis");
    }
    tracing::info!(database = db.engine(), kid = %keys.current_kid().unwrap_or_default(), "galion-auth ready");
    Ok(Arc::new(AppState {
        db,
        settings,
        keys,
        hasher: password::Hasher::new(),
        metrics,
        relay,
        logins,
        registrations,
        refresh_reuse,
        mail_throttled,
        mailer,
        mailer_task: std::sync::Mutex::new(mailer_task),
    }))
}

/// Serves on `listener` until `shutdown`, then drains requests.
pub async fn run(
    settings: AuthSettings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartupError> {
    let state = build(settings, &shutdown).await?;
    tracing::info!(addr = %listener.local_addr()?, "galion-auth listening");
    galion_common::server::serve(listener, app(state.clone()), shutdown.clone()).await?;
    shutdown.cancel();
    // The mail sender finishes (and records) the mail in flight before the
    // pool closes under it.
    let mailer_task = match state.mailer_task.lock() {
        Ok(mut slot) => slot.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    };
    if let Some(task) = mailer_task {
        if tokio::time::timeout(MAILER_STOP_TIMEOUT, task)
            .await
            .is_err()
        {
            tracing::warn!("mail sender did not stop in time");
        }
    }
    // Give background tasks a moment to observe the cancellation.
    tokio::time::sleep(Duration::from_millis(50)).await;
    state.db.close().await;
    Ok(())
}
