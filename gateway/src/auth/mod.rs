//! Access control per route: public, JWT, API key or either, with roles.
//!
//! [`Authenticator`] is built per configuration and reused across reloads while the
//! `auth:` section is unchanged (keeping fetched keys, the token cache and known
//! revocations). [`AuthService`] refreshes keys and polls revocations in the
//! background.

pub mod cache;
pub mod identity;
pub mod jwt;
pub mod keys;
pub mod revocation;

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use identity::{Identity, IdentityKind, Reject};

use crate::config::{AccessRule, ApiKeyConfig, AuthConfig, AuthMode};
use crate::fields::Fields;

pub struct Authenticator {
    pub config: AuthConfig,
    pub jwt: Option<jwt::JwtVerifier>,
    pub revocations: Option<revocation::Revocations>,
    api_keys: Vec<(ApiKeyConfig, Arc<Identity>)>,
    rejected: Vec<IntCounter>,
}

impl Authenticator {
    pub fn new(config: AuthConfig) -> Self {
        let api_keys = config
            .api_keys
            .iter()
            .map(|k| {
                let id = Identity::new(
                    format!("apikey:{}", k.name),
                    None,
                    k.roles.clone(),
                    None,
                    u64::MAX,
                    IdentityKind::ApiKey,
                );
                (k.clone(), Arc::new(id))
            })
            .collect();
        let m = &crate::metrics::metrics().auth_rejected;
        Authenticator {
            jwt: config.jwt.clone().map(jwt::JwtVerifier::new),
            // Revocations are kept for the verifier's leeway after `exp` (issue 21).
            revocations: config.revocation.clone().map(|r| {
                let leeway = config.jwt.as_ref().map_or(Duration::ZERO, |j| j.leeway);
                revocation::Revocations::new(r, leeway)
            }),
            api_keys,
            rejected: Reject::ALL
                .iter()
                .map(|r| m.with_label_values(&[r.as_str()]))
                .collect(),
            config,
        }
    }

    pub fn count(&self, r: Reject) {
        if let Some(c) = Reject::ALL
            .iter()
            .position(|x| *x == r)
            .and_then(|i| self.rejected.get(i))
        {
            c.inc();
        }
    }

    /// Checks a request against a route's rule. `Ok(None)` for public routes.
    pub async fn check(
        &self,
        headers: &impl Fields,
        rule: &AccessRule,
    ) -> Result<Option<Arc<Identity>>, Reject> {
        if let Some(decided) = self.check_cached(headers, rule) {
            return decided;
        }
        // A bearer token not verified before (both modes that reach here).
        let id = self.jwt_identity(headers).await;
        admit(id, rule)
    }

    /// [`Authenticator::check`] without waiting: `None` only for a bearer
    /// token that is not in the verified-token cache (its check may fetch
    /// keys). Every other request, including each refusal, is decided here, so
    /// the usual request (a cached token, an API key) builds no future.
    pub fn check_cached(
        &self,
        headers: &impl Fields,
        rule: &AccessRule,
    ) -> Option<Result<Option<Arc<Identity>>, Reject>> {
        let id = match rule.mode {
            AuthMode::Public => return Some(Ok(None)),
            AuthMode::Jwt => self.cached_jwt_identity(headers)?,
            AuthMode::ApiKey => self.api_key_identity(headers),
            AuthMode::Any => {
                if headers.has("x-api-key") {
                    self.api_key_identity(headers)
                } else {
                    self.cached_jwt_identity(headers)?
                }
            }
        };
        Some(admit(id, rule))
    }

    /// The bearer token's identity when the verified-token cache decides it.
    fn cached_jwt_identity(&self, headers: &impl Fields) -> Option<Result<Arc<Identity>, Reject>> {
        let Some(verifier) = self.jwt.as_ref() else {
            return Some(Err(Reject::Missing));
        };
        let cookie = verifier.config.cookie.as_deref();
        // The usual request: one `Authorization: Bearer` whose token is in the
        // cache. Anything else (a miss included) takes the whole extraction,
        // so every refusal keeps its reason.
        if let Some(Ok(id)) = cookie
            .is_none()
            .then(|| plain_bearer(headers))
            .flatten()
            .and_then(|t| verifier.cached(t))
        {
            return Some(self.unrevoked(id));
        }
        let token = match bearer_token(headers, cookie) {
            Ok(t) => t,
            Err(r) => return Some(Err(r)),
        };
        let id = verifier.cached(token.as_bytes())?;
        Some(id.and_then(|id| self.unrevoked(id)))
    }

    fn unrevoked(&self, id: Arc<Identity>) -> Result<Arc<Identity>, Reject> {
        if let (Some(jti), Some(rev)) = (&id.jti, &self.revocations) {
            if rev.is_revoked(jti) {
                return Err(Reject::Revoked);
            }
        }
        Ok(id)
    }

    async fn jwt_identity(&self, headers: &impl Fields) -> Result<Arc<Identity>, Reject> {
        let verifier = self.jwt.as_ref().ok_or(Reject::Missing)?;
        let token = bearer_token(headers, verifier.config.cookie.as_deref())?;
        let id = verifier.verify(token).await?;
        self.unrevoked(id)
    }

    fn api_key_identity(&self, headers: &impl Fields) -> Result<Arc<Identity>, Reject> {
        let mut values = headers.all("x-api-key");
        let key = values.next().ok_or(Reject::Missing)?;
        if values.next().is_some() {
            return Err(Reject::Duplicate);
        }
        if key.len() > 1024 {
            return Err(Reject::Oversized);
        }
        let digest: [u8; 32] = Sha256::digest(key).into();
        // Compare against every key so the time does not depend on which matched.
        let mut found = None;
        for (k, id) in &self.api_keys {
            if bool::from(k.sha256.ct_eq(&digest)) {
                found = Some(id.clone());
            }
        }
        found.ok_or(Reject::BadApiKey)
    }
}

/// An identity (or a refusal) against the route's roles.
fn admit(
    id: Result<Arc<Identity>, Reject>,
    rule: &AccessRule,
) -> Result<Option<Arc<Identity>>, Reject> {
    let id = id?;
    if !id.has_any_role(&rule.roles) {
        return Err(Reject::Forbidden);
    }
    Ok(Some(id))
}

/// The token of the one `Authorization: Bearer <token>` field, as bytes, for a
/// cache lookup: `None` when the field is absent, repeated or of another form.
/// Where it gives a token, [`bearer_token`] gives the same one for every token
/// the cache can hold (those are ASCII without spaces); any other case is left
/// to [`bearer_token`], which alone decides refusals.
fn plain_bearer(headers: &impl Fields) -> Option<&[u8]> {
    let mut auth = headers.all("authorization");
    let v = auth.next()?;
    if auth.next().is_some() {
        return None;
    }
    let scheme = v.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = v[7..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// The bearer token from `Authorization` or the configured cookie; both at once, or
/// several `Authorization` headers, are refused.
pub fn bearer_token<'h>(
    headers: &'h impl Fields,
    cookie: Option<&'h str>,
) -> Result<&'h str, Reject> {
    let mut auth = headers.all("authorization");
    let from_header = match auth.next() {
        Some(v) => {
            if auth.next().is_some() {
                return Err(Reject::Duplicate);
            }
            let v = std::str::from_utf8(v).map_err(|_| Reject::Malformed)?;
            let (scheme, token) = v.split_once(' ').ok_or(Reject::Malformed)?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(Reject::Missing);
            }
            Some(token.trim())
        }
        None => None,
    };
    let from_cookie = match cookie {
        Some(name) => cookie_value(headers, name)?,
        None => None,
    };
    match (from_header, from_cookie) {
        (Some(_), Some(_)) => Err(Reject::Duplicate),
        (Some(t), None) | (None, Some(t)) if !t.is_empty() => Ok(t),
        _ => Err(Reject::Missing),
    }
}

fn cookie_value<'h>(headers: &'h impl Fields, name: &'h str) -> Result<Option<&'h str>, Reject> {
    let mut found = None;
    for line in headers.all("cookie") {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        for pair in line.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=') {
                if k == name {
                    if found.is_some() {
                        return Err(Reject::Duplicate);
                    }
                    found = Some(v.trim_matches('"'));
                }
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::HeaderMap;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn token_extraction() {
        assert_eq!(
            bearer_token(&headers(&[("authorization", "Bearer abc")]), None),
            Ok("abc")
        );
        assert_eq!(
            bearer_token(&headers(&[("authorization", "bearer abc")]), None),
            Ok("abc")
        );
        assert_eq!(bearer_token(&headers(&[]), None), Err(Reject::Missing));
        assert_eq!(
            bearer_token(&headers(&[("authorization", "Basic x")]), None),
            Err(Reject::Missing)
        );
        assert_eq!(
            bearer_token(&headers(&[("authorization", "Bearer")]), None),
            Err(Reject::Malformed)
        );
        assert_eq!(
            bearer_token(&headers(&[("cookie", "s=tok; b=1")]), Some("s")),
            Ok("tok")
        );
        assert_eq!(
            bearer_token(
                &headers(&[("cookie", "s=a"), ("authorization", "Bearer b")]),
                Some("s")
            ),
            Err(Reject::Duplicate)
        );
        assert_eq!(
            bearer_token(&headers(&[("cookie", "s=a; s=b")]), Some("s")),
            Err(Reject::Duplicate)
        );
        assert_eq!(
            bearer_token(
                &headers(&[("authorization", "Bearer a"), ("authorization", "Bearer a")]),
                None
            ),
            Err(Reject::Duplicate)
        );
    }

    proptest::proptest! {
        /// The cache lookup's extraction agrees with the whole one wherever
        /// the latter gives a token the cache could hold (ASCII, no spaces).
        #[test]
        fn the_plain_extraction_agrees(v in "([Bb][Ee][Aa][Rr][Ee][Rr]|Basic)?[ \t]{0,2}[A-Za-z0-9._ \t-]{0,20}") {
            if let Ok(hv) = http::HeaderValue::from_str(&v) {
                let mut h = HeaderMap::new();
                h.insert(http::header::AUTHORIZATION, hv);
                let whole = bearer_token(&h, None).ok().map(str::as_bytes);
                let plain = plain_bearer(&h);
                if let Some(t) = plain {
                    if !t.contains(&b' ') && !t.contains(&b'\t') {
                        proptest::prop_assert_eq!(Some(t), whole);
                    }
                }
                if let Some(t) = whole {
                    if !t.contains(&b' ') && !t.contains(&b'\t') {
                        proptest::prop_assert_eq!(plain, Some(t));
                    }
                }
            }
        }

        #[test]
        fn extraction_never_panics(v in "\\PC{0,200}") {
            if let Ok(hv) = http::HeaderValue::from_str(&v) {
                let mut h = HeaderMap::new();
                h.insert(http::header::AUTHORIZATION, hv.clone());
                h.insert(http::header::COOKIE, hv);
                let _ = bearer_token(&h, Some("s"));
            }
        }
    }
}
