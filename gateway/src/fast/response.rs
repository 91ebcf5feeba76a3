//! The upstream's response head on the fast path: parsed with httparse, its
//! framing decided (RFC 9112 §6.3), and rewritten for the client with what
//! pingora's path writes (`Date`, `Connection: close`) and the pipeline's
//! response edits (request id, security headers, CORS, rate-limit fields,
//! header rules). Bodies are relayed as they come; a chunked body keeps its
//! framing, checked by [`Chunked`] to find where it ends.

use smallvec::SmallVec;

use crate::fields::{self, Edit};

use super::wire::{header as line, write_edits, MAX_HEADERS};

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes: the client connection closes after it too.
    UntilClose,
}

#[derive(Debug)]
pub struct RespHead {
    pub status: u16,
    pub head_len: usize,
    pub framing: Framing,
    /// The upstream connection may carry another request afterwards.
    pub reusable: bool,
}

#[derive(Debug)]
pub enum Parsed {
    Partial,
    /// Not a response the gateway forwards (malformed, ambiguous length, 101).
    Invalid,
    /// A 1xx head of this many bytes, dropped (the final response follows).
    Informational(usize),
    Ready(RespHead),
}

/// What the gateway adds to the client's response head.
pub struct Decorations<'a> {
    /// The pipeline's edits of the response head.
    pub edits: &'a [Edit],
    /// The client connection stays open after this response (if the framing allows).
    pub keepalive: bool,
    pub head_request: bool,
}

fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Parses a response head from `buf`; when it is final, writes the client's head
/// into `out` and returns its framing.
pub fn parse(buf: &[u8], deco: &Decorations<'_>, out: &mut Vec<u8>) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match parse_with(buf, deco, out, &mut headers) {
        // As many fields as pingora takes, without clearing that much stack for
        // the usual small head.
        Err(httparse::Error::TooManyHeaders) => {
            let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
            parse_with(buf, deco, out, &mut headers).unwrap_or(Parsed::Invalid)
        }
        Err(_) => Parsed::Invalid,
        Ok(p) => p,
    }
}

/// pingora's limit on header fields.
const MAX_RESPONSE_HEADERS: usize = 256;

fn parse_with<'b>(
    buf: &'b [u8],
    deco: &Decorations<'_>,
    out: &mut Vec<u8>,
    headers: &mut [httparse::Header<'b>],
) -> Result<Parsed, httparse::Error> {
    let mut resp = httparse::Response::new(headers);
    let head_len = match resp.parse(buf)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(Parsed::Partial),
    };
    let Some(status) = resp.code else {
        return Ok(Parsed::Invalid);
    };
    if status == 101 || !(100..=999).contains(&status) {
        return Ok(Parsed::Invalid);
    }
    if status < 200 {
        return Ok(Parsed::Informational(head_len));
    }
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut close = resp.version != Some(1);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            match (parse_length(h.value.trim_ascii()), length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => return Ok(Parsed::Invalid),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked only when it is the last coding; otherwise read until close.
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            close |= has_token(h.value, b"close");
        }
    }
    let framing = if deco.head_request || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        }
    };
    let reusable = !close && framing != Framing::UntilClose;
    let keepalive = deco.keepalive && framing != Framing::UntilClose;
    write_head(out, &resp, status, chunked.is_some(), deco, keepalive);
    Ok(Parsed::Ready(RespHead {
        status,
        head_len,
        framing,
        reusable,
    }))
}

fn write_head(
    out: &mut Vec<u8>,
    resp: &httparse::Response<'_, '_>,
    status: u16,
    has_te: bool,
    deco: &Decorations<'_>,
    keepalive: bool,
) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&[
        b'0' + (status / 100) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");

    // The upstream's fields that may reach the client at all, then what the
    // pipeline's edits leave of them.
    let mut own: SmallVec<[usize; 32]> = SmallVec::new();
    for (i, h) in resp.headers.iter().enumerate() {
        let name = h.name;
        let skip = name.eq_ignore_ascii_case("connection")
            || name.eq_ignore_ascii_case("keep-alive")
            || name.eq_ignore_ascii_case("proxy-connection")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("date")
            || (has_te && name.eq_ignore_ascii_case("content-length"));
        if !skip {
            own.push(i);
        }
    }
    let names: SmallVec<[&str; 32]> = own.iter().map(|&i| resp.headers[i].name).collect();
    let mut keep: SmallVec<[bool; 32]> = SmallVec::from_elem(true, own.len());
    let mut live: SmallVec<[bool; 16]> = SmallVec::from_elem(false, deco.edits.len());
    fields::resolve(&names, deco.edits, &mut keep, &mut live);
    for (&i, _) in own.iter().zip(&keep).filter(|(_, k)| **k) {
        let h = &resp.headers[i];
        line(out, h.name.as_bytes(), h.value);
    }
    line(
        out,
        b"Date",
        pingora_core::protocols::http::date::get_cached_date().as_bytes(),
    );
    write_edits(out, deco.edits, &live);
    // Clients here speak HTTP/1.1, whose connections persist unless a side says
    // `close` (RFC 9112 §9.3): a `Connection: keep-alive` would only be one more
    // header for every client to parse (callgrind: ~850 instructions a response
    // in oha's hyper client).
    if !keepalive {
        line(out, b"Connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
}

/// Finds the end of a chunked body while it is relayed unchanged.
#[derive(Debug, Default)]
pub struct Chunked {
    state: State,
    size: u64,
    digits: u8,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Size,
    /// After the size: extensions (or whitespace) up to CR.
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final CRLF).
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

impl Chunked {
    /// Feeds relayed bytes. `Ok(Some(n))`: the body ended after `n` bytes of
    /// `bytes`; `Ok(None)`: all consumed, more to come; `Err`: not chunked framing.
    #[allow(clippy::result_unit_err)]
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, ()> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self.state {
                State::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits >= 15 {
                            return Err(());
                        }
                        let d = (b as char).to_digit(16).ok_or(())?;
                        self.size = self.size * 16 + u64::from(d);
                        self.digits += 1;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = State::Ext,
                    b'\r' if self.digits > 0 => self.state = State::SizeLf,
                    _ => return Err(()),
                },
                State::Ext => match b {
                    b'\r' => self.state = State::SizeLf,
                    b'\n' => return Err(()),
                    _ => {}
                },
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.digits = 0;
                    self.state = if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    };
                }
                State::Data => {
                    let take = (bytes.len() - i).min(self.size.min(usize::MAX as u64) as usize);
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(());
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = State::Size;
                }
                // Trailer lines end in CRLF and hold no other control bytes: a
                // client that ended them at a bare LF would see the body end
                // elsewhere than the gateway does.
                State::TrailerStart => {
                    self.state = match b {
                        b'\r' => State::EndLf,
                        b'\t' => State::Trailer,
                        _ if b < 0x20 || b == 0x7f => return Err(()),
                        _ => State::Trailer,
                    };
                }
                State::Trailer => match b {
                    b'\r' => self.state = State::TrailerLf,
                    b'\t' => {}
                    _ if b < 0x20 || b == 0x7f => return Err(()),
                    _ => {}
                },
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = State::Done;
                    return Ok(Some(i + 1));
                }
                State::Done => return Ok(Some(i)),
            }
            i += 1;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecurityHeaders;
    use http::HeaderValue;

    fn deco() -> Decorations<'static> {
        Decorations {
            edits: &[],
            keepalive: true,
            head_request: false,
        }
    }

    fn ready(raw: &[u8], d: &Decorations<'_>) -> (RespHead, String) {
        let mut out = Vec::new();
        match parse(raw, d, &mut out) {
            Parsed::Ready(h) => (h, String::from_utf8(out).unwrap_or_default()),
            other => panic!("not ready: {other:?}"),
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let d = deco();
        let (h, _) = ready(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", &d);
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.reusable);
        let (h, out) = ready(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            &d,
        );
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!out.to_ascii_lowercase().contains("content-length"));
        let (h, out) = ready(b"HTTP/1.1 200 OK\r\n\r\n", &d);
        assert_eq!(h.framing, Framing::UntilClose);
        assert!(!h.reusable);
        assert!(out.contains("Connection: close\r\n"));
        let (h, _) = ready(b"HTTP/1.1 204 No Content\r\n\r\n", &d);
        assert_eq!(h.framing, Framing::Empty);
        let (h, _) = ready(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            &d,
        );
        assert!(!h.reusable);
        let (h, _) = ready(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", &d);
        assert!(!h.reusable);
        let head = Decorations {
            head_request: true,
            ..deco()
        };
        let (h, _) = ready(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", &head);
        assert_eq!(h.framing, Framing::Empty);
    }

    #[test]
    fn ambiguous_or_odd_heads_are_refused() {
        let d = deco();
        let mut out = Vec::new();
        for raw in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert!(
                matches!(parse(raw, &d, &mut out), Parsed::Invalid),
                "{raw:?}"
            );
        }
        assert!(matches!(
            parse(
                b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
                &d,
                &mut out
            ),
            Parsed::Informational(40)
        ));
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Le", &d, &mut out),
            Parsed::Partial
        ));
    }

    #[test]
    fn head_is_rewritten_with_the_gateways_fields() {
        let sec = SecurityHeaders {
            always: vec![
                (
                    http::header::X_FRAME_OPTIONS,
                    HeaderValue::from_static("DENY"),
                ),
                (
                    http::header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ),
            ],
            hsts: Some(HeaderValue::from_static("max-age=60")),
            override_upstream: false,
        };
        let mut edits = crate::fields::Edits::new();
        edits.push(Edit::Set(
            http::HeaderName::from_static("x-request-id"),
            HeaderValue::from_static("abc"),
        ));
        crate::security_headers::edits(&sec, true, &mut edits);
        let d = Decorations {
            edits: &edits,
            keepalive: true,
            head_request: false,
        };
        let (_, out) = ready(
            b"HTTP/1.1 404 Nope\r\nX-Frame-Options: SAMEORIGIN\r\nKeep-Alive: timeout=5\r\nX-Request-Id: up\r\nDate: x\r\nContent-Length: 0\r\n\r\n",
            &d,
        );
        assert!(out.starts_with("HTTP/1.1 404 Nope\r\n"), "{out}");
        assert!(out.contains("X-Frame-Options: SAMEORIGIN\r\n"));
        assert!(!out.contains("DENY"));
        assert!(out.contains("x-content-type-options: nosniff\r\n"));
        assert!(out.contains("strict-transport-security: max-age=60\r\n"));
        assert!(out.contains("x-request-id: abc\r\n") && !out.contains("up\r\n"));
        assert!(!out.contains("Keep-Alive") && !out.contains("Date: x"));
        assert!(!out.contains("Connection") && out.ends_with("\r\n\r\n"));

        let strict = SecurityHeaders {
            override_upstream: true,
            ..sec.clone()
        };
        let mut edits = crate::fields::Edits::new();
        crate::security_headers::edits(&strict, false, &mut edits);
        let d = Decorations { edits: &edits, ..d };
        let (_, out) = ready(
            b"HTTP/1.1 200 OK\r\nx-frame-options: SAMEORIGIN\r\nContent-Length: 0\r\n\r\n",
            &d,
        );
        assert!(out.contains("x-frame-options: DENY\r\n") && !out.contains("SAMEORIGIN"));
        assert!(
            !out.to_ascii_lowercase()
                .contains("strict-transport-security"),
            "HSTS on plain HTTP"
        );
    }

    #[test]
    fn trailers_need_crlf_and_no_control_bytes() {
        for bad in [
            &b"0\r\nX: a\n\r\n"[..],
            b"0\r\n\nX: a\r\n\r\n",
            b"0\r\nX: a\x00b\r\n\r\n",
            b"0\r\nX: a\rb\r\n\r\n",
        ] {
            assert_eq!(Chunked::default().feed(bad), Err(()), "{bad:?}");
        }
        let good = b"0\r\nX: a\tb\r\nY: c\r\n\r\n";
        assert_eq!(Chunked::default().feed(good), Ok(Some(good.len())));
    }

    #[test]
    fn chunked_end_is_found_across_reads() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        for split in 0..body.len() {
            let mut c = Chunked::default();
            let (a, b) = body.split_at(split);
            let end = match c.feed(a) {
                Ok(Some(n)) => n,
                Ok(None) => split + c.feed(b).ok().flatten().unwrap_or(usize::MAX - split),
                Err(()) => panic!("error at split {split}"),
            };
            assert_eq!(end, body.len() - 4, "split {split}");
        }
        let mut c = Chunked::default();
        assert_eq!(c.feed(b"0\r\n\r\n"), Ok(Some(5)));
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"5\nhello",
            b"ffffffffffffffff1\r\n",
        ] {
            assert_eq!(Chunked::default().feed(bad), Err(()), "{bad:?}");
        }
    }

    proptest::proptest! {
        /// Any chunked body, cut anywhere into two reads, ends exactly where
        /// it ends; whatever follows is left alone.
        #[test]
        fn chunked_end_is_exact(
            chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 1..300), 0..6),
            ext in proptest::bool::ANY,
            trailer in proptest::bool::ANY,
            cut in 0usize..4000,
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..20),
        ) {
            let mut body = Vec::new();
            for c in &chunks {
                body.extend_from_slice(format!("{:X}", c.len()).as_bytes());
                if ext {
                    body.extend_from_slice(b";name=value");
                }
                body.extend_from_slice(b"\r\n");
                body.extend_from_slice(c);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\n");
            if trailer {
                body.extend_from_slice(b"X-T: 1\r\n");
            }
            body.extend_from_slice(b"\r\n");
            let end = body.len();
            body.extend_from_slice(&tail);
            let cut = cut.min(end);
            let mut c = Chunked::default();
            let found = match c.feed(&body[..cut]) {
                Ok(Some(n)) => n,
                Ok(None) => cut + c.feed(&body[cut..]).ok().flatten().unwrap_or(usize::MAX / 2),
                Err(()) => usize::MAX,
            };
            proptest::prop_assert_eq!(found, end);
        }

        /// Arbitrary bytes never panic the scanner or the head parser.
        #[test]
        fn arbitrary_bytes_are_handled(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = Chunked::default().feed(&bytes);
            let mut out = Vec::new();
            let _ = parse(&bytes, &deco(), &mut out);
        }
    }
}
