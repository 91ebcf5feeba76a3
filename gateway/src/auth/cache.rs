//! The verified-token cache: identities by the full token text, until `exp`.
//!
//! Sharded read-write maps: a hit is one hash, one uncontended read lock and an
//! `Arc` clone, with no bookkeeping on the request path. Bounded: a full shard first
//! drops expired entries, then an eighth of its entries.

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

pub struct TokenCache {
    /// Bounded: `max(capacity / SHARDS, 1)` tokens a shard.
    /// foldhash, not SipHash: a token is a few hundred bytes hashed on every
    /// request, and only tokens whose signature was verified are ever
    /// inserted, so a client cannot choose colliding keys.
    map: ShardedMap<Arc<str>, Arc<Identity>, foldhash::fast::RandomState>,
}

impl TokenCache {
    pub fn new(capacity: u64) -> Self {
        TokenCache {
            map: ShardedMap::new(SHARDS, Some(capacity as usize)),
        }
    }

    pub fn get(&self, token: &str) -> Option<Arc<Identity>> {
        self.map.get(token)
    }

    pub fn insert(&self, token: &str, id: Arc<Identity>) {
        // A full shard drops the expired first, then arbitrary ones. The clock is
        // read only then.
        let mut now = None;
        self.map.insert_ranked(Arc::from(token), id, |_, v| {
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
        assert!(c.get("keep").is_some());
        c.forget_jti("revoke-me");
        assert!(c.get("keep").is_none());
        assert!(!c.is_empty());
    }
}
