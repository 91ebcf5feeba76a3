//! A `static` route's answer, once its policies passed: the file
//! ([`crate::files`]) or the refusal, worded as the gateway's other errors,
//! with the response edits every answer of the route gets (request id,
//! security headers, `RateLimit` fields, CORS, `response_headers`).

use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use super::{Env, LocalReply, Reply, Request, RequestCtx};
use crate::config::StaticSite;
use crate::fields::{Edits, Fields};
use crate::files::{self, Body, FileRequest, Refusal};
use crate::routing::Route;

/// What the transport writes: `status`, `fields` then `edits`, then
/// `Content-Length` from `body` (none on a 304) and, unless the request is
/// `HEAD`, the body.
#[derive(Debug)]
pub struct FileReply {
    pub status: u16,
    pub fields: Vec<(HeaderName, HeaderValue)>,
    pub edits: Edits,
    pub body: Body,
}

pub async fn serve<F: Fields>(
    env: &Env<'_>,
    req: &Request<'_, F>,
    ctx: &mut RequestCtx,
    route: &Route,
    site: &Arc<StaticSite>,
) -> FileReply {
    ctx.local = Some(LocalReply::RouteAction);
    let routed = ctx.normalized_path().unwrap_or(req.path);
    let field = |n: &str| req.fields.get(n).map(<[u8]>::to_vec);
    let freq = FileRequest {
        method: req.method.clone(),
        path: route
            .rewritten_path(routed)
            .unwrap_or_else(|| routed.to_owned()),
        target: req.target.to_owned(),
        if_none_match: field("if-none-match"),
        if_modified_since: field("if-modified-since"),
        range: field("range"),
        if_range: field("if-range"),
        accept_encoding: field("accept-encoding"),
    };
    // A path looked up within the last second answers from memory, on this
    // thread; anything else takes the file system, on the blocking pool.
    let served = match files::cache::lookup(site, &freq) {
        Some(answer) => Ok(Ok(answer)),
        None => {
            let site = site.clone();
            tokio::task::spawn_blocking(move || files::serve(&site, &freq)).await
        }
    };
    let rid = ctx.request_id.as_ref();
    let (status, fields, body) = match served {
        Ok(Ok(a)) => (a.status, a.fields, a.body),
        Ok(Err(refusal)) => {
            let r = refused(refusal, rid);
            (r.status, r.fields, Body::Bytes(r.body))
        }
        Err(e) => {
            tracing::error!(error = %e, "static file task failed");
            let r = Reply::json_error(
                LocalReply::RouteAction,
                500,
                ("internal_error", "the file could not be read"),
                rid,
                &[],
            );
            (r.status, r.fields, Body::Bytes(r.body))
        }
    };
    let mut edits = Edits::new();
    super::edits::response(ctx, env.https, req.fields, &mut edits);
    FileReply {
        status,
        fields,
        edits,
        body,
    }
}

fn refused(r: Refusal, rid: Option<&HeaderValue>) -> Reply {
    let why = LocalReply::RouteAction;
    match r {
        Refusal::MethodNotAllowed => Reply::method_not_allowed(Some(&files::ALLOW), rid),
        Refusal::BadPath => Reply::json_error(
            why,
            400,
            ("bad_request", "this path cannot name a file"),
            rid,
            &[],
        ),
        Refusal::Hidden | Refusal::NotFound => {
            Reply::json_error(why, 404, ("not_found", "no such file"), rid, &[])
        }
    }
}
