//! The bounded in-memory cache storage behind pingora-cache.
//!
//! Complete objects only (a miss is buffered until its end, then published), in
//! sharded maps keyed by the 128-bit cache hash. The byte budget is enforced with
//! pingora's LRU eviction manager: every admitted object is weighed, and the
//! objects it evicts are purged from here. Objects over `max_object_size` are
//! never admitted (pingora stops writing them; the client still gets the body).

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::cache::key::{CacheHashKey, CacheKey, CompactCacheKey, HashBinary};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheMeta, Storage};
use pingora::Result;

const SHARDS: usize = 32;

struct Entry {
    meta: (Vec<u8>, Vec<u8>),
    body: Bytes,
    /// The cache key's primary text (host + path + query [+ identity]), for purges.
    primary: Arc<str>,
    compact: CompactCacheKey,
}

type Shard = RwLock<HashMap<HashBinary, Arc<Entry>>>;

pub struct MemStore {
    shards: Box<[Shard]>,
    size: AtomicUsize,
}

impl Default for MemStore {
    fn default() -> Self {
        MemStore {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            size: AtomicUsize::new(0),
        }
    }
}

impl MemStore {
    fn shard(&self, h: &HashBinary) -> &Shard {
        &self.shards[h[0] as usize % SHARDS]
    }

    /// Bytes of cached bodies (and their headers) currently held.
    pub fn size(&self) -> usize {
        self.size.load(Ordering::Relaxed)
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

    fn remove(&self, h: &HashBinary) -> Option<Arc<Entry>> {
        let e = self
            .shard(h)
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(h)?;
        self.size.fetch_sub(weight(&e), Ordering::Relaxed);
        Some(e)
    }

    /// Removes every object whose URL (`host/path?query`) matches: exactly, or as a
    /// prefix. Returns the compact keys removed (for the eviction manager).
    pub fn purge_matching(&self, url: &str, prefix: bool) -> Vec<CompactCacheKey> {
        let mut hits = Vec::new();
        for s in self.shards.iter() {
            let m = s.read().unwrap_or_else(|p| p.into_inner());
            for (h, e) in m.iter() {
                // The identity of private entries follows a NUL: not part of the URL.
                let entry_url = e.primary.split('\0').next().unwrap_or("");
                let matched = if prefix {
                    entry_url.starts_with(url)
                } else {
                    entry_url == url
                };
                if matched {
                    hits.push(*h);
                }
            }
        }
        hits.iter()
            .filter_map(|h| self.remove(h))
            .map(|e| e.compact.clone())
            .collect()
    }
}

fn weight(e: &Entry) -> usize {
    e.body.len() + e.meta.0.len() + e.meta.1.len()
}

struct Hit {
    body: Bytes,
    done: bool,
    range: (usize, usize),
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.range.0..self.range.1)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.body.len();
        let end = end.unwrap_or(len).min(len);
        if start > end {
            return pingora::Error::e_explain(
                pingora::ErrorType::InternalError,
                "seek start past the end",
            );
        }
        self.range = (start, end);
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

struct Miss {
    store: &'static MemStore,
    hash: HashBinary,
    meta: (Vec<u8>, Vec<u8>),
    body: BytesMut,
    primary: Arc<str>,
    compact: CompactCacheKey,
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let entry = Arc::new(Entry {
            meta: self.meta,
            body: self.body.freeze(),
            primary: self.primary,
            compact: self.compact,
        });
        let w = weight(&entry);
        let old = self
            .store
            .shard(&self.hash)
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.hash, entry);
        self.store.size.fetch_add(w, Ordering::Relaxed);
        if let Some(old) = old {
            self.store.size.fetch_sub(weight(&old), Ordering::Relaxed);
        }
        Ok(MissFinishType::Created(w))
    }
}

#[async_trait]
impl Storage for MemStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let h = key.combined_bin();
        let Some(e) = self
            .shard(&h)
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&h)
            .cloned()
        else {
            return Ok(None);
        };
        let meta = CacheMeta::deserialize(&e.meta.0, &e.meta.1)?;
        let len = e.body.len();
        Ok(Some((
            meta,
            Box::new(Hit {
                body: e.body.clone(),
                done: false,
                range: (0, len),
            }),
        )))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        Ok(Box::new(Miss {
            store: self,
            hash: key.combined_bin(),
            meta: meta.serialize()?,
            body: BytesMut::new(),
            primary: String::from_utf8_lossy(key.primary_key()).into(),
            compact: key.to_compact(),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let h = target.key().combined_bin();
        Ok(match self.remove(&h) {
            Some(_) => PurgeOutcome::Purged(None),
            None => PurgeOutcome::NotFound,
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let h = key.combined_bin();
        let serialized = meta.serialize()?;
        let mut m = self.shard(&h).write().unwrap_or_else(|p| p.into_inner());
        let Some(old) = m.get(&h).cloned() else {
            return Ok(false);
        };
        let updated = Arc::new(Entry {
            meta: serialized,
            body: old.body.clone(),
            primary: old.primary.clone(),
            compact: old.compact.clone(),
        });
        let (before, after) = (weight(&old), weight(&updated));
        m.insert(h, updated);
        self.size.fetch_add(after, Ordering::Relaxed);
        self.size.fetch_sub(before, Ordering::Relaxed);
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}
