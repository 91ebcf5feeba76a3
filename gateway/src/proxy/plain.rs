//! What the plain-HTTP listener does itself when HTTPS exists: redirect to HTTPS,
//! and serve ACME HTTP-01 challenges from a webroot (certbot `--webroot`).

use std::path::Path;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::ctx::{LocalReply, RequestCtx};
use super::respond;

/// 308 to the same host, path and query over HTTPS.
pub async fn redirect_to_https(
    session: &mut Session,
    ctx: &mut RequestCtx,
    host: Option<&str>,
    https_port: u16,
) -> Result<bool> {
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        ctx.local = Some(LocalReply::BadRequest);
        respond::json_error(
            session,
            400,
            "bad_request",
            "a Host header is required",
            ctx.request_id.as_ref(),
        )
        .await?;
        return Ok(true);
    };
    let pq = session
        .req_header()
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str());
    let location = if https_port == 443 {
        format!("https://{host}{pq}")
    } else {
        format!("https://{host}:{https_port}{pq}")
    };
    ctx.local = Some(LocalReply::Redirect);
    respond::redirect(session, 308, &location, ctx.request_id.as_ref()).await?;
    Ok(true)
}

/// Serves `<webroot>/<token>`; tokens are base64url, nothing else is read.
pub async fn acme_challenge(
    session: &mut Session,
    ctx: &mut RequestCtx,
    webroot: &Path,
    token: &str,
) -> Result<bool> {
    let valid = !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ctx.local = Some(LocalReply::Acme);
    let body = if valid {
        tokio::fs::read(webroot.join(token)).await.ok()
    } else {
        None
    };
    let Some(body) = body else {
        respond::json_error(
            session,
            404,
            "not_found",
            "no such challenge",
            ctx.request_id.as_ref(),
        )
        .await?;
        return Ok(true);
    };
    let mut resp = ResponseHeader::build(200, Some(3))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await?;
    Ok(true)
}
