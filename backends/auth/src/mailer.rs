//! The mail sender: drains `mail_outbox` (written by `email` in the same
//! transaction as the token) to an SMTP relay, or in dev to `.eml` files
//! under `$GALION_DATA_DIR/mail`.
//!
//! Delivery is at-least-once and survives restarts because all state lives
//! in the row:
//!
//! * **Claim.** A sender takes a due row by a compare-and-set on its lease
//!   (`lease_owner`, `lease_until`), so two instances, or an instance
//!   restarted while another still works, never send one row at the same
//!   time. A crashed sender's lease simply expires.
//! * **Mark.** `sent_at` is written only after the relay accepted the mail
//!   (250 after DATA). A sent row is never picked again, so a restart does
//!   not resend it. The one window left — a crash between the relay's 250
//!   and the `UPDATE` — sends the mail again, with the same `Message-ID`
//!   (derived from the row id) so mail systems can tell it is a duplicate.
//! * **Retry.** A failed attempt (relay down, 4xx, 5xx, timeout) is counted
//!   and the row scheduled again after an exponential backoff with jitter;
//!   after `max_attempts` it is dead-lettered (`dead_at`, `last_error`), as
//!   is a mail older than `max_age` (its link has expired).
//! * **Throttle.** At most `per_recipient_limit` mails go to one address per
//!   `per_recipient_window` (counted in the table, so across instances);
//!   the rest wait without using up attempts. This protects the relay's
//!   reputation from a flood aimed at one inbox that the per-account queue
//!   limit in `email` did not catch (several accounts, one address).
//!
//! Metrics: `auth_mail_sent_total`, `auth_mail_failed_total` (failed
//! attempts), `auth_mail_dead_lettered_total`, `auth_mail_deferred_total`
//! (throttled), and the gauges `auth_mail_outbox_depth` (pending rows) and
//! `auth_mail_dead_letters`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use galion_common::db::Db;
use galion_common::metrics::Metrics;
use galion_common::with_db;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use rand::Rng;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::settings::{MailSettings, MailTransport, SmtpSettings, SmtpTls};

/// Rows looked at per scan; more are taken at once on the next loop.
const BATCH: i64 = 50;

/// `last_error` is for the operator, not a log archive.
const MAX_ERROR_LEN: usize = 500;

/// Why a mail could not be delivered (or the sender not started).
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("smtp: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    /// The row cannot become a mail (bad address, bad header): retrying
    /// cannot help.
    #[error("invalid mail: {0}")]
    Invalid(String),
    #[error("cannot write {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("delivery took longer than {0:?}")]
    Timeout(Duration),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl MailError {
    fn is_permanent(&self) -> bool {
        matches!(self, MailError::Invalid(_))
    }
}

/// Wakes the sender right after a mail was committed, instead of at its
/// next poll.
#[derive(Clone, Default)]
pub struct MailerHandle {
    notify: Arc<Notify>,
}

impl MailerHandle {
    pub fn wake(&self) {
        self.notify.notify_one();
    }
}

enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Files(PathBuf),
}

impl Transport {
    fn describe(&self) -> String {
        match self {
            Transport::Smtp(_) => "smtp".into(),
            Transport::Files(dir) => format!("files in {}", dir.display()),
        }
    }
}

struct MailMetrics {
    sent: prometheus::IntCounter,
    failed: prometheus::IntCounter,
    dead_lettered: prometheus::IntCounter,
    deferred: prometheus::IntCounter,
    depth: prometheus::IntGauge,
    dead_letters: prometheus::IntGauge,
}

struct Sender {
    db: Db,
    settings: MailSettings,
    from: Mailbox,
    /// Right-hand side of the `Message-ID`s.
    domain: String,
    transport: Transport,
    /// This sender's lease identity; new on every start.
    owner: Uuid,
    /// How long a claim holds; longer than any delivery may take.
    lease: Duration,
    /// Bound on one delivery, well inside the lease.
    send_timeout: Duration,
    metrics: MailMetrics,
}

#[derive(sqlx::FromRow)]
struct MailRow {
    id: Uuid,
    to_email: String,
    subject: String,
    body: String,
    created_at: DateTime<Utc>,
    attempts: i32,
}

/// Builds the SMTP client. No connection is made until the first mail.
fn smtp_transport(s: &SmtpSettings) -> Result<AsyncSmtpTransport<Tokio1Executor>, MailError> {
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(s.host.as_str())
        .port(s.port)
        .timeout(Some(s.timeout));
    builder = match s.tls {
        // `Required`: a relay (or a man in the middle) that does not offer
        // STARTTLS fails the attempt instead of getting the mail in clear.
        SmtpTls::StartTls => builder.tls(Tls::Required(TlsParameters::new(s.host.clone())?)),
        SmtpTls::Implicit => builder.tls(Tls::Wrapper(TlsParameters::new(s.host.clone())?)),
        SmtpTls::None => builder.tls(Tls::None),
    };
    if let Some((user, password)) = &s.credentials {
        builder = builder.credentials(Credentials::new(
            user.clone(),
            password.as_str().to_string(),
        ));
    }
    Ok(builder.build())
}

/// A running sender: wake it through `handle`; `task` ends after shutdown.
pub struct Mailer {
    pub handle: MailerHandle,
    pub task: JoinHandle<()>,
}

/// Starts the sender unless the transport is `off`; it stops (after
/// finishing the mail in flight) when `shutdown` is cancelled.
pub fn spawn(
    db: Db,
    settings: &MailSettings,
    metrics: &Metrics,
    shutdown: CancellationToken,
) -> Result<Option<Mailer>, MailError> {
    let (transport, lease) = match &settings.transport {
        MailTransport::Off => return Ok(None),
        MailTransport::Smtp(s) => (
            Transport::Smtp(smtp_transport(s)?),
            // Connect, greeting, EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA,
            // end of data, QUIT: each bounded by the timeout.
            (s.timeout * 12).max(Duration::from_secs(60)),
        ),
        MailTransport::Files(dir) => (Transport::Files(dir.clone()), Duration::from_secs(60)),
    };
    let from: Mailbox = settings
        .from
        .parse()
        .map_err(|e| MailError::Invalid(format!("sender {:?}: {e}", settings.from)))?;
    let domain = from.email.domain().to_string();
    let sender = Sender {
        db,
        settings: settings.clone(),
        from,
        domain,
        transport,
        owner: Uuid::new_v4(),
        lease,
        send_timeout: lease / 2,
        metrics: MailMetrics {
            sent: metrics.counter(
                "auth_mail_sent_total",
                "Mails accepted by the SMTP relay (or written as .eml files in dev)",
            )?,
            failed: metrics.counter(
                "auth_mail_failed_total",
                "Failed mail delivery attempts (each is retried until the attempts run out)",
            )?,
            dead_lettered: metrics.counter(
                "auth_mail_dead_lettered_total",
                "Mails given up on (attempts exhausted, expired, or undeliverable)",
            )?,
            deferred: metrics.counter(
                "auth_mail_deferred_total",
                "Mails postponed by the per-recipient limit",
            )?,
            depth: metrics.gauge(
                "auth_mail_outbox_depth",
                "Mails queued and not yet sent or dead-lettered (alert when it grows)",
            )?,
            dead_letters: metrics.gauge(
                "auth_mail_dead_letters",
                "Dead-lettered mails still in mail_outbox",
            )?,
        },
    };
    let handle = MailerHandle::default();
    let notify = handle.notify.clone();
    let task = tokio::spawn(sender.run(notify, shutdown));
    Ok(Some(Mailer { handle, task }))
}

impl Sender {
    async fn run(self, notify: Arc<Notify>, shutdown: CancellationToken) {
        tracing::info!(transport = %self.transport.describe(), "mail sender started");
        let mut next_prune = tokio::time::Instant::now();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let busy = match self.scan(&shutdown).await {
                Ok(n) => n >= BATCH as usize,
                Err(e) => {
                    tracing::warn!(error = %e, "mail outbox scan failed");
                    false
                }
            };
            self.refresh_gauges().await;
            if tokio::time::Instant::now() >= next_prune {
                self.prune().await;
                next_prune = tokio::time::Instant::now() + Duration::from_secs(3600);
            }
            if busy {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = notify.notified() => {}
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
        tracing::info!("mail sender stopped");
    }

    /// Delivers the due rows; returns how many were due (up to [`BATCH`]).
    async fn scan(&self, shutdown: &CancellationToken) -> Result<usize, sqlx::Error> {
        let now = galion_common::time::now();
        let rows: Vec<MailRow> = with_db!(&self.db, |p| sqlx::query_as(
            "SELECT id, to_email, subject, body, created_at, attempts FROM mail_outbox \
             WHERE sent_at IS NULL AND dead_at IS NULL \
             AND (next_attempt_at IS NULL OR next_attempt_at <= $1) \
             AND (lease_until IS NULL OR lease_until < $1) \
             ORDER BY created_at, id LIMIT $2"
        )
        .bind(now)
        .bind(BATCH)
        .fetch_all(p)
        .await)?;
        let due = rows.len();
        for row in rows {
            // Shutdown lets the mail in flight finish (and be marked) but
            // starts no new one.
            if shutdown.is_cancelled() {
                break;
            }
            if self.claim(&row).await? {
                self.deliver(row).await?;
            }
        }
        Ok(due)
    }

    /// Takes the lease on `row` unless another sender holds it or it was
    /// sent meanwhile. On PostgreSQL a concurrent claimer blocks on the row
    /// and then re-checks the condition against the committed lease, so
    /// exactly one wins; SQLite has a single writer.
    async fn claim(&self, row: &MailRow) -> Result<bool, sqlx::Error> {
        let now = galion_common::time::now();
        let until = later(now, self.lease);
        let n = with_db!(&self.db, |p| sqlx::query(
            "UPDATE mail_outbox SET lease_owner = $1, lease_until = $2 \
             WHERE id = $3 AND sent_at IS NULL AND dead_at IS NULL \
             AND (lease_until IS NULL OR lease_until < $4)"
        )
        .bind(self.owner)
        .bind(until)
        .bind(row.id)
        .bind(now)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    async fn deliver(&self, row: MailRow) -> Result<(), sqlx::Error> {
        let now = galion_common::time::now();
        if later(row.created_at, self.settings.max_age) < now {
            return self
                .dead_letter(&row, row.attempts, "expired before it could be delivered")
                .await;
        }
        if let Some(until) = self.throttled_until(&row.to_email, now).await? {
            with_db!(&self.db, |p| {
                sqlx::query(
                "UPDATE mail_outbox SET next_attempt_at = $1, lease_owner = NULL, lease_until = NULL \
                 WHERE id = $2 AND lease_owner = $3"
            )
            .bind(until)
            .bind(row.id)
            .bind(self.owner)
            .execute(p)
            .await
            .map(|r| r.rows_affected())
            })?;
            self.metrics.deferred.inc();
            tracing::info!(mail_id = %row.id, until = %until, limit = self.settings.per_recipient_limit, "mail deferred: recipient limit reached");
            return Ok(());
        }
        let result = match tokio::time::timeout(self.send_timeout, self.send(&row)).await {
            Ok(r) => r,
            Err(_) => Err(MailError::Timeout(self.send_timeout)),
        };
        let attempts = row.attempts.saturating_add(1);
        match result {
            Ok(()) => {
                self.metrics.sent.inc();
                self.mark_sent(&row, attempts).await;
                Ok(())
            }
            Err(e) => {
                self.metrics.failed.inc();
                let reason = e.to_string();
                if e.is_permanent() || attempts >= self.max_attempts() {
                    return self.dead_letter(&row, attempts, &reason).await;
                }
                let wait = self.backoff(attempts);
                let next = later(galion_common::time::now(), wait);
                tracing::warn!(mail_id = %row.id, attempts, error = %reason, retry_in_ms = wait.as_millis() as u64, "mail delivery failed, will retry");
                with_db!(&self.db, |p| sqlx::query(
                    "UPDATE mail_outbox SET attempts = $1, next_attempt_at = $2, last_error = $3, \
                     lease_owner = NULL, lease_until = NULL WHERE id = $4"
                )
                .bind(attempts)
                .bind(next)
                .bind(truncate(&reason))
                .bind(row.id)
                .execute(p)
                .await
                .map(|r| r.rows_affected()))?;
                Ok(())
            }
        }
    }

    fn max_attempts(&self) -> i32 {
        i32::try_from(self.settings.max_attempts).unwrap_or(i32::MAX)
    }

    /// Exponential backoff from `retry_base`, capped at `retry_max`, with
    /// "equal jitter": half the step fixed, half random. Retries of many
    /// mails (after a relay outage) or of several instances spread out, and
    /// never come sooner than half the step.
    fn backoff(&self, attempts: i32) -> Duration {
        let doublings = u32::try_from(attempts.saturating_sub(1))
            .unwrap_or(0)
            .min(20);
        let step = self
            .settings
            .retry_base
            .saturating_mul(1u32 << doublings)
            .min(self.settings.retry_max);
        let half = step / 2;
        let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter)
    }

    /// When the recipient may get its next mail, if it already had
    /// `per_recipient_limit` in the window.
    async fn throttled_until(
        &self,
        to: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        let window = self.settings.per_recipient_window;
        let sent: Vec<(DateTime<Utc>,)> = with_db!(&self.db, |p| sqlx::query_as(
            "SELECT sent_at FROM mail_outbox WHERE to_email = $1 AND sent_at IS NOT NULL \
             AND sent_at > $2 ORDER BY sent_at LIMIT $3"
        )
        .bind(to)
        .bind(earlier(now, window))
        .bind(i64::from(self.settings.per_recipient_limit))
        .fetch_all(p)
        .await)?;
        if sent.len() < self.settings.per_recipient_limit as usize {
            return Ok(None);
        }
        // The oldest of them leaves the window first.
        Ok(sent.first().map(|(oldest,)| later(*oldest, window)))
    }

    async fn send(&self, row: &MailRow) -> Result<(), MailError> {
        let message = self.message(row)?;
        match &self.transport {
            Transport::Smtp(smtp) => {
                smtp.send(message).await?;
                tracing::info!(mail_id = %row.id, subject = %row.subject, "mail sent");
            }
            Transport::Files(dir) => {
                let (dir, id, bytes) = (dir.clone(), row.id, message.formatted());
                let path = tokio::task::spawn_blocking(move || write_eml(&dir, id, &bytes))
                    .await
                    .map_err(|e| MailError::File {
                        path: "(mail directory)".into(),
                        source: std::io::Error::other(e.to_string()),
                    })??;
                // Dev mode: the link itself is logged when the mail is
                // queued (`email::QueuedMail::log`).
                tracing::info!(mail_id = %row.id, subject = %row.subject, path = %path.display(), "mail written (dev: open the .eml file)");
            }
        }
        Ok(())
    }

    fn message(&self, row: &MailRow) -> Result<Message, MailError> {
        let to: Mailbox = row
            .to_email
            .parse()
            .map_err(|e| MailError::Invalid(format!("recipient: {e}")))?;
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(row.subject.as_str())
            // Stable across attempts: a duplicate after a crash between the
            // relay's 250 and our UPDATE carries the same id.
            .message_id(Some(format!("<{}@{}>", row.id, self.domain)))
            .date(row.created_at.into())
            .header(ContentType::TEXT_PLAIN)
            .body(row.body.clone())
            .map_err(|e| MailError::Invalid(e.to_string()))
    }

    /// Records the delivery. Retried briefly: failing here means the mail
    /// goes out again once the lease expires.
    async fn mark_sent(&self, row: &MailRow, attempts: i32) {
        for retry in 0..5u64 {
            let now = galion_common::time::now();
            let result = with_db!(&self.db, |p| sqlx::query(
                "UPDATE mail_outbox SET sent_at = $1, attempts = $2, last_error = NULL, \
                 next_attempt_at = NULL, lease_owner = NULL, lease_until = NULL WHERE id = $3"
            )
            .bind(now)
            .bind(attempts)
            .bind(row.id)
            .execute(p)
            .await
            .map(|r| r.rows_affected()));
            match result {
                Ok(_) => return,
                Err(e) if retry < 4 => {
                    tracing::warn!(mail_id = %row.id, error = %e, "cannot mark mail sent, retrying");
                    tokio::time::sleep(Duration::from_millis(200 * (retry + 1))).await;
                }
                Err(e) => {
                    tracing::error!(mail_id = %row.id, error = %e, "mail sent but not marked: it will be sent again when its lease expires");
                }
            }
        }
    }

    async fn dead_letter(
        &self,
        row: &MailRow,
        attempts: i32,
        reason: &str,
    ) -> Result<(), sqlx::Error> {
        let now = galion_common::time::now();
        with_db!(&self.db, |p| sqlx::query(
            "UPDATE mail_outbox SET dead_at = $1, attempts = $2, last_error = $3, \
             lease_owner = NULL, lease_until = NULL WHERE id = $4"
        )
        .bind(now)
        .bind(attempts)
        .bind(truncate(reason))
        .bind(row.id)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))?;
        self.metrics.dead_lettered.inc();
        tracing::error!(mail_id = %row.id, attempts, error = %reason, "mail dead-lettered: not delivered");
        Ok(())
    }

    async fn refresh_gauges(&self) {
        let counts: Result<(i64, i64), sqlx::Error> = with_db!(&self.db, |p| sqlx::query_as(
            "SELECT \
             COALESCE(SUM(CASE WHEN sent_at IS NULL AND dead_at IS NULL THEN 1 ELSE 0 END), 0), \
             COALESCE(SUM(CASE WHEN dead_at IS NOT NULL THEN 1 ELSE 0 END), 0) \
             FROM mail_outbox WHERE sent_at IS NULL"
        )
        .fetch_one(p)
        .await);
        match counts {
            Ok((pending, dead)) => {
                self.metrics.depth.set(pending);
                self.metrics.dead_letters.set(dead);
            }
            Err(e) => tracing::warn!(error = %e, "cannot count mail_outbox"),
        }
    }

    /// Deletes sent and dead-lettered rows past the retention: their links
    /// have long expired, and the bodies held them in clear.
    async fn prune(&self) {
        let cutoff = earlier(galion_common::time::now(), self.settings.retention);
        let result = with_db!(&self.db, |p| sqlx::query(
            "DELETE FROM mail_outbox WHERE (sent_at IS NOT NULL AND sent_at < $1) \
             OR (dead_at IS NOT NULL AND dead_at < $1)"
        )
        .bind(cutoff)
        .execute(p)
        .await
        .map(|r| r.rows_affected()));
        match result {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "pruned old mail_outbox rows"),
            Err(e) => tracing::warn!(error = %e, "cannot prune mail_outbox"),
        }
    }
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// `t + d`, saturating: durations come from configuration and chrono's
/// operators panic on overflow.
fn later(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_add_signed(chrono_duration(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `t - d`, saturating.
fn earlier(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_sub_signed(chrono_duration(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(MAX_ERROR_LEN) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Writes `bytes` as `{dir}/{id}.eml`: the directory 0700, the file 0600
/// (the mail holds a live link), atomically (temporary file, then rename)
/// so a reader never sees half a mail.
fn write_eml(dir: &Path, id: Uuid, bytes: &[u8]) -> Result<PathBuf, MailError> {
    let err = |path: &Path| {
        let path = path.display().to_string();
        move |source| MailError::File { path, source }
    };
    galion_common::secrets::create_private_dir(dir).map_err(err(dir))?;
    // An existing directory keeps its mode otherwise.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(err(dir))?;
    let path = dir.join(format!("{id}.eml"));
    let tmp = dir.join(format!(".{id}.eml.tmp"));
    galion_common::secrets::write_private_file(&tmp, bytes).map_err(err(&tmp))?;
    fs::rename(&tmp, &path).map_err(err(&path))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("short"), "short");
        let long = "é".repeat(MAX_ERROR_LEN + 10);
        assert_eq!(truncate(&long).chars().count(), MAX_ERROR_LEN + 1);
    }
}
