//! Database access for both supported engines.
//!
//! `DATABASE_URL` selects SQLite (single node, the default: a file in the data
//! dir) or PostgreSQL (cluster). Rather than `sqlx::Any`, which cannot carry
//! UUID, timestamp or JSON types, [`Db`] is an enum over the two typed pools
//! and the [`with_db!`](crate::with_db) / [`with_tx!`](crate::with_tx) macros
//! expand one query body for each engine. Queries are written once, in the
//! SQL subset both engines share, with `$1`-style placeholders (which
//! sqlx-sqlite also understands).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, Postgres, Sqlite, SqlitePool};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/postgres");

/// A connection pool to one of the supported engines.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// An open transaction on either engine.
pub enum Tx {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    Postgres(sqlx::Transaction<'static, Postgres>),
}

/// Runs `$body` with `$c` bound to the engine's pool (`&SqlitePool` or
/// `&PgPool`); both expansions must produce the same type.
#[macro_export]
macro_rules! with_db {
    ($db:expr, |$c:ident| $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($c) => $body,
            $crate::db::Db::Postgres($c) => $body,
        }
    };
}

/// Runs `$body` with `$c` bound to the transaction's connection
/// (`&mut SqliteConnection` or `&mut PgConnection`).
#[macro_export]
macro_rules! with_tx {
    ($tx:expr, |$c:ident| $body:expr) => {
        match $tx {
            $crate::db::Tx::Sqlite(t) => {
                let $c = &mut **t;
                $body
            }
            $crate::db::Tx::Postgres(t) => {
                let $c = &mut **t;
                $body
            }
        }
    };
}

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("DATABASE_URL {0:?} is not supported: use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    #[error("DATABASE_URL {url}: {source}")]
    BadUrl { url: String, source: sqlx::Error },
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot connect to the database {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("database migrations failed on {url}: {source}")]
    Migrate {
        url: String,
        source: sqlx::migrate::MigrateError,
    },
}

/// Pool settings.
#[derive(Clone, Debug)]
pub struct DbOptions {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl Default for DbOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// Removes the password from a URL before it goes into an error or a log.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl Db {
    /// Opens the pool (failing fast when the server is unreachable) and
    /// applies the migrations of the engine.
    pub async fn connect(url: &str, opts: &DbOptions) -> Result<Db, DbError> {
        let shown = redact_url(url);
        let db = if url.starts_with("sqlite:") {
            let connect = SqliteConnectOptions::from_str(url)
                .map_err(|source| DbError::BadUrl {
                    url: shown.clone(),
                    source,
                })?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                // auth and users share the file: wait for each other's writes.
                .busy_timeout(Duration::from_secs(10));
            if let Some(parent) = connect.get_filename().parent() {
                if !parent.as_os_str().is_empty() && !Path::new(parent).exists() {
                    crate::secrets::create_private_dir(parent).map_err(|source| {
                        DbError::DataDir {
                            path: parent.display().to_string(),
                            source,
                        }
                    })?;
                }
            }
            // Several processes opening a new file at once race to switch it
            // to WAL, and the loser gets SQLITE_BUSY without the busy handler
            // being consulted: retry briefly.
            let mut attempt = 0u64;
            let pool = loop {
                let result = SqlitePoolOptions::new()
                    .max_connections(opts.max_connections.max(1))
                    .acquire_timeout(opts.acquire_timeout)
                    .connect_with(connect.clone())
                    .await;
                match result {
                    Ok(pool) => break pool,
                    Err(e) if attempt < 20 && is_busy(&e) => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                    }
                    Err(source) => return Err(DbError::Connect { url: shown, source }),
                }
            };
            Db::Sqlite(pool)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let connect = PgConnectOptions::from_str(url).map_err(|source| DbError::BadUrl {
                url: shown.clone(),
                source,
            })?;
            let pool = PgPoolOptions::new()
                .max_connections(opts.max_connections.max(1))
                .acquire_timeout(opts.acquire_timeout)
                .connect_with(connect)
                .await
                .map_err(|source| DbError::Connect {
                    url: shown.clone(),
                    source,
                })?;
            Db::Postgres(pool)
        } else {
            return Err(DbError::UnsupportedUrl(shown));
        };
        db.migrate()
            .await
            .map_err(|source| DbError::Migrate { url: shown, source })?;
        Ok(db)
    }

    /// Applies pending migrations. Idempotent.
    ///
    /// PostgreSQL serialises concurrent migrators with an advisory lock;
    /// SQLite has no such lock, so when auth and users start together on the
    /// same file the loser fails on the winner's tables. A retry then finds
    /// every migration applied and succeeds.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        let mut attempt = 0;
        loop {
            let result = match self {
                Db::Sqlite(p) => SQLITE_MIGRATIONS.run(p).await,
                Db::Postgres(p) => POSTGRES_MIGRATIONS.run(p).await,
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "migration failed, retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts a transaction.
    ///
    /// On SQLite it takes the write lock at once (`BEGIN IMMEDIATE`): every
    /// transaction here writes, and a deferred one that reads first and then
    /// writes gets `SQLITE_BUSY` at once, without waiting out the busy
    /// timeout, when another connection (a relay, the mailer, the other
    /// service sharing the file) committed in between. Waiting for the lock
    /// up front lets the busy timeout do its work.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(p) => Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
            Db::Postgres(p) => Tx::Postgres(p.begin().await?),
        })
    }

    /// A round trip to the database, for readiness checks.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        with_db!(self, |p| sqlx::query("SELECT 1")
            .execute(p)
            .await
            .map(|_| ()))
    }

    /// Which engine this is, for logs and engine-specific SQL.
    pub fn engine(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Db::Postgres(_))
    }

    /// Closes every connection (tests drop their database afterwards).
    pub async fn close(&self) {
        match self {
            Db::Sqlite(p) => p.close().await,
            Db::Postgres(p) => p.close().await,
        }
    }
}

impl Tx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(t) => t.commit().await,
            Tx::Postgres(t) => t.commit().await,
        }
    }
}

/// SQLITE_BUSY / SQLITE_LOCKED.
fn is_busy(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("5") | Some("6")))
}

/// True when the error is a unique-constraint violation (duplicate email…).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// Escapes `%`, `_` and `\` so user input is matched literally by
/// `LIKE … ESCAPE '\'`.
pub fn like_pattern(needle: &str) -> String {
    let mut out = String::with_capacity(needle.len() + 2);
    out.push('%');
    for c in needle.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://./data/x.db"), "sqlite://./data/x.db");
    }

    /// A transaction that reads and then writes while another connection
    /// commits a write in between (the outbox relay or the mailer beside a
    /// request) must wait for it, not fail with `SQLITE_BUSY`.
    #[tokio::test]
    async fn sqlite_transactions_wait_for_a_concurrent_writer() {
        let dir = std::env::temp_dir().join(format!("galion-db-{}", uuid::Uuid::new_v4()));
        let url = format!("sqlite://{}/t.db", dir.display());
        let db = Db::connect(&url, &DbOptions::default()).await.unwrap();
        let Db::Sqlite(pool) = &db else {
            unreachable!("a sqlite URL opens SQLite")
        };
        sqlx::query("CREATE TABLE counter (n INTEGER NOT NULL)")
            .execute(pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO counter (n) VALUES (0)")
            .execute(pool)
            .await
            .unwrap();
        let Tx::Sqlite(mut first) = db.begin().await.unwrap() else {
            unreachable!()
        };
        let n: i64 = sqlx::query_scalar("SELECT n FROM counter")
            .fetch_one(&mut *first)
            .await
            .unwrap();
        // The other writer starts while the first transaction has read.
        let other = tokio::spawn({
            let db = db.clone();
            async move {
                let Tx::Sqlite(mut tx) = db.begin().await? else {
                    unreachable!()
                };
                sqlx::query("UPDATE counter SET n = n + 10")
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        sqlx::query("UPDATE counter SET n = $1")
            .bind(n + 1)
            .execute(&mut *first)
            .await
            .unwrap();
        first.commit().await.unwrap();
        other.await.unwrap().unwrap();
        let n: i64 = sqlx::query_scalar("SELECT n FROM counter")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(n, 11, "both writes are kept, in order");
        db.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn like_escapes_wildcards() {
        assert_eq!(like_pattern("A%_\\"), "%a\\%\\_\\\\%");
    }
}
