//! From a request path to a path under the root, refusing every spelling that
//! could leave it or reach what is not meant to be served.
//!
//! The pipeline already refuses dot segments, encoded separators and
//! backslashes before routing (`routing::path_is_safe`); this is the file
//! server's own check, made again on the decoded form, so its safety does not
//! hang on an earlier stage staying as it is.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::Refusal;

/// The relative path `raw` (a request path, percent-encoded, from its first
/// `/`) names under a root: one [`Normal`](std::path::Component::Normal)
/// component per non-empty segment. Refused: escapes that are not `%XX`,
/// NUL, `\`, a `/` spelled `%2F` (a segment holding a separator), `.` and
/// `..` segments however spelled ([`Refusal::BadPath`]), and hidden names,
/// `.env`, `.git/` ([`Refusal::Hidden`]).
pub fn relative(raw: &str) -> Result<PathBuf, Refusal> {
    let mut out = PathBuf::new();
    let mut hidden = false;
    for seg in raw.split('/') {
        if seg.is_empty() {
            continue;
        }
        let name = decode(seg)?;
        if name.contains(&b'/') || name.contains(&b'\\') || name.contains(&0) {
            return Err(Refusal::BadPath);
        }
        if name == b"." || name == b".." {
            return Err(Refusal::BadPath);
        }
        // Checked after every segment is decoded, so `/.git/%00` is a bad
        // request rather than a hidden file.
        hidden |= name.first() == Some(&b'.');
        out.push(OsStr::from_bytes(&name));
    }
    if hidden {
        return Err(Refusal::Hidden);
    }
    Ok(out)
}

/// Percent-decodes one segment.
fn decode(seg: &str) -> Result<Vec<u8>, Refusal> {
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
            match (hex(b.get(i + 1)), hex(b.get(i + 2))) {
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => return Err(Refusal::BadPath),
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Whether `pattern` (see `config::CacheRule`) matches the served file's
/// path `path` (from the root, with a leading `/`).
pub fn pattern_matches(pattern: &str, path: &str) -> bool {
    if pattern.contains('/') {
        glob(pattern.as_bytes(), path.as_bytes())
    } else {
        let name = path.rsplit('/').next().unwrap_or(path);
        glob(pattern.as_bytes(), name.as_bytes())
    }
}

/// `*` matches any run of bytes; everything else itself. Iterative with one
/// backtrack point, so a pattern of many stars stays linear-ish.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Component;

    #[test]
    fn plain_and_encoded_names() {
        assert_eq!(relative("/").ok(), Some(PathBuf::new()));
        assert_eq!(
            relative("/assets//app.js").ok(),
            Some(PathBuf::from("assets/app.js"))
        );
        assert_eq!(
            relative("/caf%C3%A9%20menu.txt").ok(),
            Some(PathBuf::from("caf\u{e9} menu.txt"))
        );
        // Decoded once: `%252e` names a file called `%2e`, not a dot segment.
        assert_eq!(
            relative("/%252e%252e/x").ok(),
            Some(PathBuf::from("%2e%2e/x"))
        );
    }

    #[test]
    fn traversal_in_every_spelling_is_refused() {
        for bad in [
            "/../etc/passwd",
            "/a/../../b",
            "/%2e%2e/etc/passwd",
            "/%2E%2e/x",
            "/.%2e/x",
            "/a/%2e/b",
            "/a%2f..%2fb",
            "/..%2Fetc",
            "/a%5c..%5cb",
            "/a\\b",
            "/a%00.html",
            "/a%0",
            "/a%zz",
        ] {
            assert_eq!(relative(bad), Err(Refusal::BadPath), "{bad}");
        }
    }

    #[test]
    fn hidden_names_are_refused() {
        for bad in ["/.env", "/.git/config", "/a/.htpasswd", "/%2egit/HEAD"] {
            assert_eq!(relative(bad), Err(Refusal::Hidden), "{bad}");
        }
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("/assets/*", "/assets/app-1a2b.js"));
        assert!(pattern_matches("/assets/*", "/assets/img/x.png"));
        assert!(!pattern_matches("/assets/*", "/index.html"));
        assert!(pattern_matches("index.html", "/index.html"));
        assert!(pattern_matches("index.html", "/docs/index.html"));
        assert!(pattern_matches("*.html", "/a/b.html"));
        assert!(!pattern_matches("*.html", "/a.htm"));
        assert!(pattern_matches("*", "/x"));
        assert!(pattern_matches("/a*b*c", "/aXbYbZc"));
        assert!(!pattern_matches("/a*b*c", "/aXbYbZ"));
    }

    proptest::proptest! {
        /// Whatever the client sends, what comes out is a plain relative
        /// path: only normal, non-hidden components, so joining it to the
        /// root stays under the root (symlinks are `open`'s business).
        #[test]
        fn no_generated_path_escapes_the_root(
            raw in r"(/|\.|%|2|e|E|f|F|5|c|C|0|\\|a|b|%2e|%2f|%5c|%00|\.\.){0,32}"
        ) {
            if let Ok(rel) = relative(&raw) {
                for c in rel.components() {
                    match c {
                        Component::Normal(n) => {
                            let b = n.as_bytes();
                            proptest::prop_assert!(!b.starts_with(b"."));
                            proptest::prop_assert!(!b.contains(&b'\\') && !b.contains(&0));
                        }
                        other => proptest::prop_assert!(false, "{other:?} in {raw:?}"),
                    }
                }
            }
        }
    }
}
