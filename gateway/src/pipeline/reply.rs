//! Answers the gateway gives itself, as data: status, fields and body. Each
//! transport writes a [`Reply`] its own way (pingora's `ResponseHeader`, the
//! fast path's bytes); what the client gets is decided here once.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use super::LocalReply;
use crate::config::{FixedResponse, RatePolicy};
use crate::limits::{headers as rl, Outcome};

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// After `Content-Length`, which the transport writes from `body`.
    pub fields: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    /// The connection closes after this answer: the request was broken.
    /// Refusals of well-formed requests (429, 401, a `respond` route) keep it.
    pub close: bool,
    pub why: LocalReply,
}

static APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
static NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// `{"error":{"code","message","request_id"}}`, the body of every error the
/// gateway answers itself.
pub fn error_body(code: &str, message: &str, request_id: Option<&HeaderValue>) -> String {
    let rid = request_id.and_then(|v| v.to_str().ok()).unwrap_or("");
    serde_json::json!({
        "error": { "code": code, "message": message, "request_id": rid }
    })
    .to_string()
}

impl Reply {
    /// A JSON error with `extra` fields (`Allow`, `Retry-After`…).
    pub fn json_error(
        why: LocalReply,
        status: u16,
        (code, message): (&str, &str),
        request_id: Option<&HeaderValue>,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Reply {
        let body = Bytes::from(error_body(code, message, request_id));
        let mut fields = Vec::with_capacity(3 + extra.len());
        fields.push((http::header::CONTENT_TYPE, APPLICATION_JSON.clone()));
        fields.push((http::header::CACHE_CONTROL, NO_STORE.clone()));
        fields.extend(extra.iter().cloned());
        if let Some(v) = request_id {
            fields.push((X_REQUEST_ID.clone(), v.clone()));
        }
        Reply {
            status,
            fields,
            body,
            close: true,
            why,
        }
    }

    /// The answer for `why` when it has no fields of its own (404, 400, 413…).
    pub fn error(why: LocalReply, request_id: Option<&HeaderValue>) -> Reply {
        let (status, code, msg) = match why {
            LocalReply::UnknownHost => (404, "unknown_host", "no site is served under this name"),
            LocalReply::NoRoute => (404, "not_found", "no route matches this path"),
            LocalReply::MethodNotAllowed => {
                (405, "method_not_allowed", "this method is not allowed here")
            }
            LocalReply::HeadersTooLarge => {
                (431, "headers_too_large", "request headers are too large")
            }
            LocalReply::BodyTooLarge => (413, "payload_too_large", "the request body is too large"),
            LocalReply::Banned => (403, "forbidden", "access from this address is blocked"),
            LocalReply::BadForwarding => (
                400,
                "bad_request",
                "the forwarding chain of this request cannot be read",
            ),
            LocalReply::TooSlow => (
                408,
                "request_timeout",
                "the request took too long to arrive",
            ),
            LocalReply::BadRequest
            | LocalReply::Unauthorized
            | LocalReply::Forbidden
            | LocalReply::Preflight
            | LocalReply::Redirect
            | LocalReply::Acme
            | LocalReply::RateLimited
            | LocalReply::RouteAction
            | LocalReply::Dropped => (400, "bad_request", "malformed request"),
        };
        Reply::json_error(why, status, (code, msg), request_id, &[])
    }

    /// 405 with the path's `Allow`.
    pub fn method_not_allowed(
        allow: Option<&HeaderValue>,
        request_id: Option<&HeaderValue>,
    ) -> Reply {
        let extra: &[(HeaderName, HeaderValue)] = match allow {
            Some(a) => &[(http::header::ALLOW, a.clone())],
            None => &[],
        };
        Reply::json_error(
            LocalReply::MethodNotAllowed,
            405,
            ("method_not_allowed", "this method is not allowed here"),
            request_id,
            extra,
        )
    }

    /// A `deny` route: the same answer as no route (404) or a refusal.
    pub fn deny(status: u16, request_id: Option<&HeaderValue>) -> Reply {
        let text = match status {
            403 => ("forbidden", "you are not allowed to do this"),
            410 => ("gone", "this resource is gone"),
            _ => ("not_found", "no route matches this path"),
        };
        Reply::json_error(LocalReply::RouteAction, status, text, request_id, &[])
    }

    /// 401/403 for access control; the reason is never told to the client.
    pub fn auth(forbidden: bool, request_id: Option<&HeaderValue>) -> Reply {
        let (why, status, text, challenge) = if forbidden {
            (
                LocalReply::Forbidden,
                403,
                ("forbidden", "you are not allowed to do this"),
                r#"Bearer realm="galion", error="insufficient_scope""#,
            )
        } else {
            (
                LocalReply::Unauthorized,
                401,
                ("unauthorized", "valid credentials are required"),
                r#"Bearer realm="galion", error="invalid_token""#,
            )
        };
        let extra = [(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        )];
        Reply {
            close: false,
            ..Reply::json_error(why, status, text, request_id, &extra)
        }
    }

    /// 429 with `Retry-After` and the rate-limit fields. The connection stays
    /// open: a throttled client is not a broken one.
    pub fn rate_limited(
        policy: &RatePolicy,
        outcome: &Outcome,
        request_id: Option<&HeaderValue>,
    ) -> Reply {
        static POLICY: HeaderName = HeaderName::from_static(rl::RATELIMIT_POLICY);
        static LIMIT: HeaderName = HeaderName::from_static(rl::RATELIMIT);
        let extra = [
            (
                http::header::RETRY_AFTER,
                HeaderValue::from(rl::retry_after(outcome)),
            ),
            (POLICY.clone(), policy.policy_header.clone()),
            (LIMIT.clone(), rl::ratelimit_value(policy, outcome)),
        ];
        Reply {
            close: false,
            ..Reply::json_error(
                LocalReply::RateLimited,
                429,
                ("rate_limited", "too many requests: slow down"),
                request_id,
                &extra,
            )
        }
    }

    /// The CORS preflight answer (204), with the fields `cors` decided.
    pub fn preflight(fields: Vec<(HeaderName, HeaderValue)>) -> Reply {
        Reply {
            status: 204,
            fields,
            body: Bytes::new(),
            close: false,
            why: LocalReply::Preflight,
        }
    }

    /// A `respond` route's fixed answer.
    pub fn fixed(f: &FixedResponse, request_id: Option<&HeaderValue>) -> Reply {
        let mut fields = vec![(http::header::CONTENT_TYPE, f.content_type.clone())];
        if let Some(v) = request_id {
            fields.push((X_REQUEST_ID.clone(), v.clone()));
        }
        Reply {
            status: f.status,
            fields,
            body: f.body.clone(),
            close: false,
            why: LocalReply::RouteAction,
        }
    }

    /// A redirect (a `redirect` route, or plain HTTP to HTTPS).
    pub fn redirect(
        why: LocalReply,
        status: u16,
        location: &str,
        request_id: Option<&HeaderValue>,
    ) -> Reply {
        let mut fields = Vec::with_capacity(2);
        if let Ok(v) = HeaderValue::from_str(location) {
            fields.push((http::header::LOCATION, v));
        }
        if let Some(v) = request_id {
            fields.push((X_REQUEST_ID.clone(), v.clone()));
        }
        Reply {
            status,
            fields,
            body: Bytes::new(),
            close: false,
            why,
        }
    }
}
