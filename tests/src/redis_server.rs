//! Redis for the cluster-mode tests: the machine's shared server (with a unique key
//! prefix per test, deleted afterwards) or a private `redis-server` on a free port
//! that a test can stop and start again.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::free_addr;

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
        // A port from `free_addr` is not reserved: a parallel test can bind it
        // first, and redis-server then exits. It starts again on another port.
        for _ in 0..3 {
            s.spawn();
            if s.up().await {
                return s;
            }
            s.stop();
            s.addr = free_addr();
        }
        s.start_again().await;
        s
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// (Re)starts the server on its port.
    pub async fn start_again(&mut self) {
        self.spawn();
        assert!(
            self.up().await,
            "redis-server did not start on {}",
            self.addr
        );
    }

    fn spawn(&mut self) {
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
    }

    /// Whether the server answers within 10 s; `false` at once when the
    /// process exited (its port was taken).
    async fn up(&mut self) -> bool {
        let url = self.url();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if self
                .child
                .as_mut()
                .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
            {
                return false;
            }
            let pong = async {
                let c = redis::Client::open(url.as_str()).ok()?;
                let mut c = c.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("PING").query_async::<String>(&mut c).await.ok()
            };
            // Bounded: a port taken by a process that accepts and stays
            // silent would hold the handshake for ever.
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(1), pong).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The race `start` guards against: the port is bound by someone else
    /// before redis-server binds it. The fixture sees the server exit instead
    /// of waiting out its 10 s, and a fresh start gets a port of its own.
    #[tokio::test]
    async fn a_taken_port_is_noticed_and_another_one_used() {
        let thief = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut s = RedisServer {
            addr: thief.local_addr().expect("addr"),
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        s.spawn();
        let t = std::time::Instant::now();
        assert!(!s.up().await);
        assert!(t.elapsed() < Duration::from_secs(10));
        drop(s);
        let s = RedisServer::start().await;
        assert_ne!(s.addr, thief.local_addr().expect("addr"));
        let mut c = connect(&s.url()).await;
        let pong: String = redis::cmd("PING").query_async(&mut c).await.expect("ping");
        assert_eq!(pong, "PONG");
    }
}
