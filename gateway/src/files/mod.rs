//! Files from a directory, as nginx's `root` + `try_files $uri /index.html`
//! serves a front end: the answer to a `GET`/`HEAD` for a path under a
//! route's root, decided here and described as data ([`Answer`]): status,
//! fields, and a body that is nothing, a few bytes, or a byte range of a file
//! already open. The transports render it; nothing here knows them.
//!
//! Safety by construction:
//! - the request path is decoded and checked segment by segment
//!   ([`path::relative`]): no `..`, NUL, backslash or encoded separator, no
//!   hidden name (`.env`, `.git/`);
//! - the file is opened once and everything (type, size, dates, bytes) comes
//!   from that handle; when symlinks may not leave the root, the handle is
//!   checked to be the file the fully resolved path names under the root
//!   (same device and inode), so a symlink swapped in between the open and
//!   the check is caught rather than raced;
//! - a directory answers its index file, never a listing.
//!
//! Everything here blocks on the file system: the pipeline runs [`serve`] on
//! tokio's blocking pool, and a transport streams large bodies with
//! [`read_chunk`].

pub mod cache;
mod encode;
mod mime;
pub mod path;
pub mod validators;

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method};

pub use mime::content_type;

use crate::config::StaticSite;
use validators::Ranged;

/// Files up to this size are read whole with the open (one trip to the
/// blocking pool); larger ones stream in chunks of [`CHUNK`].
pub const SMALL: u64 = 64 * 1024;
pub const CHUNK: u64 = 128 * 1024;

/// What [`serve`] needs of the request, owned (it runs on another thread).
#[derive(Debug, Clone)]
pub struct FileRequest {
    pub method: Method,
    /// The path under the root as the client spelled it (percent-encoded),
    /// after the route's rewrite.
    pub path: String,
    /// The client's path and query: a directory asked for without its `/`
    /// is redirected to this plus `/`.
    pub target: String,
    pub if_none_match: Option<Vec<u8>>,
    pub if_modified_since: Option<Vec<u8>>,
    pub range: Option<Vec<u8>>,
    pub if_range: Option<Vec<u8>>,
    pub accept_encoding: Option<Vec<u8>>,
}

/// A file answer (200, 206, 304, 301 to a directory's slash, 416).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// Everything but `Content-Length`, which the transport writes from
    /// [`Body::len`] (none on a 304).
    pub fields: Vec<(HeaderName, HeaderValue)>,
    pub body: Body,
}

#[derive(Debug)]
pub enum Body {
    Empty,
    /// A small file, read whole.
    Bytes(Bytes),
    /// `len` bytes from `offset` of an open file, to stream (or, for `HEAD`,
    /// only to count).
    File {
        file: Arc<File>,
        offset: u64,
        len: u64,
    },
}

impl Body {
    pub fn len(&self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::Bytes(b) => b.len() as u64,
            Body::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why there is no file answer; the pipeline words these as its other
/// errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A path no file can have (traversal, NUL, bad escape): 400.
    BadPath,
    /// A hidden name (`.env`, `.git/…`): 404, as if absent.
    Hidden,
    NotFound,
    /// Not `GET`/`HEAD`: 405 with `Allow: GET, HEAD`.
    MethodNotAllowed,
}

pub static ALLOW: HeaderValue = HeaderValue::from_static("GET, HEAD");
static BYTES: HeaderValue = HeaderValue::from_static("bytes");
static ACCEPT_ENCODING: HeaderValue = HeaderValue::from_static("Accept-Encoding");

/// The answer for `req` from `site`. Blocks (file system calls).
pub fn serve(site: &StaticSite, req: &FileRequest) -> Result<Answer, Refusal> {
    if req.method != Method::GET && req.method != Method::HEAD {
        return Err(Refusal::MethodNotAllowed);
    }
    let rel = path::relative(&req.path)?;
    // Resolved on each request: a deploy that swaps a `current` symlink
    // is served from the next request on.
    let root = std::fs::canonicalize(&site.root).map_err(|_| Refusal::NotFound)?;
    let found = match open_under(&root, &rel, site.outside_symlinks) {
        Ok(Some((file, meta))) if meta.is_file() => Some((rel.clone(), file, meta)),
        Ok(Some((_, meta))) if meta.is_dir() => {
            let index = rel.join(&site.index);
            match open_under(&root, &index, site.outside_symlinks) {
                Ok(Some((file, meta))) if meta.is_file() => {
                    if !req.path.ends_with('/') {
                        // As nginx: relative links in the index resolve
                        // against the directory only with its slash.
                        return Ok(slash_redirect(&req.target));
                    }
                    Some((index, file, meta))
                }
                _ => None,
            }
        }
        _ => None,
    };
    let (rel, file, meta) = match found {
        Some(f) => f,
        None => {
            let fallback = site.fallback.as_deref().filter(|_| !has_extension(&rel));
            let Some(fb) = fallback else {
                return Err(Refusal::NotFound);
            };
            let fb = PathBuf::from(fb);
            match open_under(&root, &fb, site.outside_symlinks) {
                Ok(Some((file, meta))) if meta.is_file() => (fb, file, meta),
                _ => return Err(Refusal::NotFound),
            }
        }
    };
    Ok(answer(site, req, &root, &rel, file, meta))
}

/// What an answer needs to know of the file it serves (the variant chosen:
/// the file itself or a precompressed sibling).
#[derive(Debug, Clone)]
pub struct FileMeta {
    /// `/`-rooted path of the logical file (for `cache_control` patterns).
    pub logical: String,
    pub content_type: &'static str,
    pub encoding: Option<&'static str>,
    pub len: u64,
    pub mtime: SystemTime,
    pub etag: String,
}

/// Where the bytes come from.
enum Source<'a> {
    File(File),
    Memory(&'a Bytes),
}

/// The answer for the regular file `rel` (opened as `file`), or for its
/// precompressed sibling.
fn answer(
    site: &StaticSite,
    req: &FileRequest,
    root: &Path,
    rel: &Path,
    file: File,
    meta: Metadata,
) -> Answer {
    let logical = format!("/{}", rel.to_string_lossy());
    let name = rel
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let ctype = content_type(&name);
    let (file, meta, encoding) = if site.precompressed {
        sibling(
            root,
            rel,
            req.accept_encoding.as_deref(),
            site.outside_symlinks,
        )
        .map(|(f, m, e)| (f, m, Some(e)))
        .unwrap_or((file, meta, None))
    } else {
        (file, meta, None)
    };
    let len = meta.len();
    let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    if let Some(a) = compressed(site, req, &logical, ctype, &file, len, mtime, encoding) {
        return a;
    }
    let info = FileMeta {
        logical,
        content_type: ctype,
        encoding,
        len,
        mtime,
        etag: validators::etag(len, mtime, encoding),
    };
    if site.memory_cache && len <= cache::MAX_FILE {
        if let Ok(Body::Bytes(bytes)) = read_whole(&file, 0, len) {
            let answer = respond(site, req, &info, Source::Memory(&bytes));
            cache::store(site, req, info, bytes);
            return answer;
        }
    }
    respond(site, req, &info, Source::File(file))
}

/// With `compress:` on the route: a text file without a precompressed
/// variant, compressed for a client that accepts it (whole-file answers only:
/// a range request gets the file as it is). The weak `ETag` names the encoding.
#[allow(clippy::too_many_arguments)]
fn compressed(
    site: &StaticSite,
    req: &FileRequest,
    logical: &str,
    ctype: &'static str,
    file: &File,
    len: u64,
    mtime: SystemTime,
    encoding: Option<&'static str>,
) -> Option<Answer> {
    let comp = site.compress.as_deref()?;
    if encoding.is_some()
        || req.range.is_some()
        || len > cache::MAX_FILE
        || !comp.wants(Some(ctype.as_bytes()), Some(len))
    {
        return None;
    }
    let enc = encode::pick(comp, req.accept_encoding.as_deref())?;
    let Ok(Body::Bytes(raw)) = read_whole(file, 0, len) else {
        return None;
    };
    let zipped = encode::encode(&raw, enc, comp.level)?;
    let info = FileMeta {
        logical: logical.to_owned(),
        content_type: ctype,
        encoding: Some(enc),
        len: zipped.len() as u64,
        mtime,
        etag: format!("W/{}", validators::etag(len, mtime, Some(enc))),
    };
    let answer = respond(site, req, &info, Source::Memory(&zipped));
    if site.memory_cache {
        cache::store(site, req, info, zipped);
    }
    Some(answer)
}

/// The answer from a file's validators and bytes (conditional requests,
/// ranges, `HEAD`).
fn respond(site: &StaticSite, req: &FileRequest, info: &FileMeta, source: Source<'_>) -> Answer {
    let FileMeta {
        logical,
        content_type: ctype,
        encoding,
        len,
        mtime,
        etag,
    } = info;
    let (len, mtime, encoding) = (*len, *mtime, *encoding);
    let mut fields: Vec<(HeaderName, HeaderValue)> = Vec::with_capacity(8);
    // Validators and caching fields go on the 304 too (RFC 9110 §15.4.5).
    if let Ok(v) = HeaderValue::from_str(etag) {
        fields.push((header::ETAG, v));
    }
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(mtime)) {
        fields.push((header::LAST_MODIFIED, v));
    }
    if let Some(rule) = site
        .cache_control
        .iter()
        .find(|r| path::pattern_matches(&r.pattern, logical))
    {
        fields.push((header::CACHE_CONTROL, rule.value.clone()));
    }
    if site.precompressed || site.compress.is_some() {
        fields.push((header::VARY, ACCEPT_ENCODING.clone()));
    }
    let not_modified = match (&req.if_none_match, &req.if_modified_since) {
        (Some(inm), _) => validators::none_match(inm, etag),
        (None, Some(ims)) => validators::not_modified_since(ims, mtime),
        (None, None) => false,
    };
    if not_modified {
        return Answer {
            status: 304,
            fields,
            body: Body::Empty,
        };
    }
    fields.push((header::CONTENT_TYPE, HeaderValue::from_static(ctype)));
    if let Some(e) = encoding {
        fields.push((header::CONTENT_ENCODING, HeaderValue::from_static(e)));
    }
    fields.push((header::ACCEPT_RANGES, BYTES.clone()));
    let stale = req
        .if_range
        .as_deref()
        .is_some_and(|ir| !validators::if_range_holds(ir, etag, mtime));
    let ranged = match &req.range {
        Some(r) if !stale => validators::range(r, len),
        _ => Ranged::Whole,
    };
    let (status, offset, n) = match ranged {
        Ranged::Whole => (200, 0, len),
        Ranged::Part { start, len: n } => {
            let last = start + n - 1;
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{last}/{len}")) {
                fields.push((header::CONTENT_RANGE, v));
            }
            (206, start, n)
        }
        Ranged::Unsatisfiable => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                fields.push((header::CONTENT_RANGE, v));
            }
            // Not the file's type: there is no content.
            fields.retain(|(k, _)| *k != header::CONTENT_TYPE && *k != header::CONTENT_ENCODING);
            return Answer {
                status: 416,
                fields,
                body: Body::Empty,
            };
        }
    };
    let body = match source {
        Source::Memory(bytes) => usize::try_from(offset)
            .ok()
            .zip(usize::try_from(offset + n).ok())
            .and_then(|(a, b)| bytes.get(a..b).map(|_| bytes.slice(a..b)))
            .map(Body::Bytes)
            .unwrap_or(Body::Empty),
        Source::File(file) if req.method == Method::GET && n <= SMALL => {
            read_whole(&file, offset, n).unwrap_or_else(|_| Body::File {
                file: Arc::new(file),
                offset,
                len: n,
            })
        }
        Source::File(file) => Body::File {
            file: Arc::new(file),
            offset,
            len: n,
        },
    };
    Answer {
        status,
        fields,
        body,
    }
}

fn read_whole(file: &File, offset: u64, n: u64) -> io::Result<Body> {
    let mut buf = vec![0u8; usize::try_from(n).map_err(io::Error::other)?];
    file.read_exact_at(&mut buf, offset)?;
    Ok(Body::Bytes(Bytes::from(buf)))
}

/// Up to `max` bytes from `offset` of `file`, on tokio's blocking pool. An
/// empty chunk before the end means the file shrank under us.
pub async fn read_chunk(file: &Arc<File>, offset: u64, max: u64) -> io::Result<Bytes> {
    let file = file.clone();
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; usize::try_from(max).map_err(io::Error::other)?];
        let n = file.read_at(&mut buf, offset)?;
        buf.truncate(n);
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(io::Error::other)?
}

/// The best precompressed sibling of `rel` the client accepts.
fn sibling(
    root: &Path,
    rel: &Path,
    accept: Option<&[u8]>,
    outside_symlinks: bool,
) -> Option<(File, Metadata, &'static str)> {
    for &(encoding, suffix) in validators::acceptable(accept) {
        let mut name = rel.as_os_str().to_owned();
        name.push(suffix);
        if let Ok(Some((f, m))) = open_under(root, Path::new(&name), outside_symlinks) {
            if m.is_file() {
                return Some((f, m, encoding));
            }
        }
    }
    None
}

/// Opens `root/rel` (rel: normal components only). `Ok(None)`: not there,
/// or a symlink leading outside the root (or to a hidden name) when that is
/// not allowed.
fn open_under(
    root: &Path,
    rel: &Path,
    outside_symlinks: bool,
) -> io::Result<Option<(File, Metadata)>> {
    debug_assert!(rel.components().all(|c| matches!(c, Component::Normal(_))));
    let full = root.join(rel);
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer,
    // holding a blocking-pool thread for ever (a FIFO is then refused as not a
    // regular file); regular files ignore the flag.
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&full)
    {
        Ok(f) => f,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None)
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !outside_symlinks {
        let Ok(real) = std::fs::canonicalize(&full) else {
            return Ok(None);
        };
        let inside = real.strip_prefix(root).is_ok_and(|under| {
            under.components().all(|c| match c {
                Component::Normal(n) => !n.as_encoded_bytes().starts_with(b"."),
                _ => false,
            })
        });
        if !inside {
            return Ok(None);
        }
        // The handle must be the file that path names now; a swap between
        // the open and the check makes them differ.
        let now = std::fs::metadata(&real)?;
        if (now.dev(), now.ino()) != (meta.dev(), meta.ino()) {
            return Ok(None);
        }
    }
    Ok(Some((file, meta)))
}

/// Whether the last segment has an extension (`app.js`): a missing asset is
/// a 404, not the single-page app's index.
fn has_extension(rel: &Path) -> bool {
    rel.file_name()
        .is_some_and(|n| n.as_encoded_bytes().contains(&b'.'))
}

/// 301 to the same path with a trailing `/`, query kept.
fn slash_redirect(target: &str) -> Answer {
    let (p, q) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    // One leading `/` whatever the client sent: `//evil.example` must not
    // become a redirect to another site.
    let p = p.trim_start_matches('/');
    let loc = match q {
        Some(q) => format!("/{p}/?{q}"),
        None => format!("/{p}/"),
    };
    let mut fields = Vec::with_capacity(1);
    if let Ok(v) = HeaderValue::from_str(&loc) {
        fields.push((header::LOCATION, v));
    }
    Answer {
        status: 301,
        fields,
        body: Body::Empty,
    }
}

#[cfg(test)]
mod tests;
