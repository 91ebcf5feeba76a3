//! galion-users: profiles and role-based access control over the `users`
//! table it shares with galion-auth.
//!
//! Every request carries the caller's access JWT, verified here against
//! auth's JWKS (defense in depth: the gateway's `X-User-*` headers are
//! ignored), checked against revoked jtis, and resolved to the caller's
//! current row, so a demoted admin or a deleted user loses access at once.

pub mod handlers;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use galion_common::config::{CommonSettings, ConfigError, FileConfig};
use galion_common::db::{Db, DbError};
use galion_common::jwt::JwtVerifier;
use galion_common::metrics::Metrics;
use galion_common::outbox::{self, RelayHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "users";

#[derive(Clone, Debug)]
pub struct UsersSettings {
    pub common: CommonSettings,
}

impl UsersSettings {
    pub fn load(config: Option<&Path>) -> Result<UsersSettings, ConfigError> {
        let file = FileConfig::load(config)?;
        let common = CommonSettings::load("users", 7002, &file)?;
        Ok(UsersSettings { common })
    }

    pub fn for_tests(database_url: &str, data_dir: &Path) -> UsersSettings {
        UsersSettings {
            common: CommonSettings::for_tests(database_url, data_dir),
        }
    }
}

pub struct AppState {
    pub db: Db,
    pub settings: UsersSettings,
    pub verifier: JwtVerifier,
    pub metrics: Arc<Metrics>,
    pub relay: RelayHandle,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub fn app(state: Arc<AppState>) -> Router {
    let metrics = state.metrics.clone();
    let api = Router::new()
        .route("/users", get(handlers::list))
        .route("/users/me", get(handlers::me))
        .route(
            "/users/{id}",
            get(handlers::get_one)
                .patch(handlers::patch)
                .delete(handlers::delete),
        )
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(state.clone());
    let router = api.merge(galion_common::health::routes(
        state.db.clone(),
        metrics.clone(),
        &state.settings.common,
    ));
    galion_common::server::finish(router, metrics)
}

pub async fn build(
    settings: UsersSettings,
    shutdown: &CancellationToken,
) -> Result<Arc<AppState>, StartupError> {
    let db = Db::connect(&settings.common.database_url, &settings.common.db).await?;
    let metrics = Metrics::new(SERVICE)?;
    let relay = match &settings.common.analytics_url {
        Some(url) => {
            outbox::spawn_relay(
                db.clone(),
                SERVICE,
                url,
                settings.common.service_token.clone(),
                settings.common.relay.clone(),
                &metrics,
                shutdown.clone(),
            )?
            .0
        }
        None => RelayHandle::default(),
    };
    let verifier = JwtVerifier::remote(
        &settings.common.jwt,
        &settings.common.auth_url,
        Duration::from_secs(10),
    );
    tracing::info!(database = db.engine(), "galion-users ready");
    Ok(Arc::new(AppState {
        db,
        settings,
        verifier,
        metrics,
        relay,
    }))
}

pub async fn run(
    settings: UsersSettings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartupError> {
    let state = build(settings, &shutdown).await?;
    tracing::info!(addr = %listener.local_addr()?, "galion-users listening");
    galion_common::server::serve(listener, app(state.clone()), shutdown.clone()).await?;
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(50)).await;
    state.db.close().await;
    Ok(())
}
