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
