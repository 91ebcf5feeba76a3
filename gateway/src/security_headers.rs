//! Security headers per host: `X-Content-Type-Options`, `X-Frame-Options`,
//! `Referrer-Policy`, optional CSP, and HSTS on HTTPS responses only. An upstream's
//! own value wins unless the host says `override: true`.

use crate::config::SecurityHeaders;
use crate::fields::{Edit, Edits};

pub fn edits(h: &SecurityHeaders, https: bool, out: &mut Edits) {
    let edit = |n: &http::HeaderName, v: &http::HeaderValue| {
        if h.override_upstream {
            Edit::Set(n.clone(), v.clone())
        } else {
            Edit::Default(n.clone(), v.clone())
        }
    };
    for (name, value) in &h.always {
        out.push(edit(name, value));
    }
    if https {
        if let Some(v) = &h.hsts {
            out.push(edit(&http::header::STRICT_TRANSPORT_SECURITY, v));
        }
    }
}
