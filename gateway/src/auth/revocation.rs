//! Revoked token ids (logout), polled from galion-auth's `/revocations` feed.
//!
//! Polled every `interval` (500 ms by default) so a revoked token is refused within a
//! second. Entries are dropped after the token's own expiry. Readers see an
//! immutable set through `ArcSwap`; the poller replaces it when it changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::Deserialize;

use super::jwt::now_secs;
use crate::config::RevocationConfig;

#[derive(Deserialize)]
struct Feed {
    revocations: Vec<Entry>,
    server_time: Option<u64>,
}

#[derive(Deserialize)]
struct Entry {
    jti: String,
    exp: u64,
}

pub struct Revocations {
    pub config: RevocationConfig,
    revoked: ArcSwap<HashMap<String, u64>>,
    since: std::sync::Mutex<Option<u64>>,
    last_poll: std::sync::Mutex<Option<Instant>>,
    http: reqwest::Client,
    failing: std::sync::atomic::AtomicBool,
}

impl Revocations {
    pub fn new(config: RevocationConfig) -> Self {
        Revocations {
            config,
            revoked: ArcSwap::from_pointee(HashMap::new()),
            since: std::sync::Mutex::new(None),
            last_poll: std::sync::Mutex::new(None),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
            failing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn is_revoked(&self, jti: &str) -> bool {
        self.revoked.load().contains_key(jti)
    }

    /// Records one revocation pushed to us (Redis pub/sub in cluster mode); returns
    /// false when it was already known or has expired.
    pub fn revoke(&self, jti: &str, exp: u64) -> bool {
        if exp <= now_secs() || self.is_revoked(jti) {
            return false;
        }
        self.revoked.rcu(|cur| {
            let mut next = HashMap::clone(cur);
            next.insert(jti.to_owned(), exp);
            next
        });
        true
    }

    pub fn poll_due(&self) -> bool {
        match self.last_poll.lock().ok().and_then(|t| *t) {
            None => true,
            Some(t) => t.elapsed() >= self.config.interval,
        }
    }

    /// One poll; returns the newly revoked ids.
    pub async fn poll(&self) -> Result<Vec<String>, String> {
        if let Ok(mut t) = self.last_poll.lock() {
            *t = Some(Instant::now());
        }
        let since = self.since.lock().ok().and_then(|s| *s);
        let mut req = self.http.get(&self.config.url);
        if let Some(s) = since {
            // Inclusive feed: ask from one second before the last server time.
            req = req.query(&[("since", s.saturating_sub(1))]);
        }
        if let Some(t) = &self.config.token {
            req = req.bearer_auth(t);
        }
        let result = async {
            let resp = req.send().await.map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("revocation feed: HTTP {}", resp.status()));
            }
            resp.json::<Feed>().await.map_err(|e| e.to_string())
        }
        .await;
        let feed = match result {
            Ok(f) => {
                if self
                    .failing
                    .swap(false, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::info!("revocation feed reachable again");
                }
                f
            }
            Err(e) => {
                // Log once per outage; the known revocations keep being enforced.
                if !self
                    .failing
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!(error = %e, url = %self.config.url, "revocation feed unreachable");
                }
                return Err(e);
            }
        };
        let now = now_secs();
        let current = self.revoked.load();
        let fresh: Vec<Entry> = feed
            .revocations
            .into_iter()
            .filter(|e| e.exp > now && !current.contains_key(&e.jti))
            .collect();
        let expired = current.values().any(|exp| *exp <= now);
        if !fresh.is_empty() || expired {
            let mut next: HashMap<String, u64> = current
                .iter()
                .filter(|(_, exp)| **exp > now)
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            for e in &fresh {
                next.insert(e.jti.clone(), e.exp);
            }
            self.revoked.store(Arc::new(next));
        }
        if let (Some(t), Ok(mut s)) = (feed.server_time, self.since.lock()) {
            *s = Some(t);
        }
        Ok(fresh.into_iter().map(|e| e.jti).collect())
    }
}
