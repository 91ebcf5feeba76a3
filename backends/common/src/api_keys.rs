//! API keys a service accepts in `X-API-Key`, configured like the gateway's
//! `auth.api_keys`: a name and the SHA-256 of the key, never the key itself,
//! so a leaked config file or a log of the settings grants nothing.
//!
//! YAML: `api_keys: [{name: dev-ingest, sha256: <64 hex digits>}]`; the
//! environment form is `name:sha256[,name:sha256…]`.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Longest key hashed; anything longer is refused without work, as at the
/// gateway.
pub const MAX_KEY_BYTES: usize = 1024;

/// One `api_keys` entry of a YAML file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyFile {
    pub name: String,
    /// Hex SHA-256 of the key (`printf %s KEY | sha256sum`).
    pub sha256: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiKeyError {
    #[error("api key {0:?}: sha256 must be 64 hex digits (the key's SHA-256, not the key)")]
    Digest(String),
    #[error("api key {0:?} is listed twice")]
    DuplicateName(String),
    #[error("api keys {0:?} and {1:?} have the same sha256")]
    DuplicateDigest(String, String),
    #[error("expected name:sha256[,name:sha256…], got {0:?}")]
    List(String),
}

/// Parses the environment form `name:sha256[,name:sha256…]` (spaces around
/// items are ignored).
pub fn parse_list(value: &str) -> Result<Vec<ApiKeyFile>, ApiKeyError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let (name, sha256) = item
                .split_once(':')
                .ok_or_else(|| ApiKeyError::List(item.to_string()))?;
            Ok(ApiKeyFile {
                name: name.trim().to_string(),
                sha256: sha256.trim().to_string(),
            })
        })
        .collect()
}

/// Validated keys: names with their digests.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Vec<(String, [u8; 32])>,
}

impl ApiKeys {
    /// Checks the digests and that names and digests are unique. Name rules
    /// are the caller's (they depend on what the name is used for).
    pub fn new(entries: &[ApiKeyFile]) -> Result<ApiKeys, ApiKeyError> {
        let mut keys: Vec<(String, [u8; 32])> = Vec::with_capacity(entries.len());
        for e in entries {
            let mut digest = [0u8; 32];
            hex::decode_to_slice(e.sha256.trim(), &mut digest)
                .map_err(|_| ApiKeyError::Digest(e.name.clone()))?;
            if keys.iter().any(|(n, _)| *n == e.name) {
                return Err(ApiKeyError::DuplicateName(e.name.clone()));
            }
            // Two names for one key would make the name a key resolves to
            // depend on list order.
            if let Some((other, _)) = keys.iter().find(|(_, d)| *d == digest) {
                return Err(ApiKeyError::DuplicateDigest(other.clone(), e.name.clone()));
            }
            keys.push((e.name.clone(), digest));
        }
        Ok(ApiKeys { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(n, _)| n.as_str())
    }

    /// The name of the key `presented`, if it is one. Its digest is compared
    /// with every configured digest in constant time, so the answer's timing
    /// says neither which key matched nor how much of a digest did.
    pub fn lookup(&self, presented: &[u8]) -> Option<&str> {
        if presented.is_empty() || presented.len() > MAX_KEY_BYTES {
            return None;
        }
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for (name, d) in &self.keys {
            if bool::from(d.ct_eq(&digest)) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// sha256("dev-ingest-key"), the dev key of conf/dev.yaml.
    const DEV: &str = "21dd9e3b3f1633b88d69b73906f1a9e594beebd9b616bf89448c0a50a8b4ad10";

    fn entry(name: &str, sha256: &str) -> ApiKeyFile {
        ApiKeyFile {
            name: name.into(),
            sha256: sha256.into(),
        }
    }

    #[test]
    fn looks_keys_up_by_digest() {
        let other = hex::encode(Sha256::digest(b"other-key"));
        let keys = ApiKeys::new(&[entry("dev-ingest", DEV), entry("other", &other)]).unwrap();
        assert_eq!(keys.lookup(b"dev-ingest-key"), Some("dev-ingest"));
        assert_eq!(keys.lookup(b"other-key"), Some("other"));
        assert_eq!(keys.lookup(b"dev-ingest-ke"), None);
        assert_eq!(
            keys.lookup(DEV.as_bytes()),
            None,
            "the digest is not the key"
        );
        assert_eq!(keys.lookup(b""), None);
        assert_eq!(keys.lookup(&[b'a'; MAX_KEY_BYTES + 1]), None);
        assert_eq!(ApiKeys::default().lookup(b"dev-ingest-key"), None);
        // Upper-case hex is a digest too.
        let upper = ApiKeys::new(&[entry("dev-ingest", &DEV.to_uppercase())]).unwrap();
        assert_eq!(upper.lookup(b"dev-ingest-key"), Some("dev-ingest"));
        assert_eq!(format!("{keys:?}"), r#"["dev-ingest", "other"]"#);
    }

    #[test]
    fn refuses_bad_lists() {
        assert_eq!(
            ApiKeys::new(&[entry("k", "dev-ingest-key")]).err(),
            Some(ApiKeyError::Digest("k".into()))
        );
        assert_eq!(
            ApiKeys::new(&[entry("k", &DEV[..62])]).err(),
            Some(ApiKeyError::Digest("k".into()))
        );
        assert_eq!(
            ApiKeys::new(&[entry("k", DEV), entry("k", &"0".repeat(64))]).err(),
            Some(ApiKeyError::DuplicateName("k".into()))
        );
        assert_eq!(
            ApiKeys::new(&[entry("a", DEV), entry("b", DEV)]).err(),
            Some(ApiKeyError::DuplicateDigest("a".into(), "b".into()))
        );
    }

    #[test]
    fn parses_the_environment_form() {
        assert_eq!(
            parse_list(&format!(" dev-ingest:{DEV} , b:{DEV},")).unwrap(),
            vec![entry("dev-ingest", DEV), entry("b", DEV)]
        );
        assert_eq!(parse_list("").unwrap(), vec![]);
        assert_eq!(
            parse_list("just-a-key").err(),
            Some(ApiKeyError::List("just-a-key".into()))
        );
    }

    #[test]
    fn reads_yaml_entries() {
        let keys: Vec<ApiKeyFile> =
            serde_norway::from_str(&format!("- {{name: dev-ingest, sha256: {DEV}}}\n")).unwrap();
        assert_eq!(keys, vec![entry("dev-ingest", DEV)]);
        // The gateway's `roles` do not belong here: refused, not ignored.
        assert!(serde_norway::from_str::<Vec<ApiKeyFile>>(&format!(
            "- {{name: a, sha256: {DEV}, roles: [service]}}\n"
        ))
        .is_err());
    }
}
