//! Compression of a file's bytes for a client that accepts it, when the
//! route asks for it (`compress:`) and the file has no precompressed sibling:
//! text the build did not compress ahead of time.

use std::io::Write;

use bytes::Bytes;

use crate::config::Compression;

/// The encoding to use: the client's preference among those the route allows.
pub fn pick(comp: &Compression, accept: Option<&[u8]>) -> Option<&'static str> {
    super::validators::acceptable(accept)
        .into_iter()
        .map(|(e, _)| *e)
        .find(|e| match *e {
            "br" => comp.br,
            "zstd" => comp.zstd,
            "gzip" => comp.gzip,
            _ => false,
        })
}

/// `body` compressed with `encoding` at `level` (1..=9; brotli's scale is
/// capped at its 11, zstd's at 19). `None` when the encoder fails or the result
/// is not smaller.
pub fn encode(body: &[u8], encoding: &str, level: u32) -> Option<Bytes> {
    let out = match encoding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 2),
                flate2::Compression::new(level.min(9)),
            );
            e.write_all(body).ok()?;
            e.finish().ok()?
        }
        "br" => {
            let mut e = brotli::CompressorWriter::new(
                Vec::with_capacity(body.len() / 2),
                4096,
                level.min(11),
                22,
            );
            e.write_all(body).ok()?;
            e.into_inner()
        }
        "zstd" => zstd::bulk::compress(body, i32::try_from(level.min(19)).ok()?).ok()?,
        _ => return None,
    };
    (out.len() < body.len()).then(|| Bytes::from(out))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Read;

    #[test]
    fn each_encoding_round_trips_and_incompressible_bytes_stay_as_they_are() {
        let text = "function galion() { return 'galion'; }\n".repeat(100);
        let gz = encode(text.as_bytes(), "gzip", 5).unwrap();
        let mut back = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, text);
        let br = encode(text.as_bytes(), "br", 5).unwrap();
        let mut back = Vec::new();
        brotli::Decompressor::new(&br[..], 4096)
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, text.as_bytes());
        let zs = encode(text.as_bytes(), "zstd", 5).unwrap();
        assert_eq!(
            zstd::bulk::decompress(&zs, text.len()).unwrap(),
            text.as_bytes()
        );
        // Random bytes do not shrink: sent as they are.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                // xorshift64: bytes without structure to find.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert!(encode(&noise, "gzip", 9).is_none());
        assert!(encode(b"x", "deflate", 5).is_none());
    }
}
