//! Security headers per host: `X-Content-Type-Options`, `X-Frame-Options`,
//! `Referrer-Policy`, optional CSP, and HSTS on HTTPS responses only. An upstream's
//! own value wins unless the host says `override: true`.

use pingora::http::ResponseHeader;
use pingora::prelude::*;

use crate::config::SecurityHeaders;

pub fn apply(h: &SecurityHeaders, https: bool, resp: &mut ResponseHeader) -> Result<()> {
    for (name, value) in &h.always {
        if h.override_upstream || !resp.headers.contains_key(name) {
            resp.insert_header(name.clone(), value.clone())?;
        }
    }
    if https {
        if let Some(v) = &h.hsts {
            if h.override_upstream
                || !resp
                    .headers
                    .contains_key(http::header::STRICT_TRANSPORT_SECURITY)
            {
                resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, v.clone())?;
            }
        }
    }
    Ok(())
}
