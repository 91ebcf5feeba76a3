//! galion-auth settings: the common ones plus token lifetimes, the signing
//! algorithm, the key-encryption key protecting private signing keys, and
//! mail delivery (SMTP relay or dev `.eml` files).

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use galion_common::config::{
    env, env_duration, env_parse, CommonSettings, ConfigError, FileConfig, MailFile, RunMode,
};
use galion_common::secrets::{self, SecretError};

/// Which algorithm access tokens are signed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigningAlg {
    EdDsa,
    /// Shared-secret compatibility mode (`GALION_JWT_HS256_SECRET`).
    Hs256,
}

#[derive(Clone, Debug)]
pub struct AuthSettings {
    pub common: CommonSettings,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub algorithm: SigningAlg,
    /// 32-byte key encrypting the Ed25519 private keys at rest.
    pub key_encryption_key: [u8; 32],
    /// How often the signing keys are re-read from the database (to pick up
    /// `galion-auth rotate-keys` run by another process).
    pub key_reload_interval: Duration,
    /// Base of the links in verification / reset mails.
    pub public_url: String,
    /// Cluster mode: mirror revocations into Redis (see `publish`).
    pub redis_url: Option<String>,
    /// How long a revocation is kept (in the table, the feed and Redis)
    /// after the token's `exp`. Verifiers accept a token until `exp` +
    /// their leeway, so this must exceed every verifier's leeway (gateway,
    /// users, analytics); it is checked against this service's own.
    pub revocation_retention: Duration,
    /// How `mail_outbox` is delivered.
    pub mail: MailSettings,
}

/// Where queued mails go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MailTransport {
    /// An SMTP relay.
    Smtp(SmtpSettings),
    /// Dev: one `.eml` file per mail in this directory (0700, files 0600).
    Files(PathBuf),
    /// Nothing drains `mail_outbox` (another process does, or mail is not
    /// wanted); rows stay queued.
    Off,
}

/// How the connection to the relay is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which is required (a relay
    /// not offering it is an error, never a silent plaintext fallback).
    StartTls,
    /// TLS from the first byte ("SMTPS", port 465).
    Implicit,
    /// Plaintext: only accepted for loopback relays (a local postfix, a
    /// dev sink).
    None,
}

/// An SMTP password; `Debug` hides it so settings can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpPassword(String);

impl SmtpPassword {
    pub fn new(password: String) -> Self {
        SmtpPassword(password)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SmtpPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SmtpPassword(***)")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    /// Username and password, or none for relays that trust the client.
    pub credentials: Option<(String, SmtpPassword)>,
    /// Bounds connecting and each SMTP command.
    pub timeout: Duration,
}

/// The mail sender's behaviour (see `mailer`).
#[derive(Clone, Debug)]
pub struct MailSettings {
    pub transport: MailTransport,
    /// `From:` header and envelope sender.
    pub from: String,
    /// Attempts before a mail is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay; doubles per failed attempt up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How often the outbox is polled when no local commit woke the sender
    /// (mails queued by another instance, retries coming due).
    pub poll_interval: Duration,
    /// Unsent mails older than this are dead-lettered: their link expired.
    pub max_age: Duration,
    pub per_recipient_limit: u32,
    pub per_recipient_window: Duration,
    /// Sent and dead-lettered rows are deleted this long after (they hold
    /// the, by then expired, links).
    pub retention: Duration,
}

impl MailSettings {
    /// Environment, then the `mail:` section, then defaults. `public_url`
    /// supplies the default sender domain.
    pub fn load(
        file: &MailFile,
        mode: RunMode,
        data_dir: &Path,
        public_url: &str,
    ) -> Result<MailSettings, ConfigError> {
        let bad = |name: &str, message: String| ConfigError::Env {
            name: name.into(),
            message,
        };
        let smtp_host = env("GALION_SMTP_HOST").or_else(|| file.smtp.host.clone());
        let transport_name = env("GALION_MAIL_TRANSPORT").or_else(|| file.transport.clone());
        let transport = match (transport_name.as_deref(), smtp_host) {
            (Some("off"), _) => MailTransport::Off,
            (Some("file"), _) => MailTransport::Files(data_dir.join("mail")),
            (Some("smtp") | None, Some(host)) => MailTransport::Smtp(smtp_settings(file, host)?),
            (Some("smtp"), None) => {
                return Err(bad(
                    "GALION_SMTP_HOST",
                    "mail transport smtp needs a relay host (mail.smtp.host)".into(),
                ))
            }
            (None, None) if mode == RunMode::Dev => MailTransport::Files(data_dir.join("mail")),
            (None, None) => {
                return Err(bad(
                    "GALION_SMTP_HOST",
                    "production needs an SMTP relay for verification and reset mails (GALION_SMTP_HOST or mail.smtp.host); set GALION_MAIL_TRANSPORT=off if another process delivers mail_outbox".into(),
                ))
            }
            (Some(other), _) => {
                return Err(bad(
                    "GALION_MAIL_TRANSPORT",
                    format!("{other:?}: expected smtp, file or off"),
                ))
            }
        };
        let domain = public_url
            .split("://")
            .nth(1)
            .unwrap_or(public_url)
            .split(['/', ':'])
            .next()
            .filter(|h| !h.is_empty())
            .unwrap_or("localhost");
        let from = env("GALION_MAIL_FROM")
            .or_else(|| file.from.clone())
            .unwrap_or_else(|| format!("Galion <no-reply@{domain}>"));
        if from.parse::<lettre::message::Mailbox>().is_err() {
            return Err(bad(
                "GALION_MAIL_FROM",
                format!("{from:?} is not a mail address"),
            ));
        }
        let d = MailSettings::defaults(MailTransport::Off);
        let max_attempts = env_parse::<u32>("GALION_MAIL_MAX_ATTEMPTS")?
            .or(file.max_attempts)
            .unwrap_or(d.max_attempts);
        if !(1..=100).contains(&max_attempts) {
            return Err(bad(
                "GALION_MAIL_MAX_ATTEMPTS",
                "must be between 1 and 100".into(),
            ));
        }
        let per_recipient_limit = env_parse::<u32>("GALION_MAIL_PER_RECIPIENT_LIMIT")?
            .or(file.per_recipient_limit)
            .unwrap_or(d.per_recipient_limit);
        if per_recipient_limit == 0 {
            return Err(bad(
                "GALION_MAIL_PER_RECIPIENT_LIMIT",
                "must be at least 1".into(),
            ));
        }
        Ok(MailSettings {
            transport,
            from,
            max_attempts,
            retry_base: env_duration("GALION_MAIL_RETRY_BASE")?
                .or(file.retry_base)
                .unwrap_or(d.retry_base),
            retry_max: env_duration("GALION_MAIL_RETRY_MAX")?
                .or(file.retry_max)
                .unwrap_or(d.retry_max),
            poll_interval: env_duration("GALION_MAIL_POLL_INTERVAL")?
                .or(file.poll_interval)
                .unwrap_or(d.poll_interval),
            max_age: env_duration("GALION_MAIL_MAX_AGE")?
                .or(file.max_age)
                .unwrap_or(d.max_age),
            per_recipient_limit,
            per_recipient_window: env_duration("GALION_MAIL_PER_RECIPIENT_WINDOW")?
                .or(file.per_recipient_window)
                .unwrap_or(d.per_recipient_window),
            retention: d.retention,
        })
    }

    /// Production defaults with the given transport.
    pub fn defaults(transport: MailTransport) -> MailSettings {
        MailSettings {
            transport,
            from: "Galion <no-reply@galion.app>".into(),
            // 30 s doubling to 1 h: eight attempts span about two hours,
            // enough to ride out a relay restart or a greylisting delay.
            max_attempts: 8,
            retry_base: Duration::from_secs(30),
            retry_max: Duration::from_secs(3600),
            poll_interval: Duration::from_secs(2),
            // The verification link lives 24 h (the reset link 1 h).
            max_age: Duration::from_secs(24 * 3600),
            per_recipient_limit: 10,
            per_recipient_window: Duration::from_secs(3600),
            retention: Duration::from_secs(7 * 86400),
        }
    }
}

/// True for `localhost` and loopback IP addresses.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn smtp_settings(file: &MailFile, host: String) -> Result<SmtpSettings, ConfigError> {
    let bad = |name: &str, message: String| ConfigError::Env {
        name: name.into(),
        message,
    };
    let tls = match env("GALION_SMTP_TLS")
        .or_else(|| file.smtp.tls.clone())
        .as_deref()
    {
        None | Some("starttls") => SmtpTls::StartTls,
        Some("implicit") | Some("tls") | Some("smtps") => SmtpTls::Implicit,
        Some("none") => SmtpTls::None,
        Some(other) => {
            return Err(bad(
                "GALION_SMTP_TLS",
                format!("{other:?}: expected starttls, implicit or none"),
            ))
        }
    };
    // Plaintext would expose the password and the reset links on the
    // network; only a relay on this machine may be spoken to in clear.
    if tls == SmtpTls::None && !is_loopback(&host) {
        return Err(bad(
            "GALION_SMTP_TLS",
            format!("none is only allowed for a loopback relay, not {host:?}"),
        ));
    }
    let port = env_parse::<u16>("GALION_SMTP_PORT")?
        .or(file.smtp.port)
        .unwrap_or(match tls {
            SmtpTls::StartTls => 587,
            SmtpTls::Implicit => 465,
            SmtpTls::None => 25,
        });
    let username = env("GALION_SMTP_USERNAME").or_else(|| file.smtp.username.clone());
    let password_file = env("GALION_SMTP_PASSWORD_FILE")
        .map(PathBuf::from)
        .or_else(|| file.smtp.password_file.clone());
    let password = secrets::resolve(env("GALION_SMTP_PASSWORD"), password_file.as_deref())?;
    let credentials = match (username, password) {
        (Some(user), Some(pass)) => Some((user, SmtpPassword::new(pass))),
        (None, None) => None,
        (Some(_), None) => {
            return Err(SecretError::Missing {
                name: "GALION_SMTP_PASSWORD".into(),
            }
            .into())
        }
        (None, Some(_)) => {
            return Err(bad(
                "GALION_SMTP_USERNAME",
                "a password is set but no username".into(),
            ))
        }
    };
    Ok(SmtpSettings {
        host,
        port,
        tls,
        credentials,
        timeout: env_duration("GALION_SMTP_TIMEOUT")?
            .or(file.smtp.timeout)
            .unwrap_or(Duration::from_secs(30)),
    })
}

/// Default of [`AuthSettings::revocation_retention`]: ten times the default
/// JWT leeway, so a verifier configured a little looser is still covered.
pub const DEFAULT_REVOCATION_RETENTION: Duration = Duration::from_secs(5 * 60);

/// Decodes a 32-byte key given as 64 hex digits or base64 (url or standard).
pub fn decode_key(raw: &str) -> Option<[u8; 32]> {
    let raw = raw.trim();
    let bytes = if raw.len() == 64 && raw.chars().all(|c| c.is_ascii_hexdigit()) {
        hex::decode(raw).ok()?
    } else {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(raw.trim_end_matches('='))
            .or_else(|_| base64::engine::general_purpose::STANDARD.decode(raw))
            .ok()?
    };
    bytes.try_into().ok()
}

impl AuthSettings {
    /// Environment, then the YAML file, then defaults.
    pub fn load(config: Option<&Path>) -> Result<AuthSettings, ConfigError> {
        let file = FileConfig::load(config)?;
        let common = CommonSettings::load("auth", 7001, &file)?;
        let access_ttl = env_duration("GALION_ACCESS_TOKEN_TTL")?
            .or(file.jwt.access_token_ttl)
            .unwrap_or(Duration::from_secs(15 * 60));
        let refresh_ttl = env_duration("GALION_REFRESH_TOKEN_TTL")?
            .or(file.jwt.refresh_token_ttl)
            .unwrap_or(Duration::from_secs(30 * 86400));
        let key_reload_interval = env_duration("GALION_AUTH_KEY_RELOAD_INTERVAL")?
            .or(file.jwt.key_reload_interval)
            .unwrap_or(Duration::from_secs(10));
        let algorithm = match env("GALION_AUTH_JWT_ALG")
            .or_else(|| file.jwt.algorithm.clone())
            .as_deref()
        {
            None | Some("EdDSA") | Some("eddsa") => SigningAlg::EdDsa,
            Some("HS256") | Some("hs256") => SigningAlg::Hs256,
            Some(other) => {
                return Err(ConfigError::Env {
                    name: "GALION_AUTH_JWT_ALG".into(),
                    message: format!("{other:?}: expected EdDSA or HS256"),
                })
            }
        };
        if algorithm == SigningAlg::Hs256 && common.jwt.hs256_secret.is_none() {
            return Err(SecretError::Missing {
                name: "GALION_JWT_HS256_SECRET".into(),
            }
            .into());
        }
        let kek_file = env("GALION_AUTH_KEY_ENCRYPTION_KEY_FILE")
            .map(PathBuf::from)
            .or_else(|| file.jwt.key_encryption_key_file.clone());
        let kek_raw = match secrets::resolve(
            env("GALION_AUTH_KEY_ENCRYPTION_KEY"),
            kek_file.as_deref(),
        )? {
            Some(k) => k,
            None if common.mode == RunMode::Dev => {
                let path = common.data_dir.join("auth-key-encryption-key");
                let (key, created) = secrets::dev_secret(&path)?;
                if created {
                    tracing::warn!(path = %path.display(), "dev mode: generated the signing-key encryption key (set GALION_AUTH_KEY_ENCRYPTION_KEY_FILE in production)");
                }
                key
            }
            None => {
                return Err(SecretError::Missing {
                    name: "GALION_AUTH_KEY_ENCRYPTION_KEY".into(),
                }
                .into())
            }
        };
        let key_encryption_key = decode_key(&kek_raw).ok_or_else(|| ConfigError::Env {
            name: "GALION_AUTH_KEY_ENCRYPTION_KEY".into(),
            message: "must be 32 bytes, as 64 hex digits or base64".into(),
        })?;
        let public_url = env("GALION_PUBLIC_URL").unwrap_or_else(|| "https://galion.app".into());
        let redis_url = env("GALION_REDIS_URL").or_else(|| file.redis_url.clone());
        let revocation_retention =
            env_duration("GALION_REVOCATION_RETENTION")?.unwrap_or(DEFAULT_REVOCATION_RETENTION);
        if revocation_retention <= common.jwt.leeway
            || revocation_retention > Duration::from_secs(30 * 86400)
        {
            return Err(ConfigError::Env {
                name: "GALION_REVOCATION_RETENTION".into(),
                message: format!(
                    "must exceed the JWT leeway ({:?}) and be at most 30 days: a revoked token is accepted again once its revocation is forgotten",
                    common.jwt.leeway
                ),
            });
        }
        let mail = MailSettings::load(&file.mail, common.mode, &common.data_dir, &public_url)?;
        Ok(AuthSettings {
            common,
            access_ttl,
            refresh_ttl,
            algorithm,
            key_encryption_key,
            key_reload_interval,
            public_url,
            redis_url,
            revocation_retention,
            mail,
        })
    }

    /// Defaults for tests.
    pub fn for_tests(database_url: &str, data_dir: &Path) -> AuthSettings {
        AuthSettings {
            common: CommonSettings::for_tests(database_url, data_dir),
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(30 * 86400),
            algorithm: SigningAlg::EdDsa,
            key_encryption_key: [7u8; 32],
            key_reload_interval: Duration::from_millis(200),
            public_url: "https://galion.test".into(),
            redis_url: None,
            revocation_retention: DEFAULT_REVOCATION_RETENTION,
            // The dev default (`.eml` files), retried fast so failure tests
            // finish quickly.
            mail: MailSettings {
                poll_interval: Duration::from_millis(100),
                retry_base: Duration::from_millis(100),
                retry_max: Duration::from_secs(1),
                max_attempts: 3,
                ..MailSettings::defaults(MailTransport::Files(data_dir.join("mail")))
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn decodes_keys() {
        assert_eq!(decode_key(&"ab".repeat(32)), Some([0xab; 32]));
        let b64 = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        assert_eq!(decode_key(&b64), Some([1; 32]));
        assert_eq!(decode_key("short"), None);
    }

    fn shipped(name: &str) -> FileConfig {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../conf")
            .join(name);
        FileConfig::load(Some(&path)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    // These read GALION_MAIL_* / GALION_SMTP_* too; the test environment
    // sets none of them.
    #[test]
    fn shipped_mail_sections_resolve() {
        let data = Path::new("/var/lib/galion-test");
        let dev = MailSettings::load(
            &shipped("auth.yaml").mail,
            RunMode::Dev,
            data,
            "https://galion.app",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(dev.transport, MailTransport::Files(data.join("mail")));
        assert_eq!(dev.max_attempts, 8);

        let mut prod = shipped("auth.production.yaml");
        assert!(prod.mail.smtp.password_file.is_some());
        // The example's password file does not exist here.
        prod.mail.smtp.username = None;
        prod.mail.smtp.password_file = None;
        let prod = MailSettings::load(&prod.mail, RunMode::Production, data, "https://galion.app")
            .unwrap_or_else(|e| panic!("{e}"));
        let MailTransport::Smtp(smtp) = prod.transport else {
            panic!("production example is not smtp");
        };
        assert_eq!((smtp.port, smtp.tls), (587, SmtpTls::StartTls));
    }

    #[test]
    fn mail_settings_refuse_unsafe_or_missing_relays() {
        let data = Path::new("/tmp");
        let none = MailFile::default();
        // Production without a relay refuses to start instead of dropping mail.
        let err = MailSettings::load(&none, RunMode::Production, data, "https://galion.app")
            .unwrap_err()
            .to_string();
        assert!(err.contains("GALION_SMTP_HOST"), "{err}");
        let clear = |host: &str| {
            let mut f = MailFile::default();
            f.smtp.host = Some(host.into());
            f.smtp.tls = Some("none".into());
            MailSettings::load(&f, RunMode::Production, data, "https://galion.app")
        };
        assert!(clear("smtp.example.net").is_err());
        assert!(clear("10.0.0.5").is_err());
        for host in ["127.0.0.1", "localhost", "::1"] {
            let s = clear(host).unwrap_or_else(|e| panic!("{host}: {e}"));
            assert!(matches!(
                s.transport,
                MailTransport::Smtp(SmtpSettings {
                    port: 25,
                    tls: SmtpTls::None,
                    ..
                })
            ));
        }
        // The default sender follows the public URL.
        let s = MailSettings::load(&none, RunMode::Dev, data, "https://galion.studio/x")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.from, "Galion <no-reply@galion.studio>");
    }

    #[test]
    fn smtp_password_is_not_debug_printed() {
        let p = SmtpPassword::new("hunter2".into());
        assert!(!format!("{p:?}").contains("hunter2"));
    }
}
