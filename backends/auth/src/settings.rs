//! galion-auth settings: the common ones plus token lifetimes, the signing
//! algorithm and the key-encryption key protecting private signing keys.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use galion_common::config::{env, env_duration, CommonSettings, ConfigError, FileConfig, RunMode};
use galion_common::secrets::{self, SecretError};

/// Which algorithm access tokens are signed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigningAlg {
    EdDsa,
    /// Shared-secret compatibility mode (`GALION_JWT_HS256_SECRET`).
    Hs256,
}

#[derive(Clone, Debug)]
pub struct AuthSettings {
    pub common: CommonSettings,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub algorithm: SigningAlg,
    /// 32-byte key encrypting the Ed25519 private keys at rest.
    pub key_encryption_key: [u8; 32],
    /// How often the signing keys are re-read from the database (to pick up
    /// `galion-auth rotate-keys` run by another process).
    pub key_reload_interval: Duration,
    /// Base of the links in verification / reset mails.
    pub public_url: String,
    /// Cluster mode: mirror revocations into Redis (see `publish`).
    pub redis_url: Option<String>,
    /// How long a revocation is kept (in the table, the feed and Redis)
    /// after the token's `exp`. Verifiers accept a token until `exp` +
    /// their leeway, so this must exceed every verifier's leeway (gateway,
    /// users, analytics); it is checked against this service's own.
    pub revocation_retention: Duration,
}

/// Default of [`AuthSettings::revocation_retention`]: ten times the default
/// JWT leeway, so a verifier configured a little looser is still covered.
pub const DEFAULT_REVOCATION_RETENTION: Duration = Duration::from_secs(5 * 60);

/// Decodes a 32-byte key given as 64 hex digits or base64 (url or standard).
pub fn decode_key(raw: &str) -> Option<[u8; 32]> {
    let raw = raw.trim();
    let bytes = if raw.len() == 64 && raw.chars().all(|c| c.is_ascii_hexdigit()) {
        hex::decode(raw).ok()?
    } else {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(raw.trim_end_matches('='))
            .or_else(|_| base64::engine::general_purpose::STANDARD.decode(raw))
            .ok()?
    };
    bytes.try_into().ok()
}

impl AuthSettings {
    /// Environment, then the YAML file, then defaults.
    pub fn load(config: Option<&Path>) -> Result<AuthSettings, ConfigError> {
        let file = FileConfig::load(config)?;
        let common = CommonSettings::load("auth", 7001, &file)?;
        let access_ttl = env_duration("GALION_ACCESS_TOKEN_TTL")?
            .or(file.jwt.access_token_ttl)
            .unwrap_or(Duration::from_secs(15 * 60));
        let refresh_ttl = env_duration("GALION_REFRESH_TOKEN_TTL")?
            .or(file.jwt.refresh_token_ttl)
            .unwrap_or(Duration::from_secs(30 * 86400));
        let key_reload_interval = env_duration("GALION_AUTH_KEY_RELOAD_INTERVAL")?
            .or(file.jwt.key_reload_interval)
            .unwrap_or(Duration::from_secs(10));
        let algorithm = match env("GALION_AUTH_JWT_ALG")
            .or_else(|| file.jwt.algorithm.clone())
            .as_deref()
        {
            None | Some("EdDSA") | Some("eddsa") => SigningAlg::EdDsa,
            Some("HS256") | Some("hs256") => SigningAlg::Hs256,
            Some(other) => {
                return Err(ConfigError::Env {
                    name: "GALION_AUTH_JWT_ALG".into(),
                    message: format!("{other:?}: expected EdDSA or HS256"),
                })
            }
        };
        if algorithm == SigningAlg::Hs256 && common.jwt.hs256_secret.is_none() {
            return Err(SecretError::Missing {
                name: "GALION_JWT_HS256_SECRET".into(),
            }
            .into());
        }
        let kek_file = env("GALION_AUTH_KEY_ENCRYPTION_KEY_FILE")
            .map(PathBuf::from)
            .or_else(|| file.jwt.key_encryption_key_file.clone());
        let kek_raw = match secrets::resolve(
            env("GALION_AUTH_KEY_ENCRYPTION_KEY"),
            kek_file.as_deref(),
        )? {
            Some(k) => k,
            None if common.mode == RunMode::Dev => {
                let path = common.data_dir.join("auth-key-encryption-key");
                let (key, created) = secrets::dev_secret(&path)?;
                if created {
                    tracing::warn!(path = %path.display(), "dev mode: generated the signing-key encryption key (set GALION_AUTH_KEY_ENCRYPTION_KEY_FILE in production)");
                }
                key
            }
            None => {
                return Err(SecretError::Missing {
                    name: "GALION_AUTH_KEY_ENCRYPTION_KEY".into(),
                }
                .into())
            }
        };
        let key_encryption_key = decode_key(&kek_raw).ok_or_else(|| ConfigError::Env {
            name: "GALION_AUTH_KEY_ENCRYPTION_KEY".into(),
            message: "must be 32 bytes, as 64 hex digits or base64".into(),
        })?;
        let public_url = env("GALION_PUBLIC_URL").unwrap_or_else(|| "https://galion.app".into());
        let redis_url = env("GALION_REDIS_URL").or_else(|| file.redis_url.clone());
        let revocation_retention =
            env_duration("GALION_REVOCATION_RETENTION")?.unwrap_or(DEFAULT_REVOCATION_RETENTION);
        if revocation_retention <= common.jwt.leeway
            || revocation_retention > Duration::from_secs(30 * 86400)
        {
            return Err(ConfigError::Env {
                name: "GALION_REVOCATION_RETENTION".into(),
                message: format!(
                    "must exceed the JWT leeway ({:?}) and be at most 30 days: a revoked token is accepted again once its revocation is forgotten",
                    common.jwt.leeway
                ),
            });
        }
        Ok(AuthSettings {
            common,
            access_ttl,
            refresh_ttl,
            algorithm,
            key_encryption_key,
            key_reload_interval,
            public_url,
            redis_url,
            revocation_retention,
        })
    }

    /// Defaults for tests.
    pub fn for_tests(database_url: &str, data_dir: &Path) -> AuthSettings {
        AuthSettings {
            common: CommonSettings::for_tests(database_url, data_dir),
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(30 * 86400),
            algorithm: SigningAlg::EdDsa,
            key_encryption_key: [7u8; 32],
            key_reload_interval: Duration::from_millis(200),
            public_url: "https://galion.test".into(),
            redis_url: None,
            revocation_retention: DEFAULT_REVOCATION_RETENTION,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_keys() {
        assert_eq!(decode_key(&"ab".repeat(32)), Some([0xab; 32]));
        let b64 = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        assert_eq!(decode_key(&b64), Some([1; 32]));
        assert_eq!(decode_key("short"), None);
    }
}
