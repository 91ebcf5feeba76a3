//! Keeps the live snapshot's authenticator current: JWKS refreshes and
//! revocation polls.

use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::snapshot::SnapshotHandle;

/// Refreshes JWKS and polls revocations for the live snapshot's authenticator.
pub struct AuthService {
    snapshot: SnapshotHandle,
}

impl AuthService {
    pub fn new(snapshot: SnapshotHandle) -> Self {
        AuthService { snapshot }
    }
}

#[async_trait]
impl BackgroundService for AuthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => break,
            }
            let auth = self.snapshot.load().auth.clone();
            if let Some(v) = &auth.jwt {
                if v.refresh_due() {
                    match v.refresh().await {
                        Ok(n) => tracing::debug!(keys = n, "JWKS refreshed"),
                        Err(e) => {
                            tracing::warn!(error = %e, "JWKS refresh failed; keeping the last good keys")
                        }
                    }
                }
            }
            if let Some(r) = &auth.revocations {
                if r.poll_due() {
                    if let Ok(new) = r.poll().await {
                        if let Some(v) = &auth.jwt {
                            for jti in &new {
                                v.forget_jti(jti);
                            }
                        }
                    }
                }
            }
        }
    }
}
