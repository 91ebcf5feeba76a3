//! The connection to Redis in cluster mode, and what happens when it is lost.
//!
//! One multiplexed connection carries every command (concurrent requests are
//! pipelined on it). Callers never wait for a reconnect: while the link is down
//! `conn()` is `None` and they decide with local state at once; the cluster
//! service reconnects in the background. An outage is logged once when it starts
//! and once when it ends, and `gateway_redis_up` follows it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError};

use crate::config::RedisConfig;
use crate::metrics::metrics;

pub struct RedisLink {
    pub config: RedisConfig,
    client: redis::Client,
    conn: ArcSwapOption<MultiplexedConnection>,
    up: AtomicBool,
    /// Whether the current outage was already logged (also true before the first
    /// successful connection, so a gateway started without Redis says it once).
    outage_logged: AtomicBool,
    /// Bumped on every successful (re)connection: subscribers and the ban
    /// reconciliation notice that they must start over.
    generation: AtomicU64,
}

impl RedisLink {
    pub fn new(config: RedisConfig) -> Result<Self, RedisError> {
        let client = redis::Client::open(config.url.as_str())?;
        Ok(RedisLink {
            config,
            client,
            conn: ArcSwapOption::empty(),
            up: AtomicBool::new(false),
            outage_logged: AtomicBool::new(false),
            generation: AtomicU64::new(0),
        })
    }

    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// A handle on the shared connection, or `None` while Redis is unreachable.
    pub fn conn(&self) -> Option<MultiplexedConnection> {
        self.conn.load().as_ref().map(|c| (**c).clone())
    }

    /// `prefix` + `suffix`: every key and channel of this gateway.
    pub fn key(&self, suffix: &str) -> String {
        let mut k = String::with_capacity(self.config.prefix.len() + suffix.len());
        k.push_str(&self.config.prefix);
        k.push_str(suffix);
        k
    }

    /// (Re)connects; true when Redis answers a PING.
    pub async fn connect(&self) -> bool {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(self.config.timeout.max(Duration::from_millis(200)))
            .set_response_timeout(self.config.timeout);
        let attempt = async {
            let mut c = self
                .client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await?;
            redis::cmd("PING").query_async::<String>(&mut c).await?;
            Ok::<_, RedisError>(c)
        };
        match tokio::time::timeout(self.config.timeout * 4, attempt).await {
            Ok(Ok(c)) => {
                self.conn.store(Some(Arc::new(c)));
                self.generation.fetch_add(1, Ordering::Relaxed);
                if !self.up.swap(true, Ordering::Relaxed) {
                    tracing::info!("redis reachable: limits, bans and revocations are shared");
                }
                self.outage_logged.store(false, Ordering::Relaxed);
                metrics().redis_up.set(1);
                true
            }
            Ok(Err(e)) => {
                self.down(&e.to_string());
                false
            }
            Err(_) => {
                self.down("connection timed out");
                false
            }
        }
    }

    /// Marks the link down (logged once per outage); the protection service
    /// reconnects within 500 ms.
    pub fn down(&self, why: &str) {
        self.conn.store(None);
        self.up.store(false, Ordering::Relaxed);
        metrics().redis_up.set(0);
        if !self.outage_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = why,
                "redis unreachable: rate limits and bans fall back to this instance's local state"
            );
        }
    }

    /// Runs one command with the link's timeout. `None` means "decide locally":
    /// the link is down, the command timed out, or Redis failed (connection-level
    /// failures also mark the link down).
    pub async fn run<T, F, Fut>(&self, component: &'static str, f: F) -> Option<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let fallback = || {
            metrics()
                .store_fallback
                .with_label_values(&[component])
                .inc();
        };
        let Some(conn) = self.conn() else {
            fallback();
            return None;
        };
        match tokio::time::timeout(self.config.timeout, f(conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                // Unreachable, or reachable but unable to serve (failover, loading).
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || matches!(
                        e.kind(),
                        redis::ErrorKind::ReadOnly
                            | redis::ErrorKind::BusyLoadingError
                            | redis::ErrorKind::MasterDown
                    )
                {
                    self.down(&e.to_string());
                } else {
                    tracing::warn!(error = %e, component, "redis command failed");
                }
                fallback();
                None
            }
            Err(_) => {
                self.down("command timed out");
                fallback();
                None
            }
        }
    }
}
