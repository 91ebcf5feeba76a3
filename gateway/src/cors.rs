//! CORS per route or host: preflights answered at the gateway, response headers for
//! allowed origins, nothing at all for other origins.

use http::{HeaderName, HeaderValue, Method};

use crate::config::{CorsConfig, OriginPattern};
use crate::fields::{Edit, Edits, Fields};

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
pub fn is_preflight(method: &Method, fields: &impl Fields) -> bool {
    method == Method::OPTIONS && fields.has("origin") && fields.has("access-control-request-method")
}

/// The origin, when it is one the route allows.
fn allowed_origin<'f>(cfg: &CorsConfig, origin: Option<&'f [u8]>) -> Option<&'f str> {
    origin
        .and_then(|o| std::str::from_utf8(o).ok())
        .filter(|o| origin_allowed(cfg, o))
}

/// The fields of the preflight answer (a 204): the CORS grant for an allowed
/// origin, nothing for a refused one (the browser then blocks the request).
pub fn preflight_fields(cfg: &CorsConfig, fields: &impl Fields) -> Vec<(HeaderName, HeaderValue)> {
    static VARY: HeaderValue = HeaderValue::from_static(
        "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
    );
    let mut out = Vec::with_capacity(6);
    out.push((http::header::VARY, VARY.clone()));
    let value =
        allowed_origin(cfg, fields.get("origin")).and_then(|o| HeaderValue::from_str(o).ok());
    if let Some(value) = value {
        out.push((http::header::ACCESS_CONTROL_ALLOW_ORIGIN, value));
        out.push((
            http::header::ACCESS_CONTROL_ALLOW_METHODS,
            cfg.methods.clone(),
        ));
        let allow_headers = cfg.headers.clone().or_else(|| {
            // Without a configured list, allow what the browser asked for.
            fields
                .get("access-control-request-headers")
                .and_then(|h| HeaderValue::from_bytes(h).ok())
        });
        if let Some(h) = allow_headers {
            out.push((http::header::ACCESS_CONTROL_ALLOW_HEADERS, h));
        }
        if cfg.credentials {
            out.push((http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE.clone()));
        }
        out.push((http::header::ACCESS_CONTROL_MAX_AGE, cfg.max_age.clone()));
    }
    out
}

static TRUE: HeaderValue = HeaderValue::from_static("true");

/// The edits of an actual response: the grant when the request's origin is
/// allowed; for a refused one, an upstream's own grant is taken away.
pub fn response_edits(cfg: &CorsConfig, origin: Option<&[u8]>, out: &mut Edits) {
    static ORIGIN: HeaderValue = HeaderValue::from_static("Origin");
    if origin.is_none() {
        return;
    }
    out.push(Edit::Append(http::header::VARY, ORIGIN.clone()));
    let Some(value) = allowed_origin(cfg, origin).and_then(|o| HeaderValue::from_str(o).ok())
    else {
        out.push(Edit::Remove(http::header::ACCESS_CONTROL_ALLOW_ORIGIN));
        out.push(Edit::Remove(http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
        return;
    };
    out.push(Edit::Set(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, value));
    if cfg.credentials {
        out.push(Edit::Set(
            http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            TRUE.clone(),
        ));
    }
    if let Some(e) = &cfg.expose {
        out.push(Edit::Set(
            http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
            e.clone(),
        ));
    }
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
