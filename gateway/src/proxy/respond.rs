//! pingora's rendering of the pipeline's answers ([`Reply`]), and of the
//! errors of a failed proxy attempt.

use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use crate::pipeline::{LocalReply, Reply};

/// Writes a reply; a HEAD request gets the head only.
pub async fn write(session: &mut Session, reply: &Reply) -> Result<()> {
    if reply.close {
        session.set_keepalive(None);
    }
    let mut resp = ResponseHeader::build(reply.status, Some(reply.fields.len() + 1))?;
    for (n, v) in &reply.fields {
        resp.append_header(n.clone(), v.clone())?;
    }
    resp.insert_header(http::header::CONTENT_LENGTH, reply.body.len())?;
    let end = reply.body.is_empty() || session.req_header().method == http::Method::HEAD;
    session.write_response_header(Box::new(resp), end).await?;
    if !end {
        session
            .write_response_body(Some(reply.body.clone()), true)
            .await?;
    }
    Ok(())
}

/// How much of an answered HTTP/2 request's body is read after the answer,
/// and for how long, before the stream is given up.
const DRAIN_BYTES: usize = 1 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// After a local answer to an HTTP/2 request whose body is still coming (a
/// 401 to a POST, say): reads and drops the rest, within bounds, so the
/// stream ends cleanly. Dropped with its request side open, the stream is
/// reset with `CANCEL`, and clients such as curl then report a stream error
/// instead of the complete answer they were sent. (RFC 9113 §8.1 lets a
/// server answer early; HTTP/1.1 connections are drained or closed by
/// pingora itself.)
pub async fn drain_h2_body(session: &mut Session) {
    let downstream = session.as_downstream_mut();
    if !downstream.is_http2() || downstream.is_body_done() {
        return;
    }
    let drain = async {
        let mut left = DRAIN_BYTES;
        while let Ok(Some(chunk)) = downstream.read_request_body().await {
            left = left.saturating_sub(chunk.len());
            if left == 0 {
                break;
            }
        }
    };
    let _ = pingora_timeout::tokio_timeout(DRAIN_TIME, drain).await;
}

/// The JSON error for a failed proxy attempt (`classify`), closing the
/// connection.
pub async fn proxy_error(
    session: &mut Session,
    (status, code, message): (u16, &str, &str),
    request_id: Option<&HeaderValue>,
) -> Result<()> {
    let reply = Reply::json_error(
        LocalReply::BadRequest,
        status,
        (code, message),
        request_id,
        &[],
    );
    write(session, &reply).await
}

/// Maps a proxy failure to (status, code, message) for the client.
pub fn classify(e: &Error) -> (u16, &'static str, &'static str) {
    use pingora::ErrorType::*;
    match e.etype() {
        HTTPStatus(413) => (413, "payload_too_large", "the request body is too large"),
        HTTPStatus(code) => (*code, "http_error", "request failed"),
        ConnectTimedout | ReadTimedout | WriteTimedout => match e.esource() {
            ErrorSource::Upstream => (
                504,
                "upstream_timeout",
                "the upstream did not answer in time",
            ),
            _ => (
                408,
                "request_timeout",
                "the request took too long to arrive",
            ),
        },
        Custom(NO_UPSTREAM) => (
            503,
            "no_healthy_upstream",
            "no upstream server is available",
        ),
        _ => match e.esource() {
            ErrorSource::Upstream => (502, "bad_gateway", "the upstream failed to answer"),
            ErrorSource::Downstream => match e.etype() {
                WriteError | ReadError | ConnectionClosed => (0, "client_closed", ""),
                _ => (400, "bad_request", "malformed request"),
            },
            ErrorSource::Internal | ErrorSource::Unset => (500, "internal_error", "internal error"),
        },
    }
}

pub const NO_UPSTREAM: &str = "no live upstream";
