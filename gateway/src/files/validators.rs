//! The HTTP side of a file answer: validators (`ETag`, `Last-Modified`),
//! conditional requests (RFC 9110 §13), a single byte range (RFC 9110 §14)
//! and the choice of a precompressed sibling by `Accept-Encoding`.

use std::time::{SystemTime, UNIX_EPOCH};

/// A strong `ETag` from what changes when the file does: its size and
/// modification time (to the nanosecond), plus the encoding of a sibling, so
/// two representations never share a tag.
pub fn etag(len: u64, mtime: SystemTime, encoding: Option<&str>) -> String {
    let d = mtime.duration_since(UNIX_EPOCH).unwrap_or_default();
    match encoding {
        Some(e) => format!("\"{:x}.{:x}-{len:x}-{e}\"", d.as_secs(), d.subsec_nanos()),
        None => format!("\"{:x}.{:x}-{len:x}\"", d.as_secs(), d.subsec_nanos()),
    }
}

/// `If-None-Match` (weak comparison, §13.1.2): whether any listed tag, or
/// `*`, matches `etag`.
pub fn none_match(header: &[u8], etag: &str) -> bool {
    let Ok(h) = std::str::from_utf8(header) else {
        return false;
    };
    let ours = opaque(etag);
    h.split(',')
        .map(str::trim)
        .any(|t| t == "*" || opaque(t) == ours)
}

fn opaque(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

/// `If-Modified-Since`: whether the file is unchanged since the date (a
/// date that does not parse is ignored, §13.1.3).
pub fn not_modified_since(header: &[u8], mtime: SystemTime) -> bool {
    let Some(since) = std::str::from_utf8(header)
        .ok()
        .and_then(|s| httpdate::parse_http_date(s.trim()).ok())
    else {
        return false;
    };
    secs(mtime) <= secs(since)
}

/// HTTP dates have whole seconds.
fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// What a `Range` field asks of a representation of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranged {
    /// No range, or one this server ignores (several ranges, a unit other
    /// than bytes, bad syntax): the whole representation, 200.
    Whole,
    /// `start..start+len`: 206.
    Part { start: u64, len: u64 },
    /// No byte of it exists: 416.
    Unsatisfiable,
}

/// Reads a single `bytes=` range (§14.1.2).
pub fn range(header: &[u8], len: u64) -> Ranged {
    let Some(spec) = std::str::from_utf8(header)
        .ok()
        .and_then(|h| h.trim().strip_prefix("bytes="))
    else {
        return Ranged::Whole;
    };
    if spec.contains(',') {
        // Multipart answers cost more than they save; the whole is allowed.
        return Ranged::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ranged::Whole;
    };
    let num = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (first.trim().is_empty(), num(first), num(last)) {
        // `-N`: the last N bytes.
        (true, _, Some(n)) => {
            if n == 0 || len == 0 {
                Ranged::Unsatisfiable
            } else {
                let n = n.min(len);
                Ranged::Part {
                    start: len - n,
                    len: n,
                }
            }
        }
        (false, Some(start), end) if last.trim().is_empty() || end.is_some() => {
            if start >= len {
                return Ranged::Unsatisfiable;
            }
            let end = end.map_or(len - 1, |e| e.min(len - 1));
            if end < start {
                return Ranged::Whole;
            }
            Ranged::Part {
                start,
                len: end - start + 1,
            }
        }
        _ => Ranged::Whole,
    }
}

/// `If-Range` (§13.1.5): the range applies only while the representation is
/// the one the client has: a strong tag equal to ours, or our exact date.
pub fn if_range_holds(header: &[u8], etag: &str, mtime: SystemTime) -> bool {
    let Ok(h) = std::str::from_utf8(header) else {
        return false;
    };
    let h = h.trim();
    if h.starts_with('"') {
        return h == etag;
    }
    if h.starts_with("W/") {
        return false;
    }
    httpdate::parse_http_date(h).is_ok_and(|d| secs(d) == secs(mtime))
}

/// The precompressed encodings, in the server's order of preference for
/// equal client weights, with the suffix of their sibling file.
pub static ENCODINGS: [(&str, &str); 3] = [("br", ".br"), ("zstd", ".zst"), ("gzip", ".gz")];

/// The encodings `Accept-Encoding` allows, best first: by the client's
/// weight, then [`ENCODINGS`]' order. `identity` is always possible
/// afterwards (a client that refuses it still gets a file).
pub fn acceptable(header: Option<&[u8]>) -> Vec<&'static (&'static str, &'static str)> {
    let Some(h) = header.and_then(|h| std::str::from_utf8(h).ok()) else {
        return Vec::new();
    };
    let mut star: Option<u32> = None;
    let mut weights: [Option<u32>; 3] = [None; 3];
    for item in h.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        let q = parts
            .find_map(|p| p.trim().strip_prefix("q=").map(qvalue))
            .unwrap_or(Some(1000));
        let Some(q) = q else { continue };
        if name == "*" {
            star = Some(q);
        } else if let Some(i) = ENCODINGS
            .iter()
            .position(|(e, _)| e.eq_ignore_ascii_case(name))
        {
            weights[i] = Some(q);
        } else if name.eq_ignore_ascii_case("x-gzip") {
            weights[2] = weights[2].or(Some(q));
        }
    }
    let mut out: Vec<(u32, usize)> = (0..ENCODINGS.len())
        .filter_map(|i| {
            let q = weights[i].or(star)?;
            (q > 0).then_some((q, i))
        })
        .collect();
    out.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    out.into_iter().map(|(_, i)| &ENCODINGS[i]).collect()
}

/// A qvalue in thousandths; `None` when it does not parse.
fn qvalue(s: &str) -> Option<u32> {
    let q: f32 = s.trim().parse().ok()?;
    (0.0..=1.0)
        .contains(&q)
        .then(|| (q * 1000.0).round() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn tags_and_dates() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        let tag = etag(10, t, None);
        assert_eq!(tag, "\"6553f100.5-a\"");
        assert_ne!(etag(10, t, Some("br")), tag);
        assert!(none_match(tag.as_bytes(), &tag));
        assert!(none_match(format!("\"x\", W/{tag}").as_bytes(), &tag));
        assert!(none_match(b"*", &tag));
        assert!(!none_match(b"\"other\"", &tag));
        let date = httpdate::fmt_http_date(t);
        assert!(not_modified_since(date.as_bytes(), t));
        assert!(!not_modified_since(
            httpdate::fmt_http_date(t - Duration::from_secs(1)).as_bytes(),
            t
        ));
        assert!(!not_modified_since(b"yesterday", t));
        assert!(if_range_holds(tag.as_bytes(), &tag, t));
        assert!(!if_range_holds(format!("W/{tag}").as_bytes(), &tag, t));
        assert!(if_range_holds(date.as_bytes(), &tag, t));
    }

    #[test]
    fn ranges() {
        use Ranged::*;
        assert_eq!(range(b"bytes=0-9", 100), Part { start: 0, len: 10 });
        assert_eq!(range(b"bytes=90-", 100), Part { start: 90, len: 10 });
        assert_eq!(range(b"bytes=90-500", 100), Part { start: 90, len: 10 });
        assert_eq!(range(b"bytes=-10", 100), Part { start: 90, len: 10 });
        assert_eq!(range(b"bytes=-500", 100), Part { start: 0, len: 100 });
        assert_eq!(range(b"bytes=100-", 100), Unsatisfiable);
        assert_eq!(range(b"bytes=-0", 100), Unsatisfiable);
        assert_eq!(range(b"bytes=0-0", 0), Unsatisfiable);
        for ignored in [
            &b"bytes=0-1,5-6"[..],
            b"items=0-1",
            b"bytes=5-1",
            b"bytes=a-b",
            b"bytes=-",
            b"bytes=+1-2",
        ] {
            assert_eq!(range(ignored, 100), Whole, "{ignored:?}");
        }
    }

    #[test]
    fn encodings_by_weight_then_ours() {
        let names = |h: &str| {
            acceptable(Some(h.as_bytes()))
                .iter()
                .map(|(e, _)| *e)
                .collect::<Vec<_>>()
        };
        assert_eq!(names("gzip, deflate, br, zstd"), ["br", "zstd", "gzip"]);
        assert_eq!(names("gzip;q=1, br;q=0.5"), ["gzip", "br"]);
        assert_eq!(names("br;q=0, gzip"), ["gzip"]);
        assert_eq!(names("*"), ["br", "zstd", "gzip"]);
        assert_eq!(names("*;q=0.1, br;q=0"), ["zstd", "gzip"]);
        assert_eq!(names("identity"), Vec::<&str>::new());
        assert!(acceptable(None).is_empty());
    }

    proptest::proptest! {
        /// A range answer never reaches outside the representation.
        #[test]
        fn ranges_stay_inside(h in r"bytes=[0-9]{0,4}-[0-9]{0,4}", len in 0u64..5000) {
            if let Ranged::Part { start, len: n } = range(h.as_bytes(), len) {
                proptest::prop_assert!(n > 0 && start + n <= len);
            }
        }
    }
}
