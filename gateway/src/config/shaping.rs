//! The response cache and compression settings: the global store (`cache:`) and
//! each route's `cache:` / `compress:` (validated types and their validation; the
//! serde mirrors are in `raw`).

use std::time::Duration;

use http::HeaderName;

use super::check::{header_name, parse_size, Checker};
use super::error::KeyPath;

// The serde mirrors are in `raw`; they stay reachable here at their old paths.
pub use super::raw::{RawCacheStore, RawCompress, RawRouteCache};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheStoreConfig {
    pub max_size: u64,
    pub max_object_size: u64,
    pub lock_timeout: Duration,
}

impl Default for CacheStoreConfig {
    fn default() -> Self {
        CacheStoreConfig {
            max_size: 256 * 1024 * 1024,
            max_object_size: 8 * 1024 * 1024,
            lock_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyQuery {
    All,
    None,
    Only(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct RouteCache {
    pub ttl: Duration,
    pub max_ttl: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub vary_headers: Vec<HeaderName>,
    pub key_query: KeyQuery,
    pub private: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compression {
    pub gzip: bool,
    pub br: bool,
    pub zstd: bool,
    pub level: u32,
    pub min_size: u64,
    /// Lowercase content-type prefixes.
    pub types: Vec<String>,
}

const DEFAULT_TYPES: &[&str] = &[
    "text/",
    "application/json",
    "application/javascript",
    "application/xml",
    "application/problem+json",
    "application/ld+json",
    "application/manifest+json",
    "application/wasm",
    "image/svg+xml",
];

impl Compression {
    /// Whether a response of this type and (known) length is worth compressing.
    pub fn wants(&self, content_type: Option<&[u8]>, length: Option<u64>) -> bool {
        if length.is_some_and(|l| l < self.min_size) {
            return false;
        }
        let Some(ct) = content_type.and_then(|c| std::str::from_utf8(c).ok()) else {
            return false;
        };
        let ct = ct.trim().to_ascii_lowercase();
        self.types.iter().any(|t| ct.starts_with(t.as_str()))
    }
}

pub fn cache_store_of(c: &mut Checker, r: RawCacheStore) -> CacheStoreConfig {
    let at = KeyPath::root().key("cache");
    let d = CacheStoreConfig::default();
    let max_size = r
        .max_size
        .and_then(|s| parse_size(c, &at.key("max_size"), &s))
        .unwrap_or(d.max_size);
    let max_object_size = r
        .max_object_size
        .and_then(|s| parse_size(c, &at.key("max_object_size"), &s))
        .unwrap_or(d.max_object_size);
    if max_object_size > max_size {
        c.err(&at.key("max_object_size"), "larger than cache.max_size");
    }
    if max_size < 64 * 1024 {
        c.err(&at.key("max_size"), "at least 64KiB");
    }
    CacheStoreConfig {
        max_size,
        max_object_size,
        lock_timeout: r.lock_timeout.unwrap_or(d.lock_timeout),
    }
}

pub fn route_cache_of(c: &mut Checker, at: &KeyPath, r: &RawRouteCache) -> RouteCache {
    let ttl = r.ttl.unwrap_or(Duration::from_secs(60));
    let max_ttl = r.max_ttl.unwrap_or(Duration::from_secs(86_400));
    if ttl > max_ttl {
        c.err(&at.key("ttl"), "longer than max_ttl");
    }
    let vary_headers = r
        .vary_headers
        .iter()
        .enumerate()
        .filter_map(|(i, h)| header_name(c, &at.key("vary_headers").index(i), h))
        .collect();
    let key_query = match &r.key_query {
        None => KeyQuery::All,
        Some(serde_norway::Value::String(s)) if s == "all" => KeyQuery::All,
        Some(serde_norway::Value::String(s)) if s == "none" => KeyQuery::None,
        Some(serde_norway::Value::Sequence(items)) => {
            let mut names = Vec::new();
            for (i, v) in items.iter().enumerate() {
                match v.as_str() {
                    Some(n) if !n.is_empty() => names.push(n.to_owned()),
                    _ => c.err(&at.key("key_query").index(i), "a query parameter name"),
                }
            }
            names.sort();
            KeyQuery::Only(names)
        }
        Some(_) => {
            c.err(
                &at.key("key_query"),
                "all, none, or a list of query parameter names",
            );
            KeyQuery::All
        }
    };
    let secs = |d: Option<Duration>| d.unwrap_or(Duration::ZERO);
    RouteCache {
        ttl,
        max_ttl,
        stale_while_revalidate: secs(r.stale_while_revalidate),
        stale_if_error: secs(r.stale_if_error),
        vary_headers,
        key_query,
        private: r.private,
    }
}

pub fn compression_of(c: &mut Checker, at: &KeyPath, r: &RawCompress) -> Compression {
    let mut comp = Compression {
        gzip: true,
        br: true,
        zstd: true,
        level: r.level.unwrap_or(5),
        min_size: r
            .min_size
            .as_ref()
            .and_then(|s| parse_size(c, &at.key("min_size"), s))
            .unwrap_or(1024),
        types: r
            .types
            .clone()
            .unwrap_or_else(|| DEFAULT_TYPES.iter().map(|s| s.to_string()).collect())
            .into_iter()
            .map(|t| t.trim().to_ascii_lowercase())
            .collect(),
    };
    if !(1..=9).contains(&comp.level) {
        c.err(&at.key("level"), "between 1 and 9");
    }
    if let Some(list) = &r.encodings {
        comp.gzip = false;
        comp.br = false;
        comp.zstd = false;
        for (i, e) in list.iter().enumerate() {
            match e.as_str() {
                "gzip" => comp.gzip = true,
                "br" | "brotli" => comp.br = true,
                "zstd" => comp.zstd = true,
                other => c.err(
                    &at.key("encodings").index(i),
                    format!("{other:?}: expected gzip, br or zstd"),
                ),
            }
        }
    }
    comp
}
