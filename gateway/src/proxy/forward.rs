//! The upstream request's head on pingora's transport: its path, and the
//! client fields that never go upstream (the forwarding fields themselves
//! are the pipeline's edits: `pipeline::edits::forwarding`).

use http::header::HeaderName;
use http::{HeaderMap, Uri};
use pingora::http::RequestHeader;
use pingora::prelude::*;

use crate::pipeline::edits::is_forged;

/// Replaces the path of the request URI, keeping the query string.
pub fn set_path(req: &mut RequestHeader, path: &str) -> Result<()> {
    let pq = match req.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let uri: Uri = pq.parse().or_err(
        ErrorType::InternalError,
        "rewritten path is not a valid URI",
    )?;
    req.set_uri(uri);
    Ok(())
}

/// Removes every forged header ([`is_forged`]): upstreams can trust the
/// identity headers the pipeline sets only because of this.
pub fn strip_forged(h: &mut HeaderMap, peer_trusted: bool) {
    // Collected first: the map cannot be edited while iterated. Almost always
    // empty, and an empty Vec does not allocate.
    let forged: Vec<HeaderName> = h
        .keys()
        .filter(|k| is_forged(k.as_str(), peer_trusted))
        .cloned()
        .collect();
    for k in &forged {
        h.remove(k);
    }
}
