//! Answers the gateway writes itself: JSON errors with the request id.

use bytes::Bytes;
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

/// Writes `{"error":{"code","message","request_id"}}` with `status`, then closes
/// the client connection.
pub async fn json_error(
    session: &mut Session,
    status: u16,
    code: &str,
    message: &str,
    request_id: Option<&HeaderValue>,
) -> Result<()> {
    json_error_with(session, status, code, message, request_id, Vec::new()).await
}

/// [`json_error`] with extra header fields (`Allow` of a 405).
pub async fn json_error_with(
    session: &mut Session,
    status: u16,
    code: &str,
    message: &str,
    request_id: Option<&HeaderValue>,
    extra: Vec<(&'static str, HeaderValue)>,
) -> Result<()> {
    session.set_keepalive(None);
    write_error(session, status, code, message, request_id, extra).await
}

/// A `respond` route's fixed answer (no body for HEAD). The connection stays
/// open: nothing went wrong.
pub async fn fixed(
    session: &mut Session,
    f: &crate::config::FixedResponse,
    request_id: Option<&HeaderValue>,
) -> Result<()> {
    let mut resp = ResponseHeader::build(f.status, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, f.content_type.clone())?;
    resp.insert_header(http::header::CONTENT_LENGTH, f.body.len())?;
    if let Some(v) = request_id {
        resp.insert_header("x-request-id", v.clone())?;
    }
    let head = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head || f.body.is_empty())
        .await?;
    if !head && !f.body.is_empty() {
        session
            .write_response_body(Some(f.body.clone()), true)
            .await?;
    }
    Ok(())
}

/// A `redirect` route's answer.
pub async fn redirect(
    session: &mut Session,
    status: u16,
    location: &str,
    request_id: Option<&HeaderValue>,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(3))?;
    resp.insert_header(http::header::LOCATION, location)?;
    resp.insert_header(http::header::CONTENT_LENGTH, 0)?;
    if let Some(v) = request_id {
        resp.insert_header("x-request-id", v.clone())?;
    }
    session.write_response_header(Box::new(resp), true).await
}

/// 429 with `Retry-After` and the rate-limit header fields. The connection stays
/// open: a throttled client is not a broken one.
pub async fn rate_limited(
    session: &mut Session,
    policy: &crate::config::RatePolicy,
    outcome: &crate::limits::Outcome,
    request_id: Option<&HeaderValue>,
) -> Result<()> {
    use crate::limits::headers;
    let extra = vec![
        (
            http::header::RETRY_AFTER.as_str(),
            HeaderValue::from(headers::retry_after(outcome)),
        ),
        (headers::RATELIMIT_POLICY, policy.policy_header.clone()),
        (
            headers::RATELIMIT,
            headers::ratelimit_value(policy, outcome),
        ),
    ];
    write_error(
        session,
        429,
        "rate_limited",
        "too many requests: slow down",
        request_id,
        extra,
    )
    .await
}

/// The one JSON error writer behind [`json_error`] and [`auth_error`].
async fn write_error(
    session: &mut Session,
    status: u16,
    code: &str,
    message: &str,
    request_id: Option<&HeaderValue>,
    extra: Vec<(&'static str, HeaderValue)>,
) -> Result<()> {
    let body = Bytes::from(error_body(code, message, request_id));
    let mut resp = ResponseHeader::build(status, Some(5))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    for (name, value) in extra {
        resp.insert_header(name, value)?;
    }
    if let Some(v) = request_id {
        resp.insert_header("x-request-id", v.clone())?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// `{"error":{"code","message","request_id"}}`, the body of every error the
/// gateway answers itself.
pub fn error_body(code: &str, message: &str, request_id: Option<&HeaderValue>) -> String {
    let rid = request_id.and_then(|v| v.to_str().ok()).unwrap_or("");
    serde_json::json!({
        "error": { "code": code, "message": message, "request_id": rid }
    })
    .to_string()
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

/// 401/403 for access control; the reason is never told to the client.
pub async fn auth_error(
    session: &mut Session,
    forbidden: bool,
    request_id: Option<&HeaderValue>,
) -> Result<()> {
    let (status, code, message, challenge) = if forbidden {
        (
            403,
            "forbidden",
            "you are not allowed to do this",
            r#"Bearer realm="galion", error="insufficient_scope""#,
        )
    } else {
        (
            401,
            "unauthorized",
            "valid credentials are required",
            r#"Bearer realm="galion", error="invalid_token""#,
        )
    };
    let extra = vec![(
        http::header::WWW_AUTHENTICATE.as_str(),
        HeaderValue::from_static(challenge),
    )];
    write_error(session, status, code, message, request_id, extra).await
}
