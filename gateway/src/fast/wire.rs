//! Writing head lines as bytes: what both the request and the response
//! side of the fast path write.

use crate::fields::Edit;

/// Header fields per head the fast path parses at once.
pub const MAX_HEADERS: usize = 64;

/// One `name: value` line of a head.
pub fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The fields the edits add (those `live` says survive).
pub fn write_edits(out: &mut Vec<u8>, edits: &[Edit], live: &[bool]) {
    for (e, _) in edits.iter().zip(live).filter(|(_, l)| **l) {
        if let Edit::Set(n, v) | Edit::Default(n, v) | Edit::Append(n, v) = e {
            header(out, n.as_str().as_bytes(), v.as_bytes());
        }
    }
}
