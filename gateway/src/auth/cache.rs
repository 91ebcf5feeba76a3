//! The verified-token cache: identities by the full token text, until `exp`.
//!
//! Sharded read-write maps: a hit is one hash, one uncontended read lock and an
//! `Arc` clone, with no bookkeeping on the request path. Bounded: a full shard first
//! drops expired entries, then an eighth of its entries.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use super::identity::Identity;

/// Unix seconds now (0 before 1970: a broken clock refuses nothing by itself).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

const SHARDS: usize = 16;

type Shard = RwLock<HashMap<Arc<str>, Arc<Identity>>>;

pub struct TokenCache {
    shards: Vec<Shard>,
    per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
}

impl TokenCache {
    pub fn new(capacity: u64) -> Self {
        let per_shard = ((capacity as usize) / SHARDS).max(1);
        TokenCache {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            per_shard,
            hasher: Default::default(),
        }
    }

    fn shard(&self, token: &str) -> &Shard {
        &self.shards[(self.hasher.hash_one(token) as usize) % SHARDS]
    }

    pub fn get(&self, token: &str) -> Option<Arc<Identity>> {
        let m = self.shard(token).read().unwrap_or_else(|p| p.into_inner());
        m.get(token).cloned()
    }

    pub fn insert(&self, token: &str, id: Arc<Identity>) {
        let mut m = self.shard(token).write().unwrap_or_else(|p| p.into_inner());
        if m.len() >= self.per_shard {
            let now = now_secs();
            m.retain(|_, v| v.exp > now);
            if m.len() >= self.per_shard {
                let victims: Vec<Arc<str>> =
                    m.keys().take(self.per_shard / 8 + 1).cloned().collect();
                for k in victims {
                    m.remove(&k);
                }
            }
        }
        m.insert(Arc::from(token), id);
    }

    /// Drops every cached identity carrying this token id (revocation).
    pub fn forget_jti(&self, jti: &str) {
        for s in &self.shards {
            let mut m = s.write().unwrap_or_else(|p| p.into_inner());
            m.retain(|_, v| v.jti.as_deref() != Some(jti));
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
