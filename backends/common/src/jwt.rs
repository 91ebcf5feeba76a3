//! Access-token claims and verification against galion-auth's JWKS.
//!
//! Algorithms are pinned per key: EdDSA tokens are checked only against
//! Ed25519 keys found by `kid`; HS256 tokens only against the configured
//! shared secret (and refused when none is configured). `alg: none` and
//! everything else is refused. An unknown `kid` triggers at most one JWKS
//! refetch per interval, so garbage tokens cannot hammer auth.
//!
//! A service without access to galion-auth's database (analytics) can also
//! refuse revoked tokens: [`JwtVerifier::watch_revocations`] polls auth's
//! `/revocations` feed by sequence number in the background, like the
//! gateway does, and keeps each revoked jti until `exp` + leeway, the last
//! instant the token would otherwise verify.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auth::ServiceToken;
use crate::config::JwtSettings;

/// Claims of a Galion access token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub email: String,
    pub role: String,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
}

impl Claims {
    pub fn user_id(&self) -> Option<Uuid> {
        Uuid::parse_str(&self.sub).ok()
    }

    pub fn is_admin(&self) -> bool {
        self.role == "admin"
    }
}

/// One entry of a JWKS document (only OKP/Ed25519 is produced).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

impl JwkSet {
    /// The Ed25519 verification keys by `kid`; other key types are ignored.
    pub fn ed25519_keys(&self) -> HashMap<String, DecodingKey> {
        self.keys
            .iter()
            .filter(|k| k.kty == "OKP" && k.crv.as_deref() == Some("Ed25519"))
            .filter(|k| k.alg.as_deref().is_none_or(|a| a == "EdDSA"))
            .filter_map(|k| {
                let kid = k.kid.clone()?;
                let key = DecodingKey::from_ed_components(k.x.as_deref()?).ok()?;
                Some((kid, key))
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("malformed token")]
    Malformed,
    #[error("algorithm not accepted")]
    Algorithm,
    #[error("unknown key id")]
    UnknownKid,
    #[error("token revoked")]
    Revoked,
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
}

/// Verifies access tokens; keys come from a JWKS URL or are installed by
/// the owner (galion-auth verifies with its own keys).
pub struct JwtVerifier {
    settings: JwtSettings,
    jwks_url: Option<String>,
    http: reqwest::Client,
    keys: RwLock<Arc<HashMap<String, DecodingKey>>>,
    /// When the JWKS was last fetched, and whether that worked.
    last_fetch: tokio::sync::Mutex<Option<(Instant, bool)>>,
    refetch_interval: Duration,
    hs256: Option<DecodingKey>,
    revocations: Option<Arc<RevokedJtis>>,
}

impl JwtVerifier {
    /// A verifier that fetches `{auth_url}/.well-known/jwks.json`.
    pub fn remote(
        settings: &JwtSettings,
        auth_url: &str,
        refetch_interval: Duration,
    ) -> JwtVerifier {
        let url = format!("{}/.well-known/jwks.json", auth_url.trim_end_matches('/'));
        Self::build(settings, Some(url), refetch_interval)
    }

    /// A verifier whose keys are set with [`JwtVerifier::set_keys`].
    pub fn local(settings: &JwtSettings) -> JwtVerifier {
        Self::build(settings, None, Duration::from_secs(1))
    }

    fn build(
        settings: &JwtSettings,
        jwks_url: Option<String>,
        refetch_interval: Duration,
    ) -> JwtVerifier {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        JwtVerifier {
            settings: settings.clone(),
            jwks_url,
            http,
            keys: RwLock::new(Arc::new(HashMap::new())),
            last_fetch: tokio::sync::Mutex::new(None),
            refetch_interval,
            hs256: settings
                .hs256_secret
                .as_ref()
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            revocations: None,
        }
    }

    /// Also refuse tokens revoked at galion-auth: a background task polls
    /// `{auth_url}/revocations` with the service token every `interval`
    /// until `shutdown`. While the feed is unreachable the revocations
    /// already learned keep being enforced.
    pub fn watch_revocations(
        &mut self,
        auth_url: &str,
        token: ServiceToken,
        interval: Duration,
        shutdown: CancellationToken,
    ) {
        let set = Arc::new(RevokedJtis::new(self.settings.leeway));
        self.revocations = Some(set.clone());
        let url = format!("{}/revocations", auth_url.trim_end_matches('/'));
        let http = self.http.clone();
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                match set.poll(&http, &url, &token).await {
                    Ok(_) if failing => {
                        failing = false;
                        tracing::info!(url = %url, "revocation feed reachable again");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if !failing {
                            tracing::warn!(url = %url, error = %e, "revocation feed unreachable; known revocations still enforced");
                        }
                        failing = true;
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        });
    }

    pub fn set_keys(&self, keys: HashMap<String, DecodingKey>) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
    }

    fn key(&self, kid: &str) -> Option<DecodingKey> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(kid)
            .cloned()
    }

    /// Fetches the JWKS unless a fetch happened within the interval.
    /// Returns whether the key set was refreshed.
    pub async fn refresh_if_due(&self) -> bool {
        let Some(url) = &self.jwks_url else {
            return false;
        };
        let mut last = self.last_fetch.lock().await;
        // After a failed fetch (auth starting up, say) retry sooner.
        let due = match *last {
            None => true,
            Some((at, true)) => at.elapsed() >= self.refetch_interval,
            Some((at, false)) => at.elapsed() >= self.refetch_interval.min(Duration::from_secs(1)),
        };
        if !due {
            return false;
        }
        match self.fetch(url).await {
            Ok(set) => {
                let keys = set.ed25519_keys();
                tracing::debug!(count = keys.len(), "JWKS refreshed");
                self.set_keys(keys);
                *last = Some((Instant::now(), true));
                true
            }
            Err(e) => {
                tracing::warn!(url = %url, error = %e, "cannot fetch JWKS");
                *last = Some((Instant::now(), false));
                false
            }
        }
    }

    async fn fetch(&self, url: &str) -> Result<JwkSet, reqwest::Error> {
        self.http
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .json::<JwkSet>()
            .await
    }

    /// Verifies signature, algorithm, `exp`/`nbf` (with leeway), `iss` and
    /// `aud`, and (with [`JwtVerifier::watch_revocations`]) that the token
    /// was not revoked.
    pub async fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        let claims = self.verify_signed(token).await?;
        if self
            .revocations
            .as_ref()
            .is_some_and(|r| r.contains(&claims.jti))
        {
            return Err(JwtError::Revoked);
        }
        Ok(claims)
    }

    async fn verify_signed(&self, token: &str) -> Result<Claims, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
        match header.alg {
            Algorithm::HS256 => {
                let key = self.hs256.as_ref().ok_or(JwtError::Algorithm)?;
                self.decode(token, key, Algorithm::HS256)
            }
            Algorithm::EdDSA => {
                let kid = header.kid.ok_or(JwtError::UnknownKid)?;
                if let Some(key) = self.key(&kid) {
                    return self.decode(token, &key, Algorithm::EdDSA);
                }
                // Look again even when this call did not fetch: a concurrent
                // request may just have refreshed the set while we waited.
                self.refresh_if_due().await;
                match self.key(&kid) {
                    Some(key) => self.decode(token, &key, Algorithm::EdDSA),
                    None => Err(JwtError::UnknownKid),
                }
            }
            _ => Err(JwtError::Algorithm),
        }
    }

    fn decode(&self, token: &str, key: &DecodingKey, alg: Algorithm) -> Result<Claims, JwtError> {
        let mut v = Validation::new(alg);
        v.leeway = self.settings.leeway.as_secs();
        v.validate_nbf = true;
        v.set_issuer(&[&self.settings.issuer]);
        v.set_audience(&[&self.settings.audience]);
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        Ok(jsonwebtoken::decode::<Claims>(token, key, &v)?.claims)
    }
}

/// Pages read in one poll at most (the feed pages by 1000).
const MAX_FEED_PAGES: usize = 50;

#[derive(Deserialize)]
struct Feed {
    revocations: Vec<FeedEntry>,
    cursor: i64,
    #[serde(default)]
    more: bool,
}

#[derive(Deserialize)]
struct FeedEntry {
    jti: String,
    exp: i64,
}

/// Revoked jtis by `exp`, and the feed's cursor.
struct RevokedJtis {
    leeway: i64,
    state: RwLock<(HashMap<String, i64>, i64)>,
}

impl RevokedJtis {
    fn new(leeway: Duration) -> Self {
        RevokedJtis {
            leeway: i64::try_from(leeway.as_secs()).unwrap_or(i64::MAX),
            state: RwLock::new((HashMap::new(), 0)),
        }
    }

    fn contains(&self, jti: &str) -> bool {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .contains_key(jti)
    }

    /// A token expiring at `exp` still verifies at `now` (with the leeway),
    /// so its revocation must be kept.
    fn in_force(&self, exp: i64, now: i64) -> bool {
        exp.saturating_add(self.leeway) > now
    }

    /// Reads the feed from the cursor until it says nothing more is waiting;
    /// every page is applied as it comes, so an error loses nothing.
    async fn poll(
        &self,
        http: &reqwest::Client,
        url: &str,
        token: &ServiceToken,
    ) -> Result<(), reqwest::Error> {
        for _ in 0..MAX_FEED_PAGES {
            let after = self.state.read().unwrap_or_else(|e| e.into_inner()).1;
            let feed: Feed = http
                .get(url)
                .query(&[("after_seq", after)])
                .bearer_auth(token.as_str())
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let more = feed.more;
            self.apply(feed, chrono::Utc::now().timestamp());
            if !more {
                break;
            }
        }
        Ok(())
    }

    fn apply(&self, feed: Feed, now: i64) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.0.retain(|_, exp| self.in_force(*exp, now));
        for e in feed.revocations {
            if self.in_force(e.exp, now) {
                state.0.insert(e.jti, e.exp);
            }
        }
        state.1 = feed.cursor;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(entries: &[(&str, i64)], cursor: i64) -> Feed {
        Feed {
            revocations: entries
                .iter()
                .map(|(j, e)| FeedEntry {
                    jti: (*j).to_owned(),
                    exp: *e,
                })
                .collect(),
            cursor,
            more: false,
        }
    }

    #[test]
    fn revoked_jtis_are_kept_until_exp_plus_leeway() {
        let set = RevokedJtis::new(Duration::from_secs(30));
        let exp = 1_000_000;
        set.apply(feed(&[("a", exp)], 7), exp + 5);
        assert!(set.contains("a"));
        set.apply(feed(&[], 7), exp + 29);
        assert!(set.contains("a"), "still verifiable within the leeway");
        set.apply(feed(&[("b", exp)], 8), exp + 30);
        assert!(!set.contains("a"));
        assert!(!set.contains("b"), "no longer verifiable: nothing to keep");
        assert_eq!(set.state.read().map(|s| s.1).unwrap_or(0), 8);
    }
}
