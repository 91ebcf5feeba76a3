//! The response cache, opt-in per route, on pingora-cache: one bounded in-memory
//! store for the process ([`store::MemStore`] + pingora's LRU eviction manager +
//! a cache lock so concurrent misses make one upstream request).
//!
//! Policy (what is stored, under which key, for how long) lives here; the proxy
//! phases only call these functions. Rules: GET/HEAD only; requests carrying
//! `Authorization`, cookies or an API key bypass the cache unless the route is
//! `private` (then the caller's identity is part of the key); responses with
//! `Set-Cookie`, `no-store`, `no-cache`, `private` or `Vary: *` are not stored;
//! freshness from `s-maxage`, `max-age`, `Expires`, else the route's `ttl`, capped
//! by `max_ttl`.

pub mod store;

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use http::{header, Method, StatusCode};
use pingora::cache::cache_control::CacheControl;
use pingora::cache::eviction::lru::Manager as Lru;
use pingora::cache::eviction::{CacheEntryKeyRef, EvictionManager};
use pingora::cache::filters::calculate_expires_header_time;
use pingora::cache::key::HashBinary;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::{
    CacheKey, CacheMeta, CachePhase, NoCacheReason, RespCacheable, VarianceBuilder,
};
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::{CacheStoreConfig, KeyQuery, RouteCache};
use crate::fields::Fields;
use store::MemStore;

const LRU_SHARDS: usize = 16;

pub struct HttpCache {
    pub store: &'static MemStore,
    pub eviction: &'static Lru<LRU_SHARDS>,
    pub lock: &'static CacheKeyLockImpl,
    pub config: CacheStoreConfig,
}

static CACHE: OnceLock<HttpCache> = OnceLock::new();

/// Creates the process' cache on first use. Its size is fixed for the life of the
/// process: a reload that changes `cache:` is applied at the next restart (logged).
pub fn init(config: &CacheStoreConfig) -> &'static HttpCache {
    let c = CACHE.get_or_init(|| {
        // Leaked once: pingora's cache API takes `&'static` storage and managers.
        let store: &'static MemStore = Box::leak(Box::default());
        // The item capacity is preallocated: size it for ~16 KiB objects, so a
        // large byte budget does not cost its worth of empty slots at start.
        let eviction: &'static Lru<LRU_SHARDS> = Box::leak(Box::new(Lru::with_capacity(
            config.max_size as usize,
            (config.max_size / 16_384).clamp(1024, 65_536) as usize,
        )));
        let lock: &'static CacheLock = Box::leak(Box::new(CacheLock::new(config.lock_timeout)));
        HttpCache {
            store,
            eviction,
            lock,
            config: config.clone(),
        }
    });
    if c.config != *config {
        tracing::warn!("cache: size settings changed; they apply at the next restart");
    }
    c
}

pub fn get() -> Option<&'static HttpCache> {
    CACHE.get()
}

/// Bytes held by the cache (for `gateway_cache_size_bytes`).
pub fn size_bytes() -> usize {
    get().map_or(0, |c| c.store.size())
}

/// Why a request must not use the cache, if so.
pub fn bypass(method: &Method, fields: &impl Fields, rc: &RouteCache) -> Option<&'static str> {
    if *method != Method::GET && *method != Method::HEAD {
        return Some("method");
    }
    let credentials =
        fields.has("authorization") || fields.has("cookie") || fields.has("x-api-key");
    if credentials && !rc.private {
        return Some("credentials");
    }
    None
}

/// Whether a request that may use the cache ([`bypass`]) may also be answered
/// by [`store::MemStore::fresh_hit`]: no conditions and no ranges
/// (pingora-cache answers those: 304, 206, 412).
pub fn fast_path_allowed(fields: &impl Fields) -> bool {
    !fields.has("range")
        && !fields.has("if-none-match")
        && !fields.has("if-modified-since")
        && !fields.has("if-match")
        && !fields.has("if-unmodified-since")
        && !fields.has("if-range")
}

/// `host/path?query` with the query reduced per `key_query` (sorted when a list
/// is kept, so parameter order does not split the cache).
pub fn url_key(host: &str, path: &str, query: Option<&str>, rc: &RouteCache) -> String {
    let mut k = String::with_capacity(host.len() + path.len() + 32);
    k.push_str(host);
    k.push_str(path);
    let query = query.unwrap_or("");
    match &rc.key_query {
        KeyQuery::All if !query.is_empty() => {
            k.push('?');
            k.push_str(query);
        }
        KeyQuery::Only(names) if !query.is_empty() => {
            let mut kept: Vec<&str> = query
                .split('&')
                .filter(|p| {
                    let name = p.split('=').next().unwrap_or("");
                    names.iter().any(|n| n == name)
                })
                .collect();
            kept.sort_unstable();
            if !kept.is_empty() {
                k.push('?');
                k.push_str(&kept.join("&"));
            }
        }
        _ => {}
    }
    k
}

/// The key of a request to a cached route: [`url_key`] and, on a `private`
/// route, the caller's identity (`None` there: the request has no key).
pub fn request_key(
    host: &str,
    path: &str,
    query: Option<&str>,
    rc: &RouteCache,
    identity: Option<&str>,
) -> Option<CacheKey> {
    let url = url_key(host, path, query, rc);
    match (rc.private, identity) {
        (false, _) => Some(key(url, None)),
        (true, Some(id)) => Some(key(url, Some(id))),
        (true, None) => None,
    }
}

/// The cache key: the URL, plus the caller's identity on `private` routes (after a
/// NUL, which no URL contains). Its object hash is [`object_hash`]'s, which
/// pingora-cache then uses everywhere (store, lock, eviction) instead of its own.
pub fn key(url: String, identity: Option<&str>) -> CacheKey {
    let primary = match identity {
        Some(id) => format!("{url}\0{id}"),
        None => url,
    };
    let hash = object_hash(primary.as_bytes());
    let mut key = CacheKey::new(primary, "");
    key.set_primary_bin_override(hash);
    key
}

/// The 128-bit name of the object stored under a key's text: two SipHash-1-3
/// outputs under one key drawn at random when the process starts (std's
/// `RandomState`), over the text behind a different tag byte each.
///
/// Why not pingora's BLAKE2b-128: it costs several times as much and was the
/// largest single cost of a cache hit. What the hash must give is that no
/// client can make its URL name another URL's object (cache poisoning), and a
/// keyed hash whose key and outputs never leave the process gives that: a
/// client sees neither, so it cannot search for a collision. The store lives
/// in memory only, so the names need not survive a restart.
fn object_hash(text: &[u8]) -> HashBinary {
    use std::hash::{BuildHasher, Hasher};
    static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    let key = KEY.get_or_init(Default::default);
    let half = |tag: u8| {
        let mut h = key.build_hasher();
        h.write_u8(tag);
        h.write(text);
        h.finish().to_le_bytes()
    };
    let mut name = [0u8; 16];
    name[..8].copy_from_slice(&half(0));
    name[8..].copy_from_slice(&half(1));
    name
}

/// Statuses cacheable without explicit freshness (RFC 9110 §15.1).
fn heuristically_cacheable(s: StatusCode) -> bool {
    matches!(
        s.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Whether (and for how long) to store a response.
pub fn cacheable(resp: &ResponseHeader, rc: &RouteCache, now: SystemTime) -> RespCacheable {
    let uncacheable = |why: &'static str| RespCacheable::Uncacheable(NoCacheReason::Custom(why));
    if resp.headers.contains_key(header::SET_COOKIE) {
        return uncacheable("set-cookie");
    }
    if resp.headers.get_all(header::VARY).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|p| p.trim_ascii() == b"*")
    }) {
        return uncacheable("vary-star");
    }
    let cc = CacheControl::from_resp_headers(resp);
    if let Some(cc) = &cc {
        if cc.no_store() || cc.no_cache() || cc.private() {
            return uncacheable("cache-control");
        }
    }
    let explicit = cc.as_ref().and_then(|cc| {
        cc.s_maxage()
            .ok()
            .flatten()
            .or_else(|| cc.max_age().ok().flatten())
            .map(|s| Duration::from_secs(u64::from(s)))
    });
    let fresh = match explicit {
        Some(d) => Some(d),
        None => {
            calculate_expires_header_time(resp).map(|t| t.duration_since(now).unwrap_or_default())
        }
    };
    let fresh = match fresh {
        Some(d) => d,
        None if heuristically_cacheable(resp.status) => rc.ttl,
        None => return uncacheable("no-freshness"),
    }
    .min(rc.max_ttl);
    if fresh.is_zero() {
        return uncacheable("expired");
    }
    let secs = |d: Duration| d.as_secs().min(u64::from(u32::MAX)) as u32;
    // The upstream's stale-* directives win over the route's defaults.
    let swr = cc
        .as_ref()
        .and_then(|c| c.stale_while_revalidate().ok().flatten())
        .unwrap_or(secs(rc.stale_while_revalidate));
    let sie = cc
        .as_ref()
        .and_then(|c| c.stale_if_error().ok().flatten())
        .unwrap_or(secs(rc.stale_if_error));
    RespCacheable::Cacheable(CacheMeta::new(now + fresh, now, swr, sie, resp.clone()))
}

/// The variant of a stored response this request selects: the values of the
/// request headers named by the response's `Vary` and the route's `vary_headers`.
pub fn variance(meta: &CacheMeta, req: &RequestHeader, rc: &RouteCache) -> Option<HashBinary> {
    let mut names: Vec<String> = Vec::new();
    for v in meta.headers().get_all(header::VARY) {
        if let Ok(s) = v.to_str() {
            names.extend(
                s.split(',')
                    .map(|n| n.trim().to_ascii_lowercase())
                    .filter(|n| !n.is_empty()),
            );
        }
    }
    names.extend(rc.vary_headers.iter().map(|h| h.as_str().to_owned()));
    if names.is_empty() {
        return None;
    }
    names.sort();
    names.dedup();
    let mut b = VarianceBuilder::new();
    for n in &names {
        let value = req
            .headers
            .get(n.as_str())
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default();
        b.add_owned_name_value(n.clone(), value);
    }
    b.finalize()
}

/// `X-Cache-Status` for the request's cache phase.
pub fn status(phase: &CachePhase) -> &'static str {
    match phase {
        CachePhase::Hit | CachePhase::Revalidated => "HIT",
        CachePhase::Miss => "MISS",
        CachePhase::Stale | CachePhase::StaleUpdating => "STALE",
        CachePhase::Expired => "EXPIRED",
        _ => "BYPASS",
    }
}

/// Purges by exact URL or prefix (`host/path?query`); returns the objects removed.
pub fn purge(url: &str, prefix: bool) -> usize {
    let Some(c) = get() else { return 0 };
    let removed = c.store.purge_matching(url, prefix);
    for k in &removed {
        c.eviction.remove(CacheEntryKeyRef::from_entry_id(k, None));
    }
    removed.len()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rc() -> RouteCache {
        RouteCache {
            ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(3600),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            vary_headers: vec![],
            key_query: KeyQuery::Only(vec!["page".into(), "q".into()]),
            private: false,
        }
    }

    /// A key's object is named by its text alone, the same for every
    /// transport that builds the key, and a private key names another object
    /// than its URL's; pingora-cache's own names follow the override.
    #[test]
    fn a_key_names_its_object_by_its_text() {
        use pingora::cache::key::CacheHashKey;
        let public = key("galion.app/a?page=1".into(), None);
        assert_eq!(
            public.combined_bin(),
            key("galion.app/a?page=1".into(), None).combined_bin()
        );
        assert_eq!(public.to_compact().combined_bin(), public.combined_bin());
        assert_eq!(public.primary_bin(), object_hash(b"galion.app/a?page=1"));
        let private = key("galion.app/a?page=1".into(), Some("user-1"));
        assert_ne!(private.combined_bin(), public.combined_bin());
        assert_ne!(
            key("galion.app/a?page=2".into(), None).combined_bin(),
            public.combined_bin()
        );
        // Both halves depend on the text.
        let (a, b) = (object_hash(b"x"), object_hash(b"y"));
        assert_ne!(a[..8], b[..8]);
        assert_ne!(a[8..], b[8..]);
    }

    fn resp(headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn fresh_secs(r: RespCacheable, now: SystemTime) -> Option<u64> {
        match r {
            RespCacheable::Cacheable(m) => {
                Some(m.fresh_until().duration_since(now).unwrap().as_secs())
            }
            RespCacheable::Uncacheable(_) => None,
        }
    }

    #[test]
    fn freshness_rules() {
        let now = SystemTime::now();
        let c = |h: &[(&str, &str)]| fresh_secs(cacheable(&resp(h), &rc(), now), now);
        assert_eq!(c(&[]), Some(60));
        assert_eq!(c(&[("cache-control", "max-age=120")]), Some(120));
        assert_eq!(
            c(&[("cache-control", "max-age=120, s-maxage=30")]),
            Some(30)
        );
        assert_eq!(c(&[("cache-control", "max-age=99999")]), Some(3600));
        assert_eq!(c(&[("cache-control", "no-store")]), None);
        assert_eq!(c(&[("cache-control", "private, max-age=60")]), None);
        assert_eq!(c(&[("cache-control", "no-cache")]), None);
        assert_eq!(c(&[("set-cookie", "a=b")]), None);
        assert_eq!(c(&[("vary", "accept-encoding, *")]), None);
        assert_eq!(c(&[("cache-control", "max-age=0")]), None);
        assert_eq!(c(&[("expires", "Thu, 01 Jan 1970 00:00:00 GMT")]), None);
    }

    #[test]
    fn url_keys_and_bypass() {
        let q = Some("z=1&q=a&page=2");
        assert_eq!(
            url_key("galion.app", "/list", q, &rc()),
            "galion.app/list?page=2&q=a"
        );
        let mut all = rc();
        all.key_query = KeyQuery::None;
        assert_eq!(url_key("galion.app", "/list", q, &all), "galion.app/list");
        let mut h = http::HeaderMap::new();
        assert_eq!(bypass(&Method::GET, &h, &rc()), None);
        h.insert("authorization", "Bearer x".parse().unwrap());
        assert_eq!(bypass(&Method::GET, &h, &rc()), Some("credentials"));
        let mut private = rc();
        private.private = true;
        assert_eq!(bypass(&Method::GET, &h, &private), None);
        assert_eq!(
            bypass(&Method::POST, &http::HeaderMap::new(), &rc()),
            Some("method")
        );
    }
}
