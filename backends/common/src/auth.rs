//! Request credentials shared by the services: bearer tokens and the
//! service-to-service token.

use axum::http::{header, HeaderMap};
use subtle::ConstantTimeEq;

/// The token of an `Authorization: Bearer …` header, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

/// The shared secret that auth/users present to analytics (and the gateway
/// to auth's `/revocations`). Compared in constant time.
#[derive(Clone)]
pub struct ServiceToken(String);

impl ServiceToken {
    pub fn new(token: String) -> Self {
        ServiceToken(token)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

impl std::fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceToken(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn parses_bearer() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn compares_tokens() {
        let t = ServiceToken::new("s3cret".into());
        assert!(t.matches("s3cret"));
        assert!(!t.matches("s3cre"));
        assert!(!format!("{t:?}").contains("s3cret"));
    }
}
