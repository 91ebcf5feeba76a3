//! The path the gateway routes on.
//!
//! Two spellings of one path must reach one route, or a protected route is
//! bypassed: `/%61dmin` and `//admin` would miss a `/admin` prefix, fall to a
//! public `/` route and still reach the upstream's `/admin` handler once it
//! decodes the escape or merges the slashes (as nginx, Go's `net/http` and most
//! frameworks do). Like nginx, the gateway routes on the normalized form:
//! percent-encoded unreserved characters (RFC 3986 §2.3: `A-Z a-z 0-9 - . _ ~`)
//! decoded and runs of `/` merged. Unlike nginx's default, it also sends that
//! form upstream, so the upstream sees the path that was routed and checked.
//! Dot segments and encoded separators are refused earlier
//! ([`path_is_safe`]); other escapes (`%20`, `%2F`…) are kept as sent.

use std::borrow::Cow;

/// The normalized path; borrowed (no work beyond one scan) when it is already
/// normal, which is the case for every request a normal client sends.
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    if !needs_normalizing(path) {
        return Cow::Borrowed(path);
    }
    // Until nothing changes: `/%%361dmin` gives `/%61dmin` after one pass, which
    // an upstream would decode once more. Each pass shortens the path.
    let mut out = normalize_once(path);
    while needs_normalizing(&out) {
        out = normalize_once(&out);
    }
    Cow::Owned(out)
}

/// Whether [`normalize_path`] would change `path` (one scan, no allocation).
pub fn needs_normalizing(path: &str) -> bool {
    let b = path.as_bytes();
    b.iter().enumerate().any(|(i, &c)| match c {
        b'%' => decoded_unreserved(b, i).is_some(),
        b'/' => b.get(i + 1) == Some(&b'/'),
        _ => false,
    })
}

fn normalize_once(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => match decoded_unreserved(b, i) {
                Some(c) => {
                    out.push(c as char);
                    i += 3;
                    continue;
                }
                None => out.push('%'),
            },
            b'/' if out.ends_with('/') => {}
            _ => {
                // Copy the run of ordinary characters up to the next `%` or `/`
                // whole, so multi-byte UTF-8 stays intact.
                let end = b[i..]
                    .iter()
                    .position(|&c| c == b'%' || c == b'/')
                    .map_or(b.len(), |n| i + n.max(1));
                out.push_str(path.get(i..end).unwrap_or(""));
                i = end;
                continue;
            }
        }
        i += 1;
    }
    out
}

/// The unreserved character `%XX` at `i` stands for, if it is one.
fn decoded_unreserved(b: &[u8], i: usize) -> Option<u8> {
    let hex = |c: u8| (c as char).to_digit(16);
    let (h, l) = (hex(*b.get(i + 1)?)?, hex(*b.get(i + 2)?)?);
    let c = (h * 16 + l) as u8;
    (c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')).then_some(c)
}

/// Rejects paths a router could be tricked by: not starting with `/`, or holding
/// `.`/`..` segments (plain or percent-encoded), encoded slashes or backslashes that an
/// upstream would resolve differently from the gateway. Allocation-free.
///
/// Also `;`, plain or as `%3B`: Tomcat and Jetty read `/admin;x` as `/admin` and
/// `/pub/..;/admin` as `/admin` (path parameters), WildFly and WebLogic end the
/// path there, while the gateway would route both under another prefix: the
/// classic way past a proxy's path rules (Orange Tsai, Black Hat 2018; nginx
/// issue #556). Spring Security's default firewall refuses them the same way.
pub fn path_is_safe(path: &str) -> bool {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return false;
    }
    if !b.iter().any(|&c| matches!(c, b'.' | b'%' | b'\\' | b';')) {
        return true;
    }
    if b.contains(&b'\\') || b.contains(&b';') {
        return false;
    }
    path.split('/')
        .all(|seg| !is_dot_segment(seg) && !has_encoded_separator(seg))
}

fn is_dot_segment(seg: &str) -> bool {
    let mut rest = seg.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[0] == b'%' && rest[1] == b'2' && rest[2] | 0x20 == b'e' {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

/// `%2F` (`/`), `%5C` (`\`) or `%3B` (`;`).
fn has_encoded_separator(seg: &str) -> bool {
    seg.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2] | 0x20),
                (b'2', b'f') | (b'5', b'c') | (b'3', b'b')
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_are_borrowed() {
        for p in [
            "/",
            "/admin/x",
            "/a%20b",
            "/a%2Fb",
            "/caf\u{e9}",
            "/a%",
            "/a%zz",
        ] {
            assert!(matches!(normalize_path(p), Cow::Borrowed(_)), "{p}");
        }
    }

    #[test]
    fn escapes_of_unreserved_characters_are_decoded_and_slashes_merged() {
        for (raw, want) in [
            ("/%61dmin", "/admin"),
            ("/%41DMIN/%7e%5F%2d", "/ADMIN/~_-"),
            ("//admin", "/admin"),
            ("/api///v1//users/", "/api/v1/users/"),
            ("/%61%20b%2F//c", "/a%20b%2F/c"),
            ("/caf\u{e9}//%61", "/caf\u{e9}/a"),
            ("/x%6", "/x%6"),
            ("/%%361dmin", "/admin"),
            ("/%2561", "/%2561"),
        ] {
            assert_eq!(normalize_path(raw), want, "{raw}");
        }
    }

    proptest::proptest! {
        #[test]
        fn normalizing_twice_changes_nothing(p in "/[a-z/%0-9A-F\u{e9}]{0,24}") {
            let once = normalize_path(&p).into_owned();
            let twice = normalize_path(&once);
            proptest::prop_assert_eq!(twice.as_ref(), once.as_str());
        }
    }
}
