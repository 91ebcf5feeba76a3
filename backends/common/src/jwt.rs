//! Access-token claims and verification against galion-auth's JWKS.
//!
//! Algorithms are pinned per key: EdDSA tokens are checked only against
//! Ed25519 keys found by `kid`; HS256 tokens only against the configured
//! shared secret (and refused when none is configured). `alg: none` and
//! everything else is refused. An unknown `kid` triggers at most one JWKS
//! refetch per interval, so garbage tokens cannot hammer auth.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

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
        }
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

    /// Verifies signature, algorithm, `exp`/`nbf` (with leeway), `iss` and `aud`.
    pub async fn verify(&self, token: &str) -> Result<Claims, JwtError> {
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
