//! Cache hits as local answers, for every transport: whether a request may
//! be answered from the response cache without pingora-cache's machinery,
//! and the stored object when it is fresh. The transport writes the stored
//! head as it is, with the [`hit_edits`] and the pipeline's response edits.
//!
//! What is left to pingora-cache (a miss, a stale or varying object,
//! conditional and range requests, compressed routes) is proxied by
//! pingora's transport, which stores and revalidates.

use std::time::SystemTime;

use http::{HeaderName, HeaderValue};

use super::{Request, RequestCtx};
use crate::cache::{self, store::FreshHit};
use crate::fields::{Edit, Edits, Fields};
use crate::routing::Route;

pub static X_CACHE_STATUS: HeaderName = HeaderName::from_static("x-cache-status");
static HIT: HeaderValue = HeaderValue::from_static("HIT");
static BYTES: HeaderValue = HeaderValue::from_static("bytes");

/// The fresh stored answer to `req`, if the cache may give it. On a
/// `private` route the caller's identity is part of the key: call it after
/// access control there.
pub fn fresh_hit<F: Fields>(
    req: &Request<'_, F>,
    ctx: &mut RequestCtx,
    route: &Route,
) -> Option<FreshHit> {
    let rc = route.cache.as_ref()?;
    // Routes that vary by request headers are left to pingora, which
    // compares the variance on every lookup (entries stored before a reload
    // added `vary_headers` carry none).
    if route.compress.is_some()
        || !rc.vary_headers.is_empty()
        || cache::bypass(req.method, req.fields, rc).is_some()
        || !cache::fast_path_allowed(req.fields)
    {
        return None;
    }
    let c = cache::get()?;
    let query = req.target.split_once('?').map(|(_, q)| q);
    let identity = ctx.identity.as_deref().map(|i| i.subject.as_str());
    let key = cache::request_key(&route.host, req.path, query, rc, identity)?;
    let hit = c.store.fresh_hit(&key, SystemTime::now(), c.eviction)?;
    ctx.cache_status = Some("HIT");
    Some(hit)
}

/// What a hit adds to the stored head before the pipeline's response edits,
/// as pingora-cache's hit path does: `Age`, and `Accept-Ranges: bytes` on a
/// 200 (a range request is not answered here).
pub fn hit_edits(hit: &FreshHit, out: &mut Edits) {
    out.push(Edit::Set(http::header::AGE, HeaderValue::from(hit.age)));
    if hit.header().status == http::StatusCode::OK {
        out.push(Edit::Set(http::header::ACCEPT_RANGES, BYTES.clone()));
    }
}

/// `X-Cache-Status: HIT`, after every other edit (a route's header rules
/// do not hide it).
pub fn status_edit(out: &mut Edits) {
    out.push(Edit::Set(X_CACHE_STATUS.clone(), HIT.clone()));
}
