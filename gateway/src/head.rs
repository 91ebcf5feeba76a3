//! Direct edits of a request or response head's header map.
//!
//! Pingora's `insert_header` keeps a second map with the header-name case the
//! peer used, and for every insert turns the name into bytes (a copy for names
//! outside the standard table), parses it back and hashes it into both maps,
//! growing both when the client sent few headers. In a callgrind profile of the
//! plain proxy path that was ~1.5k instructions per header, 11 headers per
//! request: the largest cost the gateway added over a bare Pingora proxy.
//!
//! Here the head is turned into its `http` parts (a move, no copy), the map is
//! reserved once and edited with ready-made `HeaderName`s, and the head is
//! rebuilt (again a move). What is lost is only the peer's spelling of header
//! names: the head is then written with canonical names (`Content-Type`,
//! `x-request-id`), as every HTTP/2 peer sends them; names are case-insensitive
//! (RFC 9110 §5.1). A request-target that does not round-trip through the URI
//! (non-UTF-8, absolute-form), h2's end-of-stream flag and a non-standard reason
//! phrase are carried over.

use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

/// Runs `edit` on the request's header map with room for `extra` more headers.
pub fn edit_request<R>(
    req: &mut RequestHeader,
    extra: usize,
    edit: impl FnOnce(&mut HeaderMap) -> Result<R>,
) -> Result<R> {
    let raw_target = {
        let raw = req.raw_path();
        let from_uri = req
            .uri
            .path_and_query()
            .map_or(&b""[..], |p| p.as_str().as_bytes());
        (raw != from_uri).then(|| raw.to_vec())
    };
    let end_stream = req.send_end_stream();
    // An empty head is built without allocating (empty map, static "/" URI).
    let empty = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts: http::request::Parts = std::mem::replace(req, empty).into();
    // A map too full for that fails on its first insert instead (an error,
    // not `reserve`'s panic).
    let _ = parts.headers.try_reserve(extra);
    let out = edit(&mut parts.headers);
    // The parts go back even when `edit` failed: the request stays whole.
    let mut rebuilt = RequestHeader::from(parts);
    // These bytes were a valid target a moment ago, so this cannot fail; if it
    // did, the head is still put back before the error is returned.
    let restored = raw_target.map_or(Ok(()), |raw| rebuilt.set_raw_path(&raw));
    if let Some(end) = end_stream {
        rebuilt.set_send_end_stream(end);
    }
    *req = rebuilt;
    restored?;
    out
}

/// Fields pingora's HTTP/1 writer inserts into every response head after the
/// filters (`Date`, `Connection`). The map is given room for them too: an
/// insert into a full map grows it (a new table and a rehash of every field)
/// even when it only replaces a value.
const WRITER_ADDS: usize = 2;

/// Runs `edit` on the response's header map with room for `extra` more
/// headers, and for those pingora's writer adds.
pub fn edit_response<R>(
    resp: &mut ResponseHeader,
    extra: usize,
    edit: impl FnOnce(&mut HeaderMap) -> Result<R>,
) -> Result<R> {
    let reason = resp
        .get_reason_phrase()
        .filter(|r| Some(*r) != resp.status.canonical_reason())
        .map(str::to_owned);
    let empty = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts: http::response::Parts = std::mem::replace(resp, empty).into();
    let _ = parts.headers.try_reserve(extra.saturating_add(WRITER_ADDS));
    let out = edit(&mut parts.headers);
    let mut rebuilt = ResponseHeader::from(parts);
    let restored = match reason {
        Some(r) => rebuilt.set_reason_phrase(Some(&r)),
        None => Ok(()),
    };
    *resp = rebuilt;
    restored?;
    out
}

/// `HeaderMap::insert` without its panic on a full map (32k entries; pingora's
/// parser stops far below that, so this is belt and braces).
pub fn set(map: &mut HeaderMap, name: HeaderName, value: HeaderValue) -> Result<()> {
    map.try_insert(name, value)
        .or_err(ErrorType::InternalError, "too many headers")?;
    Ok(())
}

/// Sets `name` only if the map has none: one lookup (an entry), not a
/// `contains_key` and then an insert that hashes and probes again.
pub fn set_default(map: &mut HeaderMap, name: HeaderName, value: HeaderValue) -> Result<()> {
    if let http::header::Entry::Vacant(e) = map
        .try_entry(name)
        .or_err(ErrorType::InternalError, "too many headers")?
    {
        e.try_insert(value)
            .or_err(ErrorType::InternalError, "too many headers")?;
    }
    Ok(())
}

/// `HeaderMap::append`, likewise.
pub fn add(map: &mut HeaderMap, name: HeaderName, value: HeaderValue) -> Result<()> {
    map.try_append(name, value)
        .or_err(ErrorType::InternalError, "too many headers")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn wire_req(r: &RequestHeader) -> String {
        let mut buf = Vec::new();
        r.header_to_h1_wire(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    #[test]
    fn request_edit_keeps_everything_but_name_case() {
        let mut req = RequestHeader::build("POST", b"/a/b?x=1", None).unwrap();
        req.insert_header("X-Custom", "1").unwrap();
        req.append_header("Accept", "a").unwrap();
        req.append_header("Accept", "b").unwrap();
        edit_request(&mut req, 2, |h| {
            set(
                h,
                HeaderName::from_static("x-added"),
                HeaderValue::from_static("y"),
            )?;
            add(h, http::header::ACCEPT, HeaderValue::from_static("c"))
        })
        .unwrap();
        assert_eq!(req.method, http::Method::POST);
        assert_eq!(req.raw_path(), b"/a/b?x=1");
        let accepts: Vec<_> = req.headers.get_all("accept").iter().collect();
        assert_eq!(accepts, ["a", "b", "c"]);
        assert_eq!(req.headers["x-custom"], "1");
        assert_eq!(req.headers["x-added"], "y");
        // Further pingora inserts still work on the rebuilt head.
        req.insert_header("x-later", "z").unwrap();
        let wire = wire_req(&req).to_ascii_lowercase();
        for line in [
            "x-custom: 1\r\n",
            "accept: a\r\n",
            "accept: c\r\n",
            "x-later: z\r\n",
        ] {
            assert!(wire.contains(line), "{line:?} in {wire}");
        }
    }

    #[test]
    fn request_edit_keeps_a_raw_target() {
        let mut req = RequestHeader::build("GET", b"/caf\xe9?q=%ff", None).unwrap();
        let before = req.raw_path().to_vec();
        edit_request(&mut req, 0, |_| Ok(())).unwrap();
        assert_eq!(req.raw_path(), &before[..]);

        let mut req = RequestHeader::build("GET", b"http://example.com/x?y", None).unwrap();
        let before = req.raw_path().to_vec();
        edit_request(&mut req, 0, |_| Ok(())).unwrap();
        assert_eq!(req.raw_path(), &before[..]);
    }

    #[test]
    fn failed_edit_leaves_the_head_whole() {
        let mut req = RequestHeader::build("GET", b"/p", None).unwrap();
        req.insert_header("x-a", "1").unwrap();
        let r: Result<()> = edit_request(&mut req, 0, |h| {
            h.remove("x-a");
            Error::e_explain(ErrorType::InternalError, "boom")
        });
        assert!(r.is_err());
        assert_eq!(req.raw_path(), b"/p");
        assert!(!req.headers.contains_key("x-a"));
    }

    #[test]
    fn response_edit_keeps_status_and_reason() {
        let mut resp = ResponseHeader::build(299, None).unwrap();
        resp.set_reason_phrase(Some("Fine Really")).unwrap();
        resp.insert_header("Content-Type", "text/plain").unwrap();
        edit_response(&mut resp, 1, |h| {
            set(h, http::header::SERVER, HeaderValue::from_static("g"))
        })
        .unwrap();
        assert_eq!(resp.status.as_u16(), 299);
        assert_eq!(resp.get_reason_phrase(), Some("Fine Really"));
        assert_eq!(resp.headers["content-type"], "text/plain");
        assert_eq!(resp.headers["server"], "g");

        let mut ok = ResponseHeader::build(200, None).unwrap();
        edit_response(&mut ok, 0, |_| Ok(())).unwrap();
        assert_eq!(ok.get_reason_phrase(), Some("OK"));
    }

    #[test]
    fn an_edited_response_has_room_for_the_writers_fields() {
        // However full the upstream's head was, the edits and pingora's own
        // `Date` and `Connection` fit without the map growing again.
        for fields in 0..40 {
            let mut resp = ResponseHeader::build(200, Some(fields)).unwrap();
            for i in 0..fields {
                resp.append_header(format!("x-f{i}"), "v").unwrap();
            }
            edit_response(&mut resp, 3, |h| {
                for n in ["x-e1", "x-e2", "x-e3"] {
                    set(h, HeaderName::from_static(n), HeaderValue::from_static("e"))?;
                }
                Ok(())
            })
            .unwrap();
            let room = resp.headers.capacity() - resp.headers.len();
            assert!(room >= WRITER_ADDS, "{fields} fields: room for {room}");
        }
    }
}
