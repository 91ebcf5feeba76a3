//! JWT verification with pinned algorithms and a verified-token cache.
//!
//! A token is checked once (signature, `exp`, `nbf`, `iss`, `aud`) and its identity
//! cached until the token expires, keyed by the full token text, so a JWT route
//! costs a hash lookup. Keys come from a JWKS URL (refreshed periodically, and on an
//! unknown `kid` at most once per `min_refresh_interval`), a JWKS/PEM file, and/or an
//! HS256 secret. The last good key set keeps serving when a fetch fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::cache::{now_secs, TokenCache};
use super::identity::{Identity, IdentityKind, Reject};
use super::keys::KeySet;
use crate::config::JwtConfig;

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    roles: Option<Vec<String>>,
    #[serde(default)]
    jti: Option<String>,
    exp: u64,
}

pub struct JwtVerifier {
    pub config: JwtConfig,
    keys: ArcSwap<KeySet>,
    hs256: Option<DecodingKey>,
    cache: TokenCache,
    last_fetch: std::sync::Mutex<Option<Instant>>,
    fetch_lock: tokio::sync::Mutex<()>,
    http: reqwest::Client,
}

impl JwtVerifier {
    pub fn new(config: JwtConfig) -> Self {
        let hs256 = config.hs256_secret.as_deref().map(DecodingKey::from_secret);
        let cache = TokenCache::new(config.cache_entries);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        let v = JwtVerifier {
            keys: ArcSwap::from_pointee(KeySet::default()),
            hs256,
            cache,
            last_fetch: std::sync::Mutex::new(None),
            fetch_lock: tokio::sync::Mutex::new(()),
            http,
            config,
        };
        if let Err(e) = v.load_file() {
            tracing::error!(error = %e, "JWT key file not loaded");
        }
        v
    }

    fn load_file(&self) -> Result<(), String> {
        let Some(path) = &self.config.jwks_file else {
            return Ok(());
        };
        let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let set = match KeySet::from_jwks(&data) {
            Ok((set, _)) => set,
            Err(_) => KeySet::from_pem(&data, "file")?,
        };
        self.keys.store(Arc::new(set));
        Ok(())
    }

    pub fn key_ids(&self) -> Vec<String> {
        self.keys.load().kids()
    }

    /// Fetches the JWKS now; on failure the previous keys stay.
    pub async fn refresh(&self) -> Result<usize, String> {
        let _g = self.fetch_lock.lock().await;
        let result = self.fetch().await;
        if result.is_err() {
            // Retry after min_refresh_interval rather than a whole refresh_interval.
            let back = self
                .config
                .refresh_interval
                .saturating_sub(self.config.min_refresh_interval);
            if let Ok(mut t) = self.last_fetch.lock() {
                *t = Instant::now().checked_sub(back).or(*t);
            }
        }
        result
    }

    /// The fetch itself; callers hold `fetch_lock` so fetches never overlap.
    async fn fetch(&self) -> Result<usize, String> {
        let Some(url) = &self.config.jwks_url else {
            return self.load_file().map(|_| self.keys.load().by_kid.len());
        };
        if let Ok(mut t) = self.last_fetch.lock() {
            *t = Some(Instant::now());
        }
        let resp = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("JWKS fetch: HTTP {}", resp.status()));
        }
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        let (mut set, skipped) = KeySet::from_jwks(&body)?;
        if self.config.jwks_file.is_some() {
            // A file's keys are kept alongside the fetched ones.
            let file = self.keys.load();
            for (kid, k) in file.by_kid.iter() {
                if !set.by_kid.contains_key(kid) {
                    set.by_kid.insert(
                        kid.clone(),
                        super::keys::PinnedKey {
                            key: k.key.clone(),
                            alg: k.alg,
                        },
                    );
                }
            }
        }
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "JWKS keys without kid or of an unsupported type ignored"
            );
        }
        let n = set.by_kid.len();
        self.keys.store(Arc::new(set));
        Ok(n)
    }

    pub fn refresh_due(&self) -> bool {
        match self.last_fetch.lock().ok().and_then(|t| *t) {
            None => true,
            Some(t) => t.elapsed() >= self.config.refresh_interval,
        }
    }

    /// On an unknown `kid`: refetch unless one happened within `min_refresh_interval`.
    async fn refetch_for_unknown_kid(&self, kid: &str) -> bool {
        if self.config.jwks_url.is_none() {
            return false;
        }
        let _g = self.fetch_lock.lock().await;
        // A fetch that was in flight while we waited may have brought the key.
        if self.keys.load().by_kid.contains_key(kid) {
            return true;
        }
        let recent = self
            .last_fetch
            .lock()
            .ok()
            .and_then(|t| *t)
            .is_some_and(|t| t.elapsed() < self.config.min_refresh_interval);
        if recent {
            return false;
        }
        match self.fetch().await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "JWKS refetch for an unknown kid failed");
                false
            }
        }
    }

    /// Drops cached identities of a revoked token id.
    pub fn forget_jti(&self, jti: &str) {
        self.cache.forget_jti(jti);
    }

    /// The verdict on a token when it needs no signature check: too long, or
    /// verified before (then only its expiry is checked). `None`: not cached.
    pub fn cached(&self, token: &[u8]) -> Option<Result<Arc<Identity>, Reject>> {
        if token.len() > MAX_TOKEN_BYTES {
            return Some(Err(Reject::Oversized));
        }
        let id = self.cache.get(token)?;
        // The cache expires entries at `exp`; check anyway, it is one compare.
        if id.exp > now_secs().saturating_sub(self.config.leeway.as_secs()) {
            Some(Ok(id))
        } else {
            Some(Err(Reject::Expired))
        }
    }

    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, Reject> {
        if let Some(decided) = self.cached(token.as_bytes()) {
            return decided;
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Reject::Malformed)?;
        let (key, alg) = if header.alg == Algorithm::HS256 {
            // HS256 only with the configured secret, never with a JWKS public key.
            match &self.hs256 {
                Some(k) => (k.clone(), Algorithm::HS256),
                None => return Err(Reject::Algorithm),
            }
        } else {
            let kid = header.kid.as_deref().ok_or(Reject::UnknownKid)?;
            let mut found = self.lookup(kid);
            if found.is_none() && self.refetch_for_unknown_kid(kid).await {
                found = self.lookup(kid);
            }
            let (key, alg) = found.ok_or(Reject::UnknownKid)?;
            if header.alg != alg {
                return Err(Reject::Algorithm);
            }
            (key, alg)
        };
        let mut v = Validation::new(alg);
        v.leeway = self.config.leeway.as_secs();
        v.validate_nbf = true;
        v.required_spec_claims = ["exp", "sub"].iter().map(|s| s.to_string()).collect();
        match &self.config.issuer {
            Some(iss) => v.set_issuer(&[iss]),
            None => v.iss = None,
        }
        match &self.config.audience {
            Some(aud) => v.set_audience(aud),
            None => v.validate_aud = false,
        }
        let data = jsonwebtoken::decode::<Claims>(token, &key, &v).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => Reject::Signature,
            ErrorKind::ExpiredSignature => Reject::Expired,
            ErrorKind::ImmatureSignature => Reject::NotYetValid,
            ErrorKind::InvalidIssuer => Reject::Issuer,
            ErrorKind::InvalidAudience => Reject::Audience,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => Reject::Algorithm,
            _ => Reject::Malformed,
        })?;
        let c = data.claims;
        let mut roles = c.roles.unwrap_or_default();
        if let Some(r) = c.role {
            if !roles.contains(&r) {
                roles.insert(0, r);
            }
        }
        let id = Arc::new(Identity::new(
            c.sub,
            c.email.as_deref(),
            roles,
            c.jti,
            c.exp,
            IdentityKind::Jwt,
        ));
        self.cache.insert(token, id.clone());
        Ok(id)
    }

    fn lookup(&self, kid: &str) -> Option<(DecodingKey, Algorithm)> {
        self.keys
            .load()
            .by_kid
            .get(kid)
            .map(|k| (k.key.clone(), k.alg))
    }
}
