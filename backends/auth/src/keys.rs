//! Signing keys: Ed25519 key pairs generated at first start and by
//! `galion-auth rotate-keys`, stored in `signing_keys` with the private half
//! encrypted (ChaCha20-Poly1305, AAD = kid) under the key-encryption key.
//!
//! The newest unretired key signs. Rotation retires the previous key, which
//! stays in the JWKS for one access-token lifetime (plus leeway) so tokens it
//! signed keep verifying until they expire anyway.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use chrono::{DateTime, Utc};
use galion_common::db::Db;
use galion_common::jwt::{Claims, Jwk, JwkSet, JwtError, JwtVerifier};
use galion_common::{with_db, with_tx};
use jsonwebtoken::{DecodingKey, EncodingKey, Header};
use rand::RngCore;

use crate::settings::{AuthSettings, SigningAlg};

/// PKCS#8 v1 prefix of an Ed25519 private key; followed by the 32-byte seed.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("cannot decrypt signing key {0}: is GALION_AUTH_KEY_ENCRYPTION_KEY the one the key was created with?")]
    Decrypt(String),
    #[error("no usable signing key")]
    NoKey,
    #[error("signing failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    kid: String,
    public_key: String,
    private_key_enc: String,
    retired_at: Option<DateTime<Utc>>,
}

struct Signer {
    kid: String,
    key: EncodingKey,
}

struct Loaded {
    signer: Option<Signer>,
    jwks: JwkSet,
}

/// Current signing key, published keys, and the verifier using them.
pub struct KeyStore {
    db: Db,
    kek: [u8; 32],
    algorithm: SigningAlg,
    hs256: Option<EncodingKey>,
    publish_window: Duration,
    reload_interval: Duration,
    loaded: RwLock<Arc<Loaded>>,
    verifier: JwtVerifier,
    last_reload: tokio::sync::Mutex<Instant>,
}

fn encrypt(kek: &[u8; 32], kid: &str, seed: &[u8; 32]) -> Result<String, KeyError> {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(kek));
    let mut nonce = [0u8; 12];
    rand::rng().fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: seed,
                aad: kid.as_bytes(),
            },
        )
        .map_err(|_| KeyError::Decrypt(kid.to_string()))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    Ok(format!("v1:{}", STANDARD.encode(out)))
}

fn decrypt(kek: &[u8; 32], kid: &str, stored: &str) -> Result<[u8; 32], KeyError> {
    let err = || KeyError::Decrypt(kid.to_string());
    let raw = STANDARD
        .decode(stored.strip_prefix("v1:").ok_or_else(err)?)
        .map_err(|_| err())?;
    if raw.len() < 12 {
        return Err(err());
    }
    let (nonce, ct) = raw.split_at(12);
    let cipher = ChaCha20Poly1305::new(Key::from_slice(kek));
    let seed = cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ct,
                aad: kid.as_bytes(),
            },
        )
        .map_err(|_| err())?;
    seed.try_into().map_err(|_| err())
}

/// Generates a key pair and stores it; returns its kid. Previous keys are
/// retired (kept in the JWKS for the publish window).
pub async fn generate_key(
    db: &Db,
    kek: &[u8; 32],
    retire_previous: bool,
) -> Result<String, KeyError> {
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let public = ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes();
    let now = galion_common::time::now();
    let kid = format!(
        "{}-{}",
        now.format("%Y%m%d%H%M%S"),
        &hex::encode(public)[..8]
    );
    let enc = encrypt(kek, &kid, &seed)?;
    let mut tx = db.begin().await?;
    if retire_previous {
        with_tx!(&mut tx, |c| sqlx::query(
            "UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL"
        )
        .bind(now)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
    }
    with_tx!(&mut tx, |c| {
        sqlx::query(
        "INSERT INTO signing_keys (kid, alg, public_key, private_key_enc, created_at) VALUES ($1, 'EdDSA', $2, $3, $4)"
    )
    .bind(&kid)
    .bind(URL_SAFE_NO_PAD.encode(public))
    .bind(enc)
    .bind(now)
    .execute(c)
    .await.map(|r| r.rows_affected())
    })?;
    tx.commit().await?;
    Ok(kid)
}

impl KeyStore {
    /// Loads the keys, generating the first one if the table is empty.
    pub async fn open(db: Db, settings: &AuthSettings) -> Result<KeyStore, KeyError> {
        let store = KeyStore {
            db,
            kek: settings.key_encryption_key,
            algorithm: settings.algorithm,
            hs256: settings
                .common
                .jwt
                .hs256_secret
                .as_ref()
                .map(|s| EncodingKey::from_secret(s.as_bytes())),
            publish_window: settings.access_ttl
                + settings.common.jwt.leeway
                + Duration::from_secs(60),
            reload_interval: settings.key_reload_interval,
            loaded: RwLock::new(Arc::new(Loaded {
                signer: None,
                jwks: JwkSet::default(),
            })),
            verifier: JwtVerifier::local(&settings.common.jwt),
            last_reload: tokio::sync::Mutex::new(Instant::now()),
        };
        store.reload().await?;
        if store.current().signer.is_none() {
            let kid = generate_key(&store.db, &store.kek, false).await?;
            tracing::info!(kid = %kid, "generated the first signing key");
            store.reload().await?;
        }
        Ok(store)
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-reads the published keys and decrypts the current one.
    pub async fn reload(&self) -> Result<(), KeyError> {
        let cutoff = galion_common::time::now()
            - chrono::Duration::from_std(self.publish_window).unwrap_or(chrono::Duration::hours(1));
        let rows = with_db!(&self.db, |p| sqlx::query_as::<_, KeyRow>(
            "SELECT kid, public_key, private_key_enc, retired_at FROM signing_keys \
             WHERE retired_at IS NULL OR retired_at > $1 ORDER BY created_at DESC, kid DESC"
        )
        .bind(cutoff)
        .fetch_all(p)
        .await)?;
        let mut signer = None;
        let mut jwks = JwkSet::default();
        let mut decoding = HashMap::new();
        for row in &rows {
            if signer.is_none() && row.retired_at.is_none() {
                let seed = decrypt(&self.kek, &row.kid, &row.private_key_enc)?;
                let mut der = ED25519_PKCS8_PREFIX.to_vec();
                der.extend_from_slice(&seed);
                signer = Some(Signer {
                    kid: row.kid.clone(),
                    key: EncodingKey::from_ed_der(&der),
                });
            }
            if let Ok(key) = DecodingKey::from_ed_components(&row.public_key) {
                decoding.insert(row.kid.clone(), key);
            }
            jwks.keys.push(Jwk {
                kty: "OKP".into(),
                crv: Some("Ed25519".into()),
                x: Some(row.public_key.clone()),
                kid: Some(row.kid.clone()),
                alg: Some("EdDSA".into()),
                use_: Some("sig".into()),
            });
        }
        self.verifier.set_keys(decoding);
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Loaded { signer, jwks });
        Ok(())
    }

    /// Reloads unless that happened within the reload interval.
    pub async fn reload_if_due(&self) -> bool {
        let mut last = self.last_reload.lock().await;
        if last.elapsed() < self.reload_interval {
            return false;
        }
        *last = Instant::now();
        match self.reload().await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "cannot reload signing keys");
                false
            }
        }
    }

    /// The JWKS document.
    pub fn jwks(&self) -> JwkSet {
        self.current().jwks.clone()
    }

    /// The kid new tokens are signed with (None in HS256 mode).
    pub fn current_kid(&self) -> Option<String> {
        match self.algorithm {
            SigningAlg::Hs256 => None,
            SigningAlg::EdDsa => self.current().signer.as_ref().map(|s| s.kid.clone()),
        }
    }

    /// Signs access-token claims with the current key.
    pub fn sign(&self, claims: &Claims) -> Result<String, KeyError> {
        match (self.algorithm, &self.hs256) {
            (SigningAlg::Hs256, Some(key)) => Ok(jsonwebtoken::encode(
                &Header::new(jsonwebtoken::Algorithm::HS256),
                claims,
                key,
            )?),
            (SigningAlg::Hs256, None) => Err(KeyError::NoKey),
            (SigningAlg::EdDsa, _) => {
                let loaded = self.current();
                let signer = loaded.signer.as_ref().ok_or(KeyError::NoKey)?;
                let mut header = Header::new(jsonwebtoken::Algorithm::EdDSA);
                header.kid = Some(signer.kid.clone());
                Ok(jsonwebtoken::encode(&header, claims, &signer.key)?)
            }
        }
    }

    /// Verifies a token issued here; an unknown kid triggers a (rate-limited)
    /// reload in case another process rotated the keys.
    pub async fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        match self.verifier.verify(token).await {
            Err(JwtError::UnknownKid) => {
                // Retry even if another request did the reload meanwhile.
                self.reload_if_due().await;
                self.verifier.verify(token).await
            }
            other => other,
        }
    }

    /// Periodic reload so a rotation by `galion-auth rotate-keys` (another
    /// process) is picked up without a restart.
    pub fn spawn_reloader(self: &Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let store = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(store.reload_interval) => {}
                }
                if let Err(e) = store.reload().await {
                    tracing::warn!(error = %e, "periodic signing-key reload failed");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn encryption_round_trips_and_binds_the_kid() {
        let kek = [3u8; 32];
        let enc = encrypt(&kek, "k1", &[9u8; 32]).unwrap();
        assert_eq!(decrypt(&kek, "k1", &enc).unwrap(), [9u8; 32]);
        assert!(decrypt(&kek, "k2", &enc).is_err());
        assert!(decrypt(&[4u8; 32], "k1", &enc).is_err());
    }
}
