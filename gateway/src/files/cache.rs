//! Small files in memory, as nginx's `open_file_cache` keeps descriptors: the
//! resolution of a request path (the file it names, or the index it falls
//! back to, and the precompressed variant chosen) with the file's bytes and
//! validators, for [`VALID`] after a full lookup on the file system.
//!
//! Within that window an answer needs no system call, so the transports take
//! it on their own thread instead of tokio's blocking pool; after it, the next
//! request resolves the path again (every safety check of [`super::serve`]
//! included) and refreshes the entry while the others still answer from it,
//! so an edit or a deploy shows within 2 × [`VALID`]. Only regular files found under the root are kept (refusals and
//! misses always take the full path), files of at most [`MAX_FILE`] bytes, at
//! most [`ENTRIES`] of them: memory stays below `MAX_FILE × ENTRIES`.

use std::hash::{BuildHasher, Hash};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;

use super::{respond, Answer, FileMeta, FileRequest, Source};
use crate::config::StaticSite;
use crate::sharded::{IdentityHasher, ShardedMap};

/// How long a lookup is trusted (nginx's `open_file_cache_valid` is 60 s).
pub const VALID: Duration = Duration::from_secs(1);
/// Larger files are streamed from their handle, not kept.
pub const MAX_FILE: u64 = 64 * 1024;
pub const ENTRIES: usize = 512;

struct Entry {
    root: PathBuf,
    path: String,
    accept: Option<Vec<u8>>,
    at: Instant,
    /// Set by the one request that looks the path up again once the entry is
    /// stale; the others keep answering from it meanwhile (at most [`VALID`]
    /// more), rather than all going to the disk at once.
    refreshing: AtomicBool,
    meta: FileMeta,
    body: Bytes,
}

type Map = ShardedMap<u64, Arc<Entry>, std::hash::BuildHasherDefault<IdentityHasher>>;

fn map() -> &'static Map {
    static M: OnceLock<Map> = OnceLock::new();
    M.get_or_init(|| ShardedMap::new(16, Some(ENTRIES)))
}

fn key(site: &StaticSite, req: &FileRequest) -> u64 {
    static SEED: OnceLock<foldhash::fast::RandomState> = OnceLock::new();
    let seed = SEED.get_or_init(foldhash::fast::RandomState::default);
    let mut h = seed.build_hasher();
    site.root.hash(&mut h);
    req.path.hash(&mut h);
    req.accept_encoding.hash(&mut h);
    std::hash::Hasher::finish(&h)
}

/// The answer from memory, when this path was resolved less than [`VALID`] ago.
pub fn lookup(site: &StaticSite, req: &FileRequest) -> Option<Answer> {
    if !site.memory_cache || (req.method != Method::GET && req.method != Method::HEAD) {
        return None;
    }
    let e = map().get(&key(site, req))?;
    if e.root != site.root || e.path != req.path || e.accept != req.accept_encoding {
        return None;
    }
    let age = e.at.elapsed();
    let usable = age < VALID || (age < 2 * VALID && e.refreshing.swap(true, Ordering::Relaxed));
    usable.then(|| respond(site, req, &e.meta, Source::Memory(&e.body)))
}

/// Keeps a file just resolved for `req`.
pub(super) fn store(site: &StaticSite, req: &FileRequest, meta: FileMeta, body: Bytes) {
    let at = Instant::now();
    let entry = Arc::new(Entry {
        root: site.root.clone(),
        path: req.path.clone(),
        accept: req.accept_encoding.clone(),
        at,
        refreshing: AtomicBool::new(false),
        meta,
        body,
    });
    // A full shard drops what went stale first, then the oldest.
    map().insert_ranked(key(site, req), entry, |_, e| {
        let age = at.saturating_duration_since(e.at);
        (age < VALID).then(|| u64::MAX - age.as_nanos().min(u128::from(u64::MAX)) as u64)
    });
}
