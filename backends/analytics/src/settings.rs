//! galion-analytics settings.

use std::path::Path;

use galion_common::config::{env_parse, CommonSettings, ConfigError, FileConfig};

#[derive(Clone, Debug)]
pub struct AnalyticsSettings {
    pub common: CommonSettings,
    /// Largest accepted batch (events per `POST /events`).
    pub max_batch: usize,
    pub max_body_bytes: usize,
}

impl AnalyticsSettings {
    pub fn load(config: Option<&Path>) -> Result<AnalyticsSettings, ConfigError> {
        let file = FileConfig::load(config)?;
        let common = CommonSettings::load("analytics", 7003, &file)?;
        let max_batch = env_parse::<usize>("GALION_ANALYTICS_MAX_BATCH")?
            .or(file.max_batch)
            .unwrap_or(1000)
            .clamp(1, 1000);
        Ok(AnalyticsSettings {
            common,
            max_batch,
            max_body_bytes: 8 * 1024 * 1024,
        })
    }

    pub fn for_tests(database_url: &str, data_dir: &Path) -> AnalyticsSettings {
        AnalyticsSettings {
            common: CommonSettings::for_tests(database_url, data_dir),
            max_batch: 1000,
            max_body_bytes: 8 * 1024 * 1024,
        }
    }
}
