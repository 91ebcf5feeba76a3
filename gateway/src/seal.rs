//! Sealing what the instances of a cluster share through Redis that must stay
//! secret: an ACME certificate travels with its private key. Whoever can read
//! Redis (a backup, a replica, a misconfigured ACL) must not get the key, and
//! whoever can write it must not make every instance serve a certificate of
//! their choosing.
//!
//! AES-256-GCM (ring) under a key derived with HKDF-SHA256 from the operator's
//! `store.redis.seal_key_env`/`seal_key_file`, a fresh random nonce per value,
//! and the Redis key the value is stored under as associated data, so a sealed
//! value moved to another name does not open either. A value is text:
//! `sealed1:` and the base64 (no padding) of nonce, ciphertext and tag.

use std::fmt;

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

const PREFIX: &str = "sealed1:";
/// Binds the derived key to this use: the same secret configured for
/// something else gives another key.
const SALT: &[u8] = b"galion-gateway cluster seal v1";

/// The derived sealing key. Its `Debug` shows nothing of it: configurations
/// are logged and compared, and this is a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SealKey([u8; 32]);

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// The key for `secret` (the caller checks that it is long enough).
    pub fn derive(secret: &[u8]) -> SealKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(secret);
        let mut key = [0u8; 32];
        // AES-256-GCM's 32 bytes are far under HKDF-SHA256's 8160-byte limit:
        // neither step can fail for this length.
        if let Ok(okm) = prk.expand(&[b"aes-256-gcm"], &AES_256_GCM) {
            let _ = okm.fill(&mut key);
        }
        SealKey(key)
    }

    fn aead(&self) -> Option<LessSafeKey> {
        UnboundKey::new(&AES_256_GCM, &self.0)
            .ok()
            .map(LessSafeKey::new)
    }

    /// `plain` sealed for the name `bound_to`; `None` only if the system's
    /// random source fails.
    pub fn seal(&self, bound_to: &str, plain: &[u8]) -> Option<String> {
        let key = self.aead()?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).ok()?;
        // nonce ‖ ciphertext ‖ tag, sealed in place after the nonce.
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(bound_to.as_bytes()),
                &mut out[NONCE_LEN..],
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        let mut text = String::with_capacity(PREFIX.len() + out.len() * 4 / 3 + 4);
        text.push_str(PREFIX);
        STANDARD_NO_PAD.encode_string(&out, &mut text);
        Some(text)
    }

    /// What [`SealKey::seal`] sealed for `bound_to` under this key. `None` for
    /// anything else: another key or name, a changed byte, a value that was
    /// never sealed.
    pub fn open(&self, bound_to: &str, text: &str) -> Option<Vec<u8>> {
        let mut raw = STANDARD_NO_PAD.decode(text.strip_prefix(PREFIX)?).ok()?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&raw[..NONCE_LEN]).ok()?;
        let plain_len = self
            .aead()?
            .open_in_place(nonce, Aad::from(bound_to.as_bytes()), &mut raw[NONCE_LEN..])
            .ok()?
            .len();
        raw.drain(..NONCE_LEN);
        raw.truncate(plain_len);
        Some(raw)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn sealed_opens_with_the_same_key_and_name_only() {
        let k = SealKey::derive(SECRET);
        let plain = b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI...\n";
        let s = k.seal("galion:gw:acme:cert:galion.app", plain).unwrap();
        assert!(s.starts_with(PREFIX));
        assert!(!s.contains("PRIVATE"), "{s}");
        assert_eq!(
            k.open("galion:gw:acme:cert:galion.app", &s).unwrap(),
            plain.to_vec()
        );
        // The same secret gives the same key (every instance derives its own).
        assert_eq!(
            SealKey::derive(SECRET)
                .open("galion:gw:acme:cert:galion.app", &s)
                .unwrap(),
            plain.to_vec()
        );
        // Another secret, another name: nothing.
        let other = SealKey::derive(b"0123456789abcdef0123456789abcdeX");
        assert!(other.open("galion:gw:acme:cert:galion.app", &s).is_none());
        assert!(k.open("galion:gw:acme:cert:evil.example", &s).is_none());
    }

    #[test]
    fn a_changed_or_unsealed_value_does_not_open() {
        let k = SealKey::derive(SECRET);
        let s = k.seal("n", b"chain and key").unwrap();
        // Every single-character change of the encoded value is refused.
        for i in PREFIX.len()..s.len() {
            let mut b = s.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let t = String::from_utf8(b).unwrap();
            assert!(k.open("n", &t).is_none(), "position {i}");
        }
        for t in [
            "",
            "sealed1:",
            "sealed1:AAAA",
            "{\"chain_pem\":\"x\",\"key_pem\":\"y\"}",
            "sealed2:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(k.open("n", t).is_none(), "{t:?}");
        }
    }

    #[test]
    fn each_seal_uses_a_fresh_nonce() {
        let k = SealKey::derive(SECRET);
        let a = k.seal("n", b"same").unwrap();
        let b = k.seal("n", b"same").unwrap();
        assert_ne!(a, b);
        assert_eq!(k.open("n", &a), k.open("n", &b));
    }

    #[test]
    fn debug_shows_no_key() {
        let k = SealKey::derive(SECRET);
        assert_eq!(format!("{k:?}"), "SealKey(..)");
    }
}
