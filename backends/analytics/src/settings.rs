//! galion-analytics settings.

use std::path::Path;

use galion_common::api_keys::{self, ApiKeyFile, ApiKeys};
use galion_common::config::{env, env_parse, CommonSettings, ConfigError, FileConfig};

use crate::ingest::RESERVED_SERVICES;

/// `name:sha256[,…]`, replacing the file's `api_keys`; `off` means none.
pub const API_KEYS_VAR: &str = "GALION_ANALYTICS_API_KEYS";

#[derive(Clone, Debug)]
pub struct AnalyticsSettings {
    pub common: CommonSettings,
    /// Largest accepted batch (events per `POST /events`).
    pub max_batch: usize,
    pub max_body_bytes: usize,
    /// Ingestion keys (`X-API-Key`); a key's name is the `service` stamped
    /// on the events it writes.
    pub api_keys: ApiKeys,
}

impl AnalyticsSettings {
    pub fn load(config: Option<&Path>) -> Result<AnalyticsSettings, ConfigError> {
        let file = FileConfig::load(config)?;
        let common = CommonSettings::load("analytics", 7003, &file)?;
        let max_batch = env_parse::<usize>("GALION_ANALYTICS_MAX_BATCH")?
            .or(file.max_batch)
            .unwrap_or(1000)
            .clamp(1, 1000);
        let api_keys = match env(API_KEYS_VAR) {
            Some(v) => {
                let at_fault = |message: String| ConfigError::Env {
                    name: API_KEYS_VAR.into(),
                    message,
                };
                if v.trim() == "off" {
                    ApiKeys::default()
                } else {
                    let entries = api_keys::parse_list(&v).map_err(|e| at_fault(e.to_string()))?;
                    ingestion_keys(&entries).map_err(at_fault)?
                }
            }
            None => {
                ingestion_keys(file.api_keys.as_deref().unwrap_or_default()).map_err(|message| {
                    ConfigError::File {
                        path: config.map(|p| p.display().to_string()).unwrap_or_default(),
                        message: format!("api_keys: {message}"),
                    }
                })?
            }
        };
        if !api_keys.is_empty() {
            tracing::info!(keys = ?api_keys, "ingestion API keys");
        }
        Ok(AnalyticsSettings {
            common,
            max_batch,
            max_body_bytes: 8 * 1024 * 1024,
            api_keys,
        })
    }

    pub fn for_tests(database_url: &str, data_dir: &Path) -> AnalyticsSettings {
        AnalyticsSettings {
            common: CommonSettings::for_tests(database_url, data_dir),
            max_batch: 1000,
            max_body_bytes: 8 * 1024 * 1024,
            api_keys: ApiKeys::default(),
        }
    }
}

/// Validates ingestion keys. A key's name becomes the `service` of its
/// events, so it must be a valid service name, and not one of the names the
/// services and signed-in users write under: a key called `auth` would make
/// its events indistinguishable from galion-auth's.
pub fn ingestion_keys(entries: &[ApiKeyFile]) -> Result<ApiKeys, String> {
    for e in entries {
        if !crate::ingest::valid_name(&e.name) {
            return Err(format!(
                "api key name {:?} must be 1-64 chars of a-z 0-9 . _ -",
                e.name
            ));
        }
        if RESERVED_SERVICES.contains(&e.name.as_str()) {
            return Err(format!(
                "api key name {:?} is reserved (one of {})",
                e.name,
                RESERVED_SERVICES.join(", ")
            ));
        }
    }
    ApiKeys::new(entries).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const DEV: &str = "21dd9e3b3f1633b88d69b73906f1a9e594beebd9b616bf89448c0a50a8b4ad10";

    fn entry(name: &str) -> ApiKeyFile {
        ApiKeyFile {
            name: name.into(),
            sha256: DEV.into(),
        }
    }

    #[test]
    fn key_names_are_service_names_not_reserved_ones() {
        let keys = ingestion_keys(&[entry("dev-ingest")]).unwrap();
        assert_eq!(keys.lookup(b"dev-ingest-key"), Some("dev-ingest"));
        for bad in [
            "",
            "Dev",
            "with space",
            "auth",
            "users",
            "analytics",
            "client",
        ] {
            assert!(ingestion_keys(&[entry(bad)]).is_err(), "{bad:?}");
        }
    }

    /// The shipped conf/analytics.yaml loads, with the dev key.
    #[test]
    fn shipped_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conf/analytics.yaml");
        let file = FileConfig::load(Some(&path)).unwrap();
        let keys = ingestion_keys(file.api_keys.as_deref().unwrap_or_default()).unwrap();
        assert_eq!(keys.lookup(b"dev-ingest-key"), Some("dev-ingest"));
    }
}
