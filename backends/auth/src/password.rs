//! Password rules and argon2id hashing (OWASP parameters: m = 19 MiB, t = 2,
//! p = 1). Hashing runs on the blocking pool behind a semaphore so a burst of
//! logins cannot take all memory (each hash holds 19 MiB).

use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use galion_common::ApiError;
use rand::RngCore;
use tokio::sync::Semaphore;

const MEMORY_KIB: u32 = 19_456;
const ITERATIONS: u32 = 2;
const PARALLELISM: u32 = 1;
const MIN_LEN: usize = 10;
/// Bounds the work an attacker can request per login.
const MAX_BYTES: usize = 1024;

fn argon2() -> Result<Argon2<'static>, ApiError> {
    let params =
        Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None).map_err(ApiError::internal)?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Password policy: at least 10 characters and not the email address.
pub fn check_strength(password: &str, email: &str) -> Result<(), ApiError> {
    if password.chars().count() < MIN_LEN {
        return Err(ApiError::Validation(format!(
            "password must be at least {MIN_LEN} characters"
        )));
    }
    if password.len() > MAX_BYTES {
        return Err(ApiError::Validation(format!(
            "password must be at most {MAX_BYTES} bytes"
        )));
    }
    if password.trim().eq_ignore_ascii_case(email)
        || password.to_lowercase() == email.to_lowercase()
    {
        return Err(ApiError::Validation(
            "password must not be the email address".into(),
        ));
    }
    Ok(())
}

/// Hashes and verifies off the async threads.
#[derive(Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
}

impl Hasher {
    pub fn new() -> Hasher {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Hasher {
            permits: Arc::new(Semaphore::new(cpus * 2)),
        }
    }

    /// A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`).
    pub async fn hash(&self, password: &str) -> Result<String, ApiError> {
        let _permit = self.permits.acquire().await.map_err(ApiError::internal)?;
        let password = password.to_string();
        tokio::task::spawn_blocking(move || {
            let mut salt = [0u8; 16];
            rand::rng().fill_bytes(&mut salt);
            let salt = SaltString::encode_b64(&salt).map_err(ApiError::internal)?;
            argon2()?
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(ApiError::internal)
        })
        .await
        .map_err(ApiError::internal)?
    }

    /// Verifies against `hash`, or against a dummy hash when the account
    /// does not exist so both cases cost the same time. Returns false for
    /// the dummy.
    pub async fn verify(&self, password: &str, hash: Option<&str>) -> Result<bool, ApiError> {
        if password.len() > MAX_BYTES {
            return Ok(false);
        }
        let _permit = self.permits.acquire().await.map_err(ApiError::internal)?;
        let real = hash.is_some();
        let hash = match hash {
            Some(h) => h.to_string(),
            None => dummy_hash()?,
        };
        let password = password.to_string();
        let ok = tokio::task::spawn_blocking(move || {
            let parsed = PasswordHash::new(&hash).map_err(ApiError::internal)?;
            Ok::<bool, ApiError>(
                argon2()?
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok(),
            )
        })
        .await
        .map_err(ApiError::internal)??;
        Ok(ok && real)
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

/// A hash of a random password with the production parameters, computed once.
fn dummy_hash() -> Result<String, ApiError> {
    static DUMMY: OnceLock<Option<String>> = OnceLock::new();
    DUMMY
        .get_or_init(|| {
            let mut salt = [0u8; 16];
            rand::rng().fill_bytes(&mut salt);
            let salt = SaltString::encode_b64(&salt).ok()?;
            let pw = galion_common::secrets::random_token();
            argon2()
                .ok()?
                .hash_password(pw.as_bytes(), &salt)
                .ok()
                .map(|h| h.to_string())
        })
        .clone()
        .ok_or_else(|| ApiError::internal("cannot compute the dummy password hash"))
}

/// Computes the dummy hash ahead of the first login.
pub fn warm_up() {
    let _ = dummy_hash();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn strength_rules() {
        assert!(check_strength("short", "a@b.co").is_err());
        assert!(check_strength("ann@example.com", "ann@example.com").is_err());
        assert!(check_strength("correct horse battery", "ann@example.com").is_ok());
    }

    #[tokio::test]
    async fn hashes_with_owasp_parameters() {
        let h = Hasher::new();
        let hash = h.hash("correct horse battery").await.unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(h
            .verify("correct horse battery", Some(&hash))
            .await
            .unwrap());
        assert!(!h.verify("wrong horse battery", Some(&hash)).await.unwrap());
        assert!(!h.verify("correct horse battery", None).await.unwrap());
    }
}
