//! Redis for the cluster-mode tests: the machine's shared server (with a unique key
//! prefix per test, deleted afterwards) or a private `redis-server` on a free port
//! that a test can stop and start again.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{eventually, free_addr};

/// The shared Redis every cluster test may use: `GALION_TEST_REDIS_URL`, else
/// the one on 127.0.0.1:6379 (`./test.sh` sets the variable, starting a private
/// server under `target/` when none answers).
pub fn shared_redis() -> String {
    std::env::var("GALION_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

/// A key prefix no other test run uses.
pub fn unique_prefix(test: &str) -> String {
    format!("galion-test:{test}:{}:", rand_suffix())
}

fn rand_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

pub async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

/// Keys under `prefix`.
pub async fn keys(url: &str, prefix: &str) -> Vec<String> {
    let mut c = connect(url).await;
    redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut c)
        .await
        .unwrap_or_default()
}

/// Deletes every key under `prefix`.
pub async fn cleanup(url: &str, prefix: &str) {
    let ks = keys(url, prefix).await;
    if ks.is_empty() {
        return;
    }
    let mut c = connect(url).await;
    let _: Result<(), _> = redis::cmd("DEL").arg(&ks).query_async(&mut c).await;
}

/// A private redis-server process.
pub struct RedisServer {
    pub addr: SocketAddr,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = RedisServer {
            addr: free_addr(),
            child: None,
            dir,
        };
        s.start_again().await;
        s
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// (Re)starts the server on its port.
    pub async fn start_again(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.addr.port().to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (apt install redis-server)");
        self.child = Some(child);
        let url = self.url();
        let up = eventually(10, || {
            let url = url.clone();
            async move {
                let c = redis::Client::open(url.as_str()).ok()?;
                let mut c = c.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("PING").query_async::<String>(&mut c).await.ok()
            }
        })
        .await;
        assert!(up.is_some(), "redis-server did not start on {}", self.addr);
    }

    /// Kills the server (by its PID).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Let the port go before a restart binds it again.
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
