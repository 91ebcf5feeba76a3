//! `X-Request-Id`: kept when the client's is a sane token, generated otherwise.

use http::HeaderValue;
use rand::Rng;

/// A client-supplied id is kept only if it is 1–128 characters of `[A-Za-z0-9._:-]`,
/// so it cannot inject anything into logs or upstream headers.
pub fn is_sane(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// 128 random bits as 32 lowercase hex characters.
pub fn generate() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits: u128 = rand::rng().random();
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((bits >> (i * 4)) & 0xf) as usize];
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

pub fn from_request(existing: Option<&HeaderValue>) -> HeaderValue {
    match existing {
        Some(v) if is_sane(v.as_bytes()) => v.clone(),
        _ => generate(),
    }
}

/// [`from_request`] on the value's bytes.
pub fn from_bytes(existing: Option<&[u8]>) -> HeaderValue {
    existing
        .filter(|v| is_sane(v))
        .and_then(|v| HeaderValue::from_bytes(v).ok())
        .unwrap_or_else(generate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sane_replaces_bad() {
        let good = HeaderValue::from_static("abc-123_x.y:z");
        assert_eq!(from_request(Some(&good)), good);
        let bad = HeaderValue::from_static("a b\"{}");
        assert_ne!(from_request(Some(&bad)), bad);
        assert_eq!(generate().len(), 32);
        assert_ne!(generate(), generate());
    }
}
