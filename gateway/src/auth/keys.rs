//! Verification keys: a JWKS (fetched or from a file) and an optional HS256 secret.
//! Every key is pinned to one algorithm, so a token can never pick how it is checked.

use std::collections::HashMap;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};

type PemParser = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;

pub struct PinnedKey {
    pub key: DecodingKey,
    pub alg: Algorithm,
}

#[derive(Default)]
pub struct KeySet {
    pub by_kid: HashMap<String, PinnedKey>,
}

/// The algorithm a JWK may be used with: its `alg` if given, else implied by the key
/// type. Only the asymmetric algorithms of the spec are accepted from a JWKS.
fn pinned_alg(jwk: &Jwk) -> Option<Algorithm> {
    let implied = match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(implied),
        Some(KeyAlgorithm::EdDSA) if implied == Algorithm::EdDSA => Some(Algorithm::EdDSA),
        Some(KeyAlgorithm::RS256) if implied == Algorithm::RS256 => Some(Algorithm::RS256),
        Some(KeyAlgorithm::ES256) if implied == Algorithm::ES256 => Some(Algorithm::ES256),
        Some(_) => None,
    }
}

impl KeySet {
    /// Parses a JWKS document; keys without `kid` or of an unsupported kind are
    /// skipped (and counted in the returned number).
    pub fn from_jwks(json: &[u8]) -> Result<(KeySet, usize), String> {
        let set: JwkSet = serde_json::from_slice(json).map_err(|e| format!("invalid JWKS: {e}"))?;
        let mut by_kid = HashMap::new();
        let mut skipped = 0;
        for jwk in &set.keys {
            let (Some(kid), Some(alg)) = (jwk.common.key_id.clone(), pinned_alg(jwk)) else {
                skipped += 1;
                continue;
            };
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => {
                    by_kid.insert(kid, PinnedKey { key, alg });
                }
                Err(_) => skipped += 1,
            }
        }
        Ok((KeySet { by_kid }, skipped))
    }

    /// A PEM public key file pinned to the algorithm its type implies, under `kid`.
    pub fn from_pem(pem: &[u8], kid: &str) -> Result<KeySet, String> {
        let text = String::from_utf8_lossy(pem);
        let attempts: [(Algorithm, PemParser); 3] = [
            (Algorithm::EdDSA, DecodingKey::from_ed_pem),
            (Algorithm::ES256, DecodingKey::from_ec_pem),
            (Algorithm::RS256, DecodingKey::from_rsa_pem),
        ];
        for (alg, parse) in attempts {
            if let Ok(key) = parse(text.as_bytes()) {
                let mut by_kid = HashMap::new();
                by_kid.insert(kid.to_owned(), PinnedKey { key, alg });
                return Ok(KeySet { by_kid });
            }
        }
        Err("not an Ed25519, P-256 or RSA public key in PEM".into())
    }

    pub fn merge(mut self, other: KeySet) -> KeySet {
        self.by_kid.extend(other.by_kid);
        self
    }

    pub fn kids(&self) -> Vec<String> {
        let mut k: Vec<String> = self.by_kid.keys().cloned().collect();
        k.sort();
        k
    }
}
