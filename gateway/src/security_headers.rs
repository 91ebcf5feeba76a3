//! Security headers per host: `X-Content-Type-Options`, `X-Frame-Options`,
//! `Referrer-Policy`, optional CSP, and HSTS on HTTPS responses only. An upstream's
//! own value wins unless the host says `override: true`.

use http::HeaderMap;
use pingora::prelude::*;

use crate::config::SecurityHeaders;

pub fn apply(h: &SecurityHeaders, https: bool, resp: &mut HeaderMap) -> Result<()> {
    for (name, value) in &h.always {
        if h.override_upstream || !resp.contains_key(name) {
            crate::head::set(resp, name, value.clone())?;
        }
    }
    if https {
        if let Some(v) = &h.hsts {
            if h.override_upstream || !resp.contains_key(http::header::STRICT_TRANSPORT_SECURITY) {
                crate::head::set(resp, &http::header::STRICT_TRANSPORT_SECURITY, v.clone())?;
            }
        }
    }
    Ok(())
}
