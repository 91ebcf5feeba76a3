//! The verified-token cache: identities by the full token text, until `exp`.
//!
//! Sharded read-write maps: a hit is one hash, one uncontended read lock and an
//! `Arc` clone, with no bookkeeping on the request path. Bounded: a full shard first
//! drops expired entries, then an eighth of its entries.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::identity::Identity;
use crate::sharded::ShardedMap;

/// Unix seconds now (0 before 1970: a broken clock refuses nothing by itself).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

const SHARDS: usize = 16;

/// How many bytes at the end of a token are hashed.
const HASHED_TAIL: usize = 32;

/// Hashes a token by its length and its last [`HASHED_TAIL`] bytes (with
/// foldhash), not all of its few hundred: the end of a JWT is its signature,
/// as good as random, and only tokens whose signature was verified are ever
/// inserted, so a client can neither choose nor crowd a bucket. Equality is
/// still on the whole token: the hash only picks where to look.
#[derive(Default, Clone)]
pub struct TailHash(foldhash::fast::RandomState);

pub struct TailHasher(foldhash::fast::FoldHasher<'static>);

impl BuildHasher for TailHash {
    type Hasher = TailHasher;
    fn build_hasher(&self) -> TailHasher {
        TailHasher(self.0.build_hasher())
    }
}

impl Hasher for TailHasher {
    fn finish(&self) -> u64 {
        self.0.finish()
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0
            .write(&bytes[bytes.len().saturating_sub(HASHED_TAIL)..]);
    }
    fn write_usize(&mut self, n: usize) {
        self.0.write_usize(n);
    }
}

pub struct TokenCache {
    /// Bounded: `max(capacity / SHARDS, 1)` tokens a shard. Keyed by bytes, so
    /// a lookup needs no UTF-8 check of the header value first.
    map: ShardedMap<Arc<[u8]>, Arc<Identity>, TailHash>,
}

impl TokenCache {
    pub fn new(capacity: u64) -> Self {
        TokenCache {
            map: ShardedMap::new(SHARDS, Some(capacity as usize)),
        }
    }

    pub fn get(&self, token: &[u8]) -> Option<Arc<Identity>> {
        self.map.get(token)
    }

    pub fn insert(&self, token: &str, id: Arc<Identity>) {
        // A full shard drops the expired first, then arbitrary ones. The clock is
        // read only then.
        let mut now = None;
        self.map
            .insert_ranked(Arc::from(token.as_bytes()), id, |_, v| {
                (v.exp > *now.get_or_insert_with(now_secs)).then_some(0)
            });
    }

    /// Drops every cached identity carrying this token id (revocation).
    pub fn forget_jti(&self, jti: &str) {
        self.map.retain(|_, v| v.jti.as_deref() != Some(jti));
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::IdentityKind;

    fn id(jti: &str, exp: u64) -> Arc<Identity> {
        Arc::new(Identity::new(
            "s".into(),
            None,
            vec![],
            Some(jti.into()),
            exp,
            IdentityKind::Jwt,
        ))
    }

    #[test]
    fn bounded_and_revocable() {
        let c = TokenCache::new(64);
        let far = now_secs() + 3600;
        for i in 0..1000 {
            c.insert(&format!("tok-{i}"), id(&format!("j{i}"), far));
        }
        assert!(c.len() <= 64, "{}", c.len());
        c.insert("keep", id("revoke-me", far));
        assert!(c.get(b"keep").is_some());
        c.forget_jti("revoke-me");
        assert!(c.get(b"keep").is_none());
        assert!(!c.is_empty());
    }

    #[test]
    fn tokens_with_the_same_tail_are_told_apart() {
        // Same length, same hashed tail: the same bucket, different tokens.
        let c = TokenCache::new(64);
        let far = now_secs() + 3600;
        let tail = "s".repeat(HASHED_TAIL);
        let (a, b) = (
            format!("header.alice.{tail}"),
            format!("header.bobby.{tail}"),
        );
        c.insert(&a, id("a", far));
        assert_eq!(
            c.get(a.as_bytes()).and_then(|i| i.jti.clone()).as_deref(),
            Some("a")
        );
        assert!(
            c.get(b.as_bytes()).is_none(),
            "a forged payload must not hit"
        );
        c.insert(&b, id("b", far));
        assert_eq!(
            c.get(b.as_bytes()).and_then(|i| i.jti.clone()).as_deref(),
            Some("b")
        );
        assert_eq!(
            c.get(a.as_bytes()).and_then(|i| i.jti.clone()).as_deref(),
            Some("a")
        );
        // Shorter than the tail: hashed whole.
        c.insert("t", id("t", far));
        assert!(c.get(b"t").is_some());
        assert!(c.get(b"u").is_none());
    }
}
