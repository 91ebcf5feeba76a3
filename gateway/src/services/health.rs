//! Active health checks for every pool of the live snapshot.
//!
//! One background task walks the current snapshot a few times per second and runs
//! each pool's HTTP check when its interval is due. Pools are shared between
//! snapshots when their definition did not change, so a reload keeps health state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::metrics::metrics;
use crate::snapshot::SnapshotHandle;
use crate::upstream::Pool;

pub struct HealthChecker {
    snapshot: SnapshotHandle,
}

impl HealthChecker {
    pub fn new(snapshot: SnapshotHandle) -> Self {
        HealthChecker { snapshot }
    }

    fn publish(pool: &Pool) {
        pool.refresh_health_flags();
        let gauge = &metrics().upstream_healthy;
        for (i, s) in pool.servers.iter().enumerate() {
            gauge
                .with_label_values(&[pool.name.as_ref(), s.label.as_str()])
                .set(pool.available(i) as i64);
        }
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Keyed by pool identity: a pool replaced by a reload starts a fresh schedule.
        let mut due: HashMap<usize, Instant> = HashMap::new();
        let mut running: HashMap<usize, tokio::task::JoinHandle<()>> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => break,
            }
            let snap = self.snapshot.load_full();
            let now = Instant::now();
            let mut live = Vec::new();
            for pool in snap.pools.values() {
                let id = Arc::as_ptr(pool) as usize;
                live.push(id);
                Self::publish(pool);
                let Some(interval) = pool.health_interval() else {
                    continue;
                };
                if running.get(&id).is_some_and(|h| !h.is_finished()) {
                    continue;
                }
                if due.get(&id).is_some_and(|t| *t > now) {
                    continue;
                }
                due.insert(id, now + interval);
                let pool = pool.clone();
                running.insert(
                    id,
                    tokio::spawn(async move {
                        pool.backends().run_health_check(true).await;
                        Self::publish(&pool);
                    }),
                );
            }
            due.retain(|id, _| live.contains(id));
            running.retain(|id, h| {
                let keep = live.contains(id);
                if !keep {
                    h.abort();
                }
                keep
            });
        }
        for (_, h) in running {
            h.abort();
        }
    }
}
