//! The bounded in-memory cache storage behind pingora-cache.
//!
//! Complete objects only (a miss is buffered until its end, then published), in
//! sharded maps keyed by the 128-bit cache hash. Metadata is kept decoded:
//! pingora's serialized form compresses the response header with zstd, and
//! decoding it on every hit was the largest single cost of a cache hit. The byte budget is enforced with
//! pingora's LRU eviction manager: every admitted object is weighed, and the
//! objects it evicts are purged from here. Objects over `max_object_size` are
//! never admitted (pingora stops writing them; the client still gets the body).

use std::any::Any;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::cache::eviction::{CacheEntryKey, EvictionManager};
use pingora::cache::key::{CacheHashKey, CacheKey, CompactCacheKey, HashBinary};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheMeta, Storage};
use pingora::http::ResponseHeader;
use pingora::Result;

use crate::sharded::{IdentityHasher, ShardedMap};

const SHARDS: usize = 32;

/// What a `CacheMeta` holds, decoded.
struct Meta {
    fresh_until: SystemTime,
    created: SystemTime,
    /// Reference point for age and freshness when it is not `created` (after a
    /// revalidation).
    epoch: Option<SystemTime>,
    stale_while_revalidate: u32,
    stale_if_error: u32,
    variance: Option<HashBinary>,
    /// Without a header-case map: cheaper to clone and to write on every hit.
    header: ResponseHeader,
    /// `header` as an HTTP/1.1 head, for transports that write bytes: set
    /// when the object may be answered as it is ([`MemStore::fresh_hit`]):
    /// it has a `Content-Length` and no `Vary`.
    wire: Option<Bytes>,
}

impl Meta {
    fn of(m: &CacheMeta) -> Result<Meta> {
        // A revalidation stamps `updated` on the meta we built (whose epoch was an
        // override), so the later of the two is the current reference point.
        let epoch = m.updated().max(m.epoch());
        let mut header = m.response_header_copy();
        crate::head::edit_response(&mut header, 0, |_| Ok(()))?;
        let wire = wire(&header);
        Ok(Meta {
            fresh_until: m.fresh_until(),
            created: m.created(),
            epoch: (epoch != m.created()).then_some(epoch),
            stale_while_revalidate: m.stale_while_revalidate_sec(),
            stale_if_error: m.stale_if_error_sec(),
            variance: m.variance(),
            header,
            wire,
        })
    }

    /// Pingora's `provenance` has no public setter and is not kept: it becomes
    /// `created`. Pingora uses it only to refuse variants older than a refreshed
    /// primary object, so the loss can make it refetch a variant, never serve a
    /// wrong one.
    fn to_cache_meta(&self) -> CacheMeta {
        let mut m = CacheMeta::new(
            self.fresh_until,
            self.created,
            self.stale_while_revalidate,
            self.stale_if_error,
            self.header.clone(),
        );
        if let Some(v) = self.variance {
            m.set_variance(v);
        }
        if let Some(e) = self.epoch {
            m.set_epoch_override(e);
        }
        m
    }

    /// Approximate bytes held: the header as it is written (twice when it is
    /// also kept as bytes), plus the fixed part.
    fn weight(&self) -> usize {
        let h: usize = self
            .header
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        h + self.wire.as_ref().map_or(0, Bytes::len) + std::mem::size_of::<Meta>()
    }
}

/// The head of an object that may be answered as it is, as HTTP/1.1 bytes:
/// status line, the stored fields in order, blank line.
fn wire(header: &ResponseHeader) -> Option<Bytes> {
    let h = &header.headers;
    if !h.contains_key(http::header::CONTENT_LENGTH) || h.contains_key(http::header::VARY) {
        return None;
    }
    let mut out = Vec::with_capacity(64 + h.len() * 32);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(header.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(header.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (k, v) in h {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Some(out.into())
}

struct Entry {
    meta: Meta,
    body: Bytes,
    /// The cache key's primary text (host + path + query [+ identity]), for purges.
    primary: Arc<str>,
    compact: CompactCacheKey,
}

pub struct MemStore {
    /// Not bounded by count: the eviction manager keeps the byte budget. Keys
    /// are keyed object hashes (`cache::object_hash`), uniform already: not
    /// hashed again.
    objects: ShardedMap<HashBinary, Arc<Entry>, BuildHasherDefault<IdentityHasher>>,
    size: AtomicUsize,
}

impl Default for MemStore {
    fn default() -> Self {
        MemStore {
            objects: ShardedMap::new(SHARDS, None),
            size: AtomicUsize::new(0),
        }
    }
}

impl MemStore {
    /// Bytes of cached bodies (and their headers) currently held.
    pub fn size(&self) -> usize {
        self.size.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    fn remove(&self, h: &HashBinary) -> Option<Arc<Entry>> {
        let e = self.objects.remove(h)?;
        self.size.fetch_sub(weight(&e), Ordering::Relaxed);
        Some(e)
    }

    /// Removes every object whose URL (`host/path?query`) matches: exactly, or as a
    /// prefix. Returns the compact keys removed (for the eviction manager).
    pub fn purge_matching(&self, url: &str, prefix: bool) -> Vec<CompactCacheKey> {
        let mut hits = Vec::new();
        self.objects.for_each(|h, e| {
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
        });
        hits.iter()
            .filter_map(|h| self.remove(h))
            .map(|e| e.compact.clone())
            .collect()
    }
}

/// A stored response fresh enough to be served as it is (see [`MemStore::fresh_hit`]).
pub struct FreshHit {
    entry: Arc<Entry>,
    /// Seconds since the object was stored or last revalidated (`Age`).
    pub age: u64,
}

impl FreshHit {
    /// The stored head, for a transport that writes a `ResponseHeader`.
    pub fn header(&self) -> &ResponseHeader {
        &self.entry.meta.header
    }

    /// The stored head as HTTP/1.1 bytes, for a transport that writes bytes.
    pub fn wire(&self) -> &Bytes {
        // `fresh_hit` returns only entries that have one.
        static EMPTY: Bytes = Bytes::from_static(b"");
        self.entry.meta.wire.as_ref().unwrap_or(&EMPTY)
    }

    pub fn body(&self) -> &Bytes {
        &self.entry.body
    }
}

impl MemStore {
    /// The object under `key` if it is fresh at `now`, has no variants, no
    /// `Vary` and a `Content-Length`: the only objects the gateway answers
    /// without pingora-cache's hit path (which handles stale, revalidated
    /// and varying ones). The hit counts as an access for the eviction
    /// manager, as pingora's own hit does.
    pub fn fresh_hit(
        &self,
        key: &CacheKey,
        now: SystemTime,
        eviction: &(dyn EvictionManager + Sync),
    ) -> Option<FreshHit> {
        let e = self.objects.get(&key.combined_bin())?;
        let m = &e.meta;
        if m.variance.is_some() || m.wire.is_none() || m.fresh_until < now {
            return None;
        }
        let entry = CacheEntryKey::key_only(e.compact.clone());
        eviction.access(&entry, e.body.len(), m.fresh_until);
        let epoch = m.epoch.unwrap_or(m.created);
        let age = now.duration_since(epoch).map_or(0, |d| d.as_secs());
        Some(FreshHit { entry: e, age })
    }
}

fn weight(e: &Entry) -> usize {
    e.body.len() + e.meta.weight()
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
    meta: Meta,
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
        let old = self.store.objects.insert(self.hash, entry);
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
        let Some(e) = self.objects.get(&key.combined_bin()) else {
            return Ok(None);
        };
        let meta = e.meta.to_cache_meta();
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
            meta: Meta::of(meta)?,
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
        let decoded = Meta::of(meta)?;
        Ok(self.objects.update(h, |slot| {
            let Some(old) = slot.take() else {
                return false;
            };
            let updated = Arc::new(Entry {
                meta: decoded,
                body: old.body.clone(),
                primary: old.primary.clone(),
                compact: old.compact.clone(),
            });
            let (before, after) = (weight(&old), weight(&updated));
            *slot = Some(updated);
            self.size.fetch_add(after, Ordering::Relaxed);
            self.size.fetch_sub(before, Ordering::Relaxed);
            true
        }))
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    fn sample() -> CacheMeta {
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.insert_header("Content-Type", "text/plain").unwrap();
        h.insert_header("ETag", "\"v1\"").unwrap();
        let created = SystemTime::now() - Duration::from_secs(30);
        let mut m = CacheMeta::new(created + Duration::from_secs(60), created, 5, 7, h);
        m.set_variance([7u8; 16]);
        m
    }

    #[test]
    fn decoded_meta_rebuilds_the_same_meta() {
        let m = sample();
        let back = Meta::of(&m).unwrap().to_cache_meta();
        assert_eq!(back.fresh_until(), m.fresh_until());
        assert_eq!(back.created(), m.created());
        assert_eq!(back.epoch(), m.epoch());
        assert_eq!(back.stale_while_revalidate_sec(), 5);
        assert_eq!(back.stale_if_error_sec(), 7);
        assert_eq!(back.variance(), Some([7u8; 16]));
        assert_eq!(back.response_header().status.as_u16(), 200);
        assert_eq!(back.headers()["content-type"], "text/plain");
        assert_eq!(back.headers()["etag"], "\"v1\"");
        assert!(back.age() >= Duration::from_secs(30));
    }

    #[test]
    fn a_revalidation_moves_the_age_reference_every_time() {
        let mut m = Meta::of(&sample()).unwrap().to_cache_meta();
        let fresh = SystemTime::now() + Duration::from_secs(100);
        m.update_freshness(fresh, 1, 2);
        let once = Meta::of(&m).unwrap().to_cache_meta();
        assert!(once.age() < Duration::from_secs(5), "age {:?}", once.age());
        assert_eq!(once.fresh_until(), fresh);
        assert_eq!(once.created(), m.created());
        // Revalidated again later: the newer stamp wins over the stored override.
        let mut again = once;
        again.update_freshness(fresh, 1, 2);
        let twice = Meta::of(&again).unwrap().to_cache_meta();
        assert!(twice.epoch() >= m.updated());
        assert!(twice.age() < Duration::from_secs(5));
    }
}
