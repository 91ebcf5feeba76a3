//! Service configuration: an optional YAML file overridden by environment
//! variables, resolved into typed settings.
//!
//! The YAML schema is shared by the three services (each ignores the keys it
//! does not use) and rejects unknown keys; every error names the file or the
//! variable at fault. `backends/README.md` lists the variables.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::ServiceToken;
use crate::db::DbOptions;
use crate::secrets::{self, SecretError};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
    #[error("environment variable {name}: {message}")]
    Env { name: String, message: String },
    #[error(transparent)]
    Secret(#[from] SecretError),
}

/// `dev` generates missing secrets into the data dir; `production` refuses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    #[default]
    Dev,
    Production,
}

impl FromStr for RunMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "dev" | "development" => Ok(RunMode::Dev),
            "prod" | "production" => Ok(RunMode::Production),
            _ => Err("expected dev or production".into()),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseFile {
    pub url: Option<String>,
    pub max_connections: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtFile {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub leeway: Option<Duration>,
    /// `EdDSA` (default) or `HS256` (auth only: which algorithm it signs with).
    pub algorithm: Option<String>,
    pub hs256_secret_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub access_token_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub refresh_token_ttl: Option<Duration>,
    pub key_encryption_key_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub key_reload_interval: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayFile {
    pub batch_size: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub poll_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub max_backoff: Option<Duration>,
}

/// auth only: how `mail_outbox` is delivered (`mail:` section).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailFile {
    /// `smtp`, `file` (dev: `.eml` files under `$GALION_DATA_DIR/mail`) or
    /// `off`; default `smtp` when `smtp.host` is set, else `file` in dev.
    pub transport: Option<String>,
    /// `From:` of every mail, e.g. `Galion <no-reply@galion.app>`.
    pub from: Option<String>,
    #[serde(default)]
    pub smtp: SmtpFile,
    /// Attempts before a mail is dead-lettered.
    pub max_attempts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub retry_base: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub retry_max: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub poll_interval: Option<Duration>,
    /// A mail still unsent this long after it was queued is dead-lettered:
    /// its link has expired.
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// Mails sent to one address per `per_recipient_window`, beyond which
    /// the rest wait.
    pub per_recipient_limit: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub per_recipient_window: Option<Duration>,
}

/// auth only: the SMTP relay (`mail.smtp`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpFile {
    pub host: Option<String>,
    pub port: Option<u16>,
    /// `starttls` (default, port 587), `implicit` (port 465) or `none`
    /// (loopback relays only).
    pub tls: Option<String>,
    pub username: Option<String>,
    /// File holding the password (mode 0600).
    pub password_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

/// The YAML file (`conf/auth.yaml`, `conf/users.yaml`, `conf/analytics.yaml`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub mode: Option<RunMode>,
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub database: DatabaseFile,
    #[serde(default)]
    pub jwt: JwtFile,
    pub auth_url: Option<String>,
    pub analytics_url: Option<String>,
    pub service_token_file: Option<PathBuf>,
    /// Bearer token Prometheus presents on `/metrics` (mode 0600); the
    /// service token when unset.
    pub metrics_token_file: Option<PathBuf>,
    #[serde(default)]
    pub relay: RelayFile,
    /// auth only: cluster mode, mirror token revocations into Redis.
    pub redis_url: Option<String>,
    /// auth only: mail delivery.
    #[serde(default)]
    pub mail: MailFile,
    /// analytics only: largest accepted `POST /events` batch.
    pub max_batch: Option<usize>,
    /// analytics only: ingestion keys (`X-API-Key`), by SHA-256.
    pub api_keys: Option<Vec<crate::api_keys::ApiKeyFile>>,
}

impl FileConfig {
    /// Reads and validates a YAML file; no path means all defaults.
    pub fn load(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        if text.trim().is_empty() {
            return Ok(FileConfig::default());
        }
        serde_norway::from_str(&text).map_err(|e| ConfigError::File {
            path: shown,
            message: e.to_string(),
        })
    }
}

/// JWT parameters shared by issuer and verifiers.
#[derive(Clone, Debug)]
pub struct JwtSettings {
    pub issuer: String,
    pub audience: String,
    pub leeway: Duration,
    /// Enables HS256 (for compatibility) when set.
    pub hs256_secret: Option<String>,
}

impl Default for JwtSettings {
    fn default() -> Self {
        JwtSettings {
            issuer: "https://galion.app".into(),
            audience: "galion".into(),
            leeway: Duration::from_secs(30),
            hs256_secret: None,
        }
    }
}

/// Outbox relay tuning.
#[derive(Clone, Debug)]
pub struct RelaySettings {
    pub batch_size: u32,
    pub poll_interval: Duration,
    pub max_backoff: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            batch_size: 200,
            poll_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Settings every service has.
#[derive(Clone, Debug)]
pub struct CommonSettings {
    pub mode: RunMode,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub db: DbOptions,
    pub jwt: JwtSettings,
    /// Base URL of galion-auth (its JWKS is `{auth_url}/.well-known/jwks.json`).
    pub auth_url: String,
    /// Base URL of galion-analytics; `None` disables the outbox relay.
    pub analytics_url: Option<String>,
    pub service_token: ServiceToken,
    /// A token only for scraping `/metrics`, so Prometheus does not hold
    /// the service token (which lets its holder write analytics events and
    /// read revocations). `None` falls back to the service token.
    pub metrics_token: Option<ServiceToken>,
    pub relay: RelaySettings,
}

/// Reads one environment variable, treating empty as unset.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Parses an environment variable with `FromStr`.
pub fn env_parse<T: FromStr>(name: &str) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    env(name)
        .map(|v| {
            v.trim().parse::<T>().map_err(|e| ConfigError::Env {
                name: name.into(),
                message: e.to_string(),
            })
        })
        .transpose()
}

/// Parses a duration variable such as `15m` or `30s`.
pub fn env_duration(name: &str) -> Result<Option<Duration>, ConfigError> {
    env(name)
        .map(|v| {
            humantime::parse_duration(v.trim()).map_err(|e| ConfigError::Env {
                name: name.into(),
                message: e.to_string(),
            })
        })
        .transpose()
}

/// The metrics token from `GALION_METRICS_TOKEN` (`value`), else the file
/// named by `GALION_METRICS_TOKEN_FILE` (`env_file`), else `metrics_token_file`
/// of the YAML file. Unlike the service token it is never generated: without
/// one, `/metrics` takes the service token.
pub fn resolve_metrics_token(
    value: Option<String>,
    env_file: Option<PathBuf>,
    file: &FileConfig,
) -> Result<Option<ServiceToken>, ConfigError> {
    let path = env_file.or_else(|| file.metrics_token_file.clone());
    Ok(secrets::resolve(value, path.as_deref())?.map(ServiceToken::new))
}

impl CommonSettings {
    /// The token `/metrics` requires: the metrics token, or the service
    /// token when none is configured.
    pub fn metrics_scrape_token(&self) -> ServiceToken {
        self.metrics_token
            .clone()
            .unwrap_or_else(|| self.service_token.clone())
    }

    /// Resolves settings for `service` (`auth`, `users`, `analytics`):
    /// environment first, then the file, then defaults.
    pub fn load(
        service: &str,
        default_port: u16,
        file: &FileConfig,
    ) -> Result<CommonSettings, ConfigError> {
        let upper = service.to_ascii_uppercase();
        let mode = env_parse::<RunMode>("GALION_ENV")?
            .or(file.mode)
            .unwrap_or_default();
        let listen_var = format!("GALION_{upper}_LISTEN");
        let listen = env_parse::<SocketAddr>(&listen_var)?
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], default_port)));
        let data_dir = env("GALION_DATA_DIR")
            .map(PathBuf::from)
            .or_else(|| file.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from("./data"));
        // auth and users must share a database; analytics defaults to its own
        // file so event ingestion does not contend with logins for SQLite's lock.
        let default_db = if service == "analytics" {
            "analytics.db"
        } else {
            "galion.db"
        };
        let database_url = env("DATABASE_URL")
            .or_else(|| file.database.url.clone())
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join(default_db).display()));
        let max_connections = env_parse::<u32>("GALION_DB_MAX_CONNECTIONS")?
            .or(file.database.max_connections)
            .unwrap_or(10);

        let defaults = JwtSettings::default();
        let hs256_secret = secrets::resolve(
            env("GALION_JWT_HS256_SECRET"),
            env("GALION_JWT_HS256_SECRET_FILE")
                .map(PathBuf::from)
                .or_else(|| file.jwt.hs256_secret_file.clone())
                .as_deref(),
        )?;
        if let Some(s) = &hs256_secret {
            if s.len() < 32 {
                return Err(ConfigError::Env {
                    name: "GALION_JWT_HS256_SECRET".into(),
                    message: "must be at least 32 bytes".into(),
                });
            }
        }
        let jwt = JwtSettings {
            issuer: env("GALION_JWT_ISSUER")
                .or_else(|| file.jwt.issuer.clone())
                .unwrap_or(defaults.issuer),
            audience: env("GALION_JWT_AUDIENCE")
                .or_else(|| file.jwt.audience.clone())
                .unwrap_or(defaults.audience),
            leeway: env_duration("GALION_JWT_LEEWAY")?
                .or(file.jwt.leeway)
                .unwrap_or(defaults.leeway),
            hs256_secret,
        };

        let auth_url = env("GALION_AUTH_URL")
            .or_else(|| file.auth_url.clone())
            .unwrap_or_else(|| "http://127.0.0.1:7001".into());
        let analytics_url = match env("GALION_ANALYTICS_URL").or_else(|| file.analytics_url.clone())
        {
            Some(v) if v == "off" || v == "none" => None,
            Some(v) => Some(v),
            None => Some("http://127.0.0.1:7003".into()),
        };

        let token_file = env("GALION_SERVICE_TOKEN_FILE")
            .map(PathBuf::from)
            .or_else(|| file.service_token_file.clone());
        let service_token = match secrets::resolve(
            env("GALION_SERVICE_TOKEN"),
            token_file.as_deref(),
        )? {
            Some(t) => t,
            None if mode == RunMode::Dev => {
                let path = data_dir.join("service-token");
                let (token, created) = secrets::dev_secret(&path)?;
                if created {
                    tracing::warn!(path = %path.display(), "dev mode: generated a service token (set GALION_SERVICE_TOKEN_FILE in production)");
                }
                token
            }
            None => {
                return Err(SecretError::Missing {
                    name: "GALION_SERVICE_TOKEN".into(),
                }
                .into())
            }
        };

        let metrics_token = resolve_metrics_token(
            env("GALION_METRICS_TOKEN"),
            env("GALION_METRICS_TOKEN_FILE").map(PathBuf::from),
            file,
        )?;

        let d = RelaySettings::default();
        let relay = RelaySettings {
            batch_size: env_parse("GALION_RELAY_BATCH_SIZE")?
                .or(file.relay.batch_size)
                .unwrap_or(d.batch_size)
                .clamp(1, 1000),
            poll_interval: env_duration("GALION_RELAY_POLL_INTERVAL")?
                .or(file.relay.poll_interval)
                .unwrap_or(d.poll_interval),
            max_backoff: env_duration("GALION_RELAY_MAX_BACKOFF")?
                .or(file.relay.max_backoff)
                .unwrap_or(d.max_backoff),
        };

        Ok(CommonSettings {
            mode,
            listen,
            data_dir,
            database_url,
            db: DbOptions {
                max_connections,
                ..DbOptions::default()
            },
            jwt,
            auth_url,
            analytics_url,
            service_token: ServiceToken::new(service_token),
            metrics_token,
            relay,
        })
    }

    /// Settings for tests: given database, ephemeral loopback port, no file.
    pub fn for_tests(database_url: &str, data_dir: &Path) -> CommonSettings {
        CommonSettings {
            mode: RunMode::Dev,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.to_path_buf(),
            database_url: database_url.to_string(),
            db: DbOptions {
                max_connections: 5,
                ..DbOptions::default()
            },
            jwt: JwtSettings::default(),
            auth_url: "http://127.0.0.1:9".into(),
            analytics_url: None,
            service_token: ServiceToken::new("test-service-token".into()),
            metrics_token: None,
            relay: RelaySettings {
                poll_interval: Duration::from_millis(100),
                max_backoff: Duration::from_millis(500),
                ..RelaySettings::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn unknown_keys_are_errors_naming_the_file() {
        let path = std::env::temp_dir().join(format!(
            "galion-conf-{}.yaml",
            crate::secrets::random_token()
        ));
        std::fs::write(&path, "listen: 127.0.0.1:1\ndatabase:\n  ur1: x\n").unwrap();
        let err = FileConfig::load(Some(&path)).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("ur1"), "{err}");
    }

    #[test]
    fn shipped_example_files_are_valid() {
        let conf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conf");
        for name in [
            "auth.yaml",
            "auth.production.yaml",
            "users.yaml",
            "analytics.yaml",
        ] {
            let f = FileConfig::load(Some(&conf.join(name))).unwrap();
            assert!(f.listen.is_some() && f.database.url.is_some(), "{name}");
        }
    }

    #[test]
    fn metrics_token_from_env_then_file_else_service_token() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!(
            "galion-metrics-token-{}",
            crate::secrets::random_token()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let yaml_path = dir.join("from-yaml");
        let env_path = dir.join("from-env");
        for (path, value) in [(&yaml_path, "yaml-token\n"), (&env_path, "env-file-token")] {
            std::fs::write(path, value).unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let file: FileConfig =
            serde_norway::from_str(&format!("metrics_token_file: {}\n", yaml_path.display()))
                .unwrap();
        let none = FileConfig::default();
        let got = |value: Option<&str>, env_file: Option<&Path>, file: &FileConfig| {
            resolve_metrics_token(value.map(String::from), env_file.map(PathBuf::from), file)
                .unwrap()
                .map(|t| t.as_str().to_string())
        };
        assert_eq!(got(None, None, &none), None);
        assert_eq!(got(None, None, &file).as_deref(), Some("yaml-token"));
        assert_eq!(
            got(None, Some(&env_path), &file).as_deref(),
            Some("env-file-token")
        );
        assert_eq!(
            got(Some("env-token"), Some(&env_path), &file).as_deref(),
            Some("env-token")
        );
        // A file others can read is refused, as for the service token.
        std::fs::set_permissions(&yaml_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(resolve_metrics_token(None, None, &file).is_err());

        let mut settings = CommonSettings::for_tests("sqlite::memory:", &dir);
        assert!(settings
            .metrics_scrape_token()
            .matches("test-service-token"));
        settings.metrics_token = Some(ServiceToken::new("scrape".into()));
        let scrape = settings.metrics_scrape_token();
        assert!(scrape.matches("scrape") && !scrape.matches("test-service-token"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn durations_parse() {
        let f: FileConfig = serde_norway::from_str("jwt:\n  access_token_ttl: 15m\n").unwrap();
        assert_eq!(f.jwt.access_token_ttl, Some(Duration::from_secs(900)));
    }
}
