//! Test support (feature `testing`): a fresh database per test on SQLite or
//! on the machine's PostgreSQL, dropped afterwards even when the test
//! panics, and services served on ephemeral loopback ports.
//!
//! PostgreSQL tests are never skipped: an unreachable server fails them with
//! a message saying where it was looked for (`GALION_TEST_PG_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`).

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::FutureExt;
use sqlx::{Connection, Executor, PgConnection};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// What a scenario gets: its own database URL and scratch directory.
#[derive(Clone, Debug)]
pub struct TestEnv {
    pub engine: Engine,
    pub database_url: String,
    pub dir: PathBuf,
}

fn admin_url() -> String {
    std::env::var("GALION_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn random_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

async fn create(engine: Engine) -> (TestEnv, Option<String>) {
    let dir = std::env::temp_dir().join(format!("galion-test-{}", random_suffix()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("cannot create test directory {}: {e}", dir.display());
    }
    match engine {
        Engine::Sqlite => {
            let url = format!("sqlite://{}", dir.join("galion.db").display());
            (
                TestEnv {
                    engine,
                    database_url: url,
                    dir,
                },
                None,
            )
        }
        Engine::Postgres => {
            let admin = admin_url();
            let mut conn = match PgConnection::connect(&admin).await {
                Ok(c) => c,
                Err(e) => panic!(
                    "PostgreSQL tests need a server at {admin} (set GALION_TEST_PG_URL to change it): {e}"
                ),
            };
            let name = format!("galion_test_{}", random_suffix());
            if let Err(e) = conn
                .execute(format!("CREATE DATABASE \"{name}\"").as_str())
                .await
            {
                panic!("cannot create test database {name}: {e}");
            }
            let _ = conn.close().await;
            let base = admin
                .rsplit_once('/')
                .map(|(b, _)| b.to_string())
                .unwrap_or(admin.clone());
            let url = format!("{base}/{name}");
            (
                TestEnv {
                    engine,
                    database_url: url,
                    dir,
                },
                Some(name),
            )
        }
    }
}

async fn destroy(env: &TestEnv, pg_name: Option<String>) {
    let _ = std::fs::remove_dir_all(&env.dir);
    if let Some(name) = pg_name {
        if let Ok(mut conn) = PgConnection::connect(&admin_url()).await {
            let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
            if let Err(e) = conn.execute(sql.as_str()).await {
                eprintln!("warning: cannot drop test database {name}: {e}");
            }
            let _ = conn.close().await;
        }
    }
}

/// Runs `scenario` against a fresh database of `engine`, then removes it.
pub async fn run<F, Fut>(engine: Engine, scenario: F)
where
    F: FnOnce(TestEnv) -> Fut,
    Fut: Future<Output = ()>,
{
    let (env, pg_name) = create(engine).await;
    let result = AssertUnwindSafe(scenario(env.clone())).catch_unwind().await;
    destroy(&env, pg_name).await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Declares `mod <scenario> { sqlite, postgres }` tests for each scenario
/// `async fn <scenario>(env: TestEnv)` in scope.
#[macro_export]
macro_rules! engine_tests {
    ($($name:ident),* $(,)?) => { $(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $crate::testing::run($crate::testing::Engine::Sqlite, super::$name).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $crate::testing::run($crate::testing::Engine::Postgres, super::$name).await
            }
        }
    )* };
}

/// A service served by a test on a loopback port.
pub struct TestServer {
    pub addr: SocketAddr,
    pub url: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    /// Binds `addr` (port 0 for an ephemeral one) and runs `serve` on it.
    pub async fn spawn<F, Fut>(addr: SocketAddr, serve: F) -> TestServer
    where
        F: FnOnce(TcpListener, CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = match TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => panic!("cannot bind {addr}: {e}"),
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("no local address: {e}"),
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(listener, shutdown.clone()));
        TestServer {
            addr,
            url: format!("http://{addr}"),
            shutdown,
            task,
        }
    }

    /// Graceful stop; waits (bounded) for the service to finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
    }
}

/// A free loopback port (bound then released), for a service that must be
/// started later at an address fixed in advance.
pub async fn free_addr() -> SocketAddr {
    match TcpListener::bind("127.0.0.1:0")
        .await
        .and_then(|l| l.local_addr())
    {
        Ok(a) => a,
        Err(e) => panic!("cannot reserve a port: {e}"),
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What [`SmtpSink`] answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkMode {
    /// Takes every mail.
    Accept,
    /// Refuses every recipient with this code (4xx: try later, 5xx: no).
    RefuseRcpt(u16),
    /// Takes the whole message, then refuses it with this code.
    RefuseData(u16),
}

/// A mail the sink accepted.
#[derive(Clone, Debug)]
pub struct SinkMail {
    pub from: String,
    pub to: Vec<String>,
    /// The message as sent (headers and body, CRLF line ends, dots
    /// unstuffed).
    pub data: String,
}

#[derive(Default)]
struct SinkState {
    mails: Vec<SinkMail>,
    /// When each transaction (`MAIL FROM`) started, accepted or not.
    attempts: Vec<std::time::Instant>,
    /// `user\0password` pairs from `AUTH PLAIN`.
    logins: Vec<(String, String)>,
}

/// A small SMTP server on 127.0.0.1 for tests of mail delivery: EHLO/HELO,
/// AUTH PLAIN, MAIL FROM, RCPT TO, DATA, RSET, NOOP, QUIT; no TLS (the
/// sender is configured with `tls: none`, which it allows for loopback).
/// It records what it is sent and answers as its [`SinkMode`] says.
pub struct SmtpSink {
    pub addr: SocketAddr,
    mode: std::sync::Arc<std::sync::Mutex<SinkMode>>,
    state: std::sync::Arc<std::sync::Mutex<SinkState>>,
    task: tokio::task::JoinHandle<()>,
}

impl SmtpSink {
    /// Listens on an ephemeral loopback port.
    pub async fn start(mode: SinkMode) -> SmtpSink {
        SmtpSink::start_at(SocketAddr::from(([127, 0, 0, 1], 0)), mode).await
    }

    /// Listens on `addr` (a relay that "comes back" where it was expected).
    pub async fn start_at(addr: SocketAddr, mode: SinkMode) -> SmtpSink {
        let listener = match TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => panic!("cannot bind the SMTP sink on {addr}: {e}"),
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("no local address: {e}"),
        };
        let mode = std::sync::Arc::new(std::sync::Mutex::new(mode));
        let state = std::sync::Arc::new(std::sync::Mutex::new(SinkState::default()));
        let (m, s) = (mode.clone(), state.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(sink_session(stream, m.clone(), s.clone()));
            }
        });
        SmtpSink {
            addr,
            mode,
            state,
            task,
        }
    }

    pub fn set_mode(&self, mode: SinkMode) {
        *lock(&self.mode) = mode;
    }

    /// Every mail accepted so far.
    pub fn mails(&self) -> Vec<SinkMail> {
        lock(&self.state).mails.clone()
    }

    /// Mails accepted for `rcpt`.
    pub fn mails_to(&self, rcpt: &str) -> Vec<SinkMail> {
        self.mails()
            .into_iter()
            .filter(|m| m.to.iter().any(|t| t == rcpt))
            .collect()
    }

    /// Start times of every transaction, accepted or refused.
    pub fn attempts(&self) -> Vec<std::time::Instant> {
        lock(&self.state).attempts.clone()
    }

    /// Credentials presented with `AUTH PLAIN`.
    pub fn logins(&self) -> Vec<(String, String)> {
        lock(&self.state).logins.clone()
    }

    /// Stops listening (connections in progress are dropped).
    pub fn stop(self) {
        self.task.abort();
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// `<a@b>` (with optional parameters after it) → `a@b`.
fn angle_addr(arg: &str) -> String {
    let start = arg.find('<').map(|i| i + 1).unwrap_or(0);
    let end = arg[start..]
        .find('>')
        .map(|i| start + i)
        .unwrap_or(arg.len());
    arg[start..end].trim().to_string()
}

async fn sink_session(
    stream: tokio::net::TcpStream,
    mode: std::sync::Arc<std::sync::Mutex<SinkMode>>,
    state: std::sync::Arc<std::sync::Mutex<SinkState>>,
) {
    use base64::Engine;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut from = String::new();
    let mut to = Vec::new();
    macro_rules! reply {
        ($text:expr) => {
            if write
                .write_all(format!("{}\r\n", $text).as_bytes())
                .await
                .is_err()
            {
                return;
            }
        };
    }
    reply!("220 sink.test ESMTP test sink");
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let cmd = line.trim_end_matches(['\r', '\n']);
        let upper = cmd.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            reply!("250-sink.test\r\n250-8BITMIME\r\n250-AUTH PLAIN\r\n250 SMTPUTF8");
        } else if upper.starts_with("HELO") {
            reply!("250 sink.test");
        } else if upper.starts_with("AUTH PLAIN") {
            let arg = cmd.get(10..).unwrap_or("").trim();
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(arg)
                .unwrap_or_default();
            let parts: Vec<String> = decoded
                .split(|b| *b == 0)
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            if parts.len() == 3 {
                lock(&state)
                    .logins
                    .push((parts[1].clone(), parts[2].clone()));
                reply!("235 2.7.0 authenticated");
            } else {
                reply!("501 5.5.2 malformed AUTH PLAIN");
            }
        } else if upper.starts_with("MAIL FROM:") {
            from = angle_addr(&cmd[10..]);
            to.clear();
            lock(&state).attempts.push(std::time::Instant::now());
            reply!("250 2.1.0 ok");
        } else if upper.starts_with("RCPT TO:") {
            let current = *lock(&mode);
            match current {
                SinkMode::RefuseRcpt(code) => {
                    reply!(format!("{code} recipient refused by the sink"))
                }
                _ => {
                    to.push(angle_addr(&cmd[8..]));
                    reply!("250 2.1.5 ok");
                }
            }
        } else if upper == "DATA" {
            if to.is_empty() {
                reply!("503 5.5.1 no recipients");
                continue;
            }
            reply!("354 end with <CRLF>.<CRLF>");
            let mut data = String::new();
            loop {
                line.clear();
                match lines.read_line(&mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                data.push_str(
                    line.strip_prefix('.')
                        .filter(|_| line.starts_with(".."))
                        .unwrap_or(&line),
                );
            }
            let current = *lock(&mode);
            match current {
                SinkMode::RefuseData(code) => reply!(format!("{code} message refused by the sink")),
                _ => {
                    lock(&state).mails.push(SinkMail {
                        from: from.clone(),
                        to: std::mem::take(&mut to),
                        data,
                    });
                    reply!("250 2.0.0 queued");
                }
            }
        } else if upper == "RSET" {
            to.clear();
            reply!("250 2.0.0 ok");
        } else if upper == "NOOP" {
            reply!("250 2.0.0 ok");
        } else if upper == "QUIT" {
            reply!("221 2.0.0 bye");
            return;
        } else {
            reply!("502 5.5.2 command not implemented");
        }
    }
}
