//! CORS per route or host: preflights answered at the gateway, response headers for
//! allowed origins, nothing at all for other origins.

use http::{HeaderMap, HeaderValue, Method};
use pingora::http::ResponseHeader;
use pingora::prelude::*;

use crate::config::{CorsConfig, OriginPattern};

pub fn origin_allowed(cfg: &CorsConfig, origin: &str) -> bool {
    let o = origin.trim_end_matches('/');
    cfg.origins.iter().any(|p| match p {
        OriginPattern::Any => true,
        OriginPattern::Exact(e) => e.eq_ignore_ascii_case(o),
        OriginPattern::Subdomains { scheme, suffix } => {
            o.split_once("://").is_some_and(|(s, host)| {
                s.eq_ignore_ascii_case(scheme)
                    && host.len() > suffix.len()
                    && host.to_ascii_lowercase().ends_with(suffix.as_str())
                    && !host.contains('/')
            })
        }
    })
}

/// Is this an `OPTIONS` preflight (with `Origin` and `Access-Control-Request-Method`)?
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(http::header::ORIGIN)
        && headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The preflight answer: 204 with the CORS headers for an allowed origin, 204
/// without any for a refused one (the browser then blocks the request).
pub fn preflight_response(cfg: &CorsConfig, headers: &HeaderMap) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(204, Some(8))?;
    resp.insert_header(
        http::header::VARY,
        "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
    )?;
    let origin = headers
        .get(http::header::ORIGIN)
        .and_then(|o| o.to_str().ok());
    if let Some(origin) = origin.filter(|o| origin_allowed(cfg, o)) {
        let value = HeaderValue::from_str(origin).or_err(ErrorType::InternalError, "origin")?;
        resp.insert_header(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, value)?;
        resp.insert_header(
            http::header::ACCESS_CONTROL_ALLOW_METHODS,
            cfg.methods.clone(),
        )?;
        let allow_headers = cfg.headers.clone().or_else(|| {
            // Without a configured list, allow what the browser asked for.
            headers
                .get(http::header::ACCESS_CONTROL_REQUEST_HEADERS)
                .cloned()
        });
        if let Some(h) = allow_headers {
            resp.insert_header(http::header::ACCESS_CONTROL_ALLOW_HEADERS, h)?;
        }
        if cfg.credentials {
            resp.insert_header(http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true")?;
        }
        resp.insert_header(http::header::ACCESS_CONTROL_MAX_AGE, cfg.max_age.clone())?;
    }
    resp.insert_header(http::header::CONTENT_LENGTH, 0)?;
    Ok(resp)
}

/// Adds CORS headers to an actual response when the request's origin is allowed.
pub fn decorate(
    cfg: &CorsConfig,
    origin: Option<&HeaderValue>,
    resp: &mut ResponseHeader,
) -> Result<()> {
    let Some(origin) = origin else { return Ok(()) };
    let allowed = origin.to_str().is_ok_and(|o| origin_allowed(cfg, o));
    resp.append_header(http::header::VARY, "Origin")?;
    if !allowed {
        // Never pass along an upstream's own CORS grant for a refused origin.
        resp.remove_header(&http::header::ACCESS_CONTROL_ALLOW_ORIGIN);
        resp.remove_header(&http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS);
        return Ok(());
    }
    resp.insert_header(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())?;
    if cfg.credentials {
        resp.insert_header(http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true")?;
    }
    if let Some(e) = &cfg.expose {
        resp.insert_header(http::header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(origins: Vec<OriginPattern>) -> CorsConfig {
        CorsConfig {
            origins,
            methods: HeaderValue::from_static("GET"),
            headers: None,
            expose: None,
            credentials: false,
            max_age: HeaderValue::from_static("600"),
        }
    }

    #[test]
    fn origin_patterns() {
        let c = cfg(vec![
            OriginPattern::Exact("https://galion.app".into()),
            OriginPattern::Subdomains {
                scheme: "https".into(),
                suffix: ".galion.app".into(),
            },
        ]);
        assert!(origin_allowed(&c, "https://galion.app"));
        assert!(origin_allowed(&c, "https://studio.galion.app"));
        assert!(!origin_allowed(&c, "http://studio.galion.app"));
        assert!(!origin_allowed(&c, "https://evilgalion.app"));
        assert!(!origin_allowed(&c, "https://galion.app.evil.com"));
        assert!(!origin_allowed(&c, "https://.galion.app"));
        assert!(!origin_allowed(&c, "null"));
    }
}
