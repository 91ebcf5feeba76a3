//! The IETF rate-limit header fields (draft-ietf-httpapi-ratelimit-headers):
//! `RateLimit-Policy: "name";q=100;w=60` and `RateLimit: "name";r=42;t=12`, plus
//! `Retry-After` on 429.

use http::{HeaderName, HeaderValue};

use super::Outcome;
use crate::config::RatePolicy;
use crate::fields::{Edit, Edits};

pub const RATELIMIT: &str = "ratelimit";
pub const RATELIMIT_POLICY: &str = "ratelimit-policy";

fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

/// `RateLimit` for the outcome: remaining requests and seconds until the quota is
/// whole again (or, when refused, until the next request can pass).
pub fn ratelimit_value(policy: &RatePolicy, o: &Outcome) -> HeaderValue {
    let t = if o.allowed {
        ceil_secs(o.reset_ns)
    } else {
        ceil_secs(o.retry_after_ns).max(1)
    };
    // Every response of a limited route carries it: built without the
    // formatting machinery, in one allocation of the exact size that the
    // value then owns (`Bytes` from a full `Vec` is not copied again).
    let (mut r, mut s) = (itoa::Buffer::new(), itoa::Buffer::new());
    let parts: [&[u8]; 6] = [
        b"\"",
        policy.name.as_bytes(),
        b"\";r=",
        r.format(o.remaining).as_bytes(),
        b";t=",
        s.format(t).as_bytes(),
    ];
    HeaderValue::from_maybe_shared(bytes::Bytes::from(parts.concat()))
        .unwrap_or_else(|_| HeaderValue::from_static("\"default\";r=0;t=1"))
}

pub fn retry_after(o: &Outcome) -> u64 {
    ceil_secs(o.retry_after_ns).max(1)
}

/// Both fields, for a response.
pub fn edits(policy: &RatePolicy, o: &Outcome, out: &mut Edits) {
    static POLICY: HeaderName = HeaderName::from_static(RATELIMIT_POLICY);
    static LIMIT: HeaderName = HeaderName::from_static(RATELIMIT);
    out.push(Edit::Set(POLICY.clone(), policy.policy_header.clone()));
    out.push(Edit::Set(LIMIT.clone(), ratelimit_value(policy, o)));
}
