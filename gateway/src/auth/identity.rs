//! Who made a request, and why a request was refused.

use http::{HeaderName, HeaderValue};

pub static X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");
pub static X_USER_EMAIL: HeaderName = HeaderName::from_static("x-user-email");
pub static X_USER_ROLE: HeaderName = HeaderName::from_static("x-user-role");

/// A verified identity. The upstream headers are built once, when the token or key
/// is first verified, so cached identities cost no allocation per request.
#[derive(Debug)]
pub struct Identity {
    pub subject: String,
    pub roles: Vec<String>,
    pub jti: Option<String>,
    /// Unix seconds; `u64::MAX` for API keys.
    pub exp: u64,
    pub kind: IdentityKind,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKind {
    Jwt,
    ApiKey,
}

impl Identity {
    pub fn new(
        subject: String,
        email: Option<&str>,
        roles: Vec<String>,
        jti: Option<String>,
        exp: u64,
        kind: IdentityKind,
    ) -> Self {
        let mut headers = Vec::with_capacity(3);
        // Values that are not valid header text are left out rather than mangled.
        if let Ok(v) = HeaderValue::from_str(&subject) {
            headers.push((X_USER_ID.clone(), v));
        }
        if let Some(Ok(v)) = email.map(HeaderValue::from_str) {
            headers.push((X_USER_EMAIL.clone(), v));
        }
        if !roles.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&roles.join(",")) {
                headers.push((X_USER_ROLE.clone(), v));
            }
        }
        Identity {
            subject,
            roles,
            jti,
            exp,
            kind,
            headers,
        }
    }

    pub fn has_any_role(&self, wanted: &[String]) -> bool {
        wanted.is_empty() || wanted.iter().any(|w| self.roles.iter().any(|r| r == w))
    }
}

// Defined with the jail settings that name its reasons (`config::protect`):
// the config is the bottom layer and names nothing above it.
pub use crate::config::Reject;
