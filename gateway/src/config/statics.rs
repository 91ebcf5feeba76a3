//! A route's `static:` action: files served from a directory (validated type
//! and its validation; the serde mirror is `raw::RawStatic`).

use std::path::PathBuf;

use http::HeaderValue;

use super::check::{expand_env, Checker};
use super::error::KeyPath;
use super::raw::{RawFallback, RawStatic};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticSite {
    /// As configured (relative paths are taken from the working directory,
    /// like every other path of the file); resolved again on each request so
    /// a deploy that swaps a `current` symlink is served at once.
    pub root: PathBuf,
    /// The file a directory answers with.
    pub index: String,
    /// The file (relative to the root) a missing extension-less path answers.
    pub fallback: Option<String>,
    pub cache_control: Vec<CacheRule>,
    pub precompressed: bool,
    pub outside_symlinks: bool,
    /// Keep small files and path lookups in memory (`files::cache`).
    pub memory_cache: bool,
    /// The route's `compress:`: text files without a precompressed sibling
    /// are compressed per request (`files::encode`).
    pub compress: Option<std::sync::Arc<super::shaping::Compression>>,
}

/// `pattern`: with a `/`, matched against the whole path of the served file
/// (`/assets/*`); without one, against its name (`index.html`, `*.html`).
/// `*` stands for any run of characters, `/` included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRule {
    pub pattern: String,
    pub value: HeaderValue,
}

pub fn static_of(c: &mut Checker, at: &KeyPath, r: &RawStatic) -> Option<StaticSite> {
    let before = c.errors.len();
    let root = match expand_env(&r.root) {
        Ok(p) if !p.trim().is_empty() => PathBuf::from(p),
        Ok(_) => {
            c.err(&at.key("root"), "root must name a directory");
            return None;
        }
        Err(e) => {
            c.err(&at.key("root"), e);
            return None;
        }
    };
    match std::fs::metadata(&root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => c.err(
            &at.key("root"),
            format!("{} is not a directory", root.display()),
        ),
        // A production root may be created by the first deploy after the
        // gateway's (and `check` runs on machines without it): requests
        // answer 404 until it exists, and the operator is told.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => c.warn(
            &at.key("root"),
            format!(
                "{} does not exist (yet): requests answer 404 until it does",
                root.display()
            ),
        ),
        Err(e) => c.err(&at.key("root"), format!("{}: {e}", root.display())),
    }
    let index = r.index.clone().unwrap_or_else(|| "index.html".to_owned());
    if !plain_file_name(&index, false) {
        c.err(
            &at.key("index"),
            "index must be a file name (no '/', not hidden)",
        );
    }
    let fallback = match &r.spa_fallback {
        None | Some(RawFallback::Flag(false)) => None,
        Some(RawFallback::Flag(true)) => Some(index.clone()),
        Some(RawFallback::File(f)) => {
            let f = f.trim_start_matches('/');
            if !plain_file_name(f, true) {
                c.err(
                    &at.key("spa_fallback"),
                    "spa_fallback must be true, false or a file under the root \
                     (no '..', no hidden parts)",
                );
            }
            Some(f.to_owned())
        }
    };
    let mut cache_control = Vec::with_capacity(r.cache_control.len());
    for (i, rule) in r.cache_control.iter().enumerate() {
        let p = at.key("cache_control").index(i);
        if rule.pattern.is_empty() || rule.pattern.contains(char::is_whitespace) {
            c.err(
                &p.key("pattern"),
                "a pattern is a path or file name with '*'",
            );
        }
        match HeaderValue::from_str(&rule.value) {
            Ok(value) if !rule.value.trim().is_empty() => cache_control.push(CacheRule {
                pattern: rule.pattern.clone(),
                value,
            }),
            _ => c.err(&p.key("value"), "not a valid Cache-Control value"),
        }
    }
    if c.errors.len() > before {
        return None;
    }
    Some(StaticSite {
        root,
        index,
        fallback,
        cache_control,
        precompressed: r.precompressed.unwrap_or(true),
        outside_symlinks: r.outside_symlinks,
        memory_cache: r.memory_cache.unwrap_or(true),
        compress: None,
    })
}

/// A name under the root: not empty, no `.`/`..` or hidden part, no
/// backslash or NUL; `/` only when `nested`.
fn plain_file_name(name: &str, nested: bool) -> bool {
    !name.is_empty()
        && (nested || !name.contains('/'))
        && !name.contains(['\\', '\0'])
        && name
            .split('/')
            .all(|p| !p.is_empty() && !p.starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_under_the_root() {
        assert!(plain_file_name("index.html", false));
        assert!(plain_file_name("app/200.html", true));
        for bad in ["", ".env", "a/../b", "../x", "a\\b", "a//b", "/x"] {
            assert!(!plain_file_name(bad, true), "{bad}");
        }
        assert!(!plain_file_name("a/b", false));
    }
}
