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
