//! The protection background service, every 500 ms: expires bans, saves the ban
//! state when it changed, and in cluster mode reconnects to Redis, keeps a
//! subscription to the bans and revocations channels, and resyncs the ban table
//! once a second (which also repairs any announcement a subscriber missed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Deserialize;

use crate::cluster::RedisLink;
use crate::shield::Shield;
use crate::snapshot::SnapshotHandle;

pub struct ProtectService {
    snapshot: SnapshotHandle,
    shield: Arc<Shield>,
}

impl ProtectService {
    pub fn new(snapshot: SnapshotHandle, shield: Arc<Shield>) -> Self {
        ProtectService { snapshot, shield }
    }
}

struct Subscription {
    link: Arc<RedisLink>,
    generation: u64,
    task: tokio::task::JoinHandle<()>,
}

#[async_trait]
impl BackgroundService for ProtectService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sub: Option<Subscription> = None;
        let mut last_resync: Option<Instant> = None;
        loop {
            let snap = self.snapshot.load_full();
            tokio::select! {
                _ = shutdown.changed() => {
                    if let Some(dir) = &snap.config.store.state_dir {
                        self.shield.bans.save_if_dirty(dir);
                    }
                    if let Some(s) = sub.take() {
                        s.task.abort();
                    }
                    return;
                }
                _ = tick.tick() => {}
                _ = self.shield.bans.save_now.notified() => {}
            }
            let snap = self.snapshot.load_full();
            self.shield.bans.sweep();
            if let Some(dir) = &snap.config.store.state_dir {
                self.shield.bans.save_if_dirty(dir);
            }
            let Some(link) = snap.redis.clone() else {
                if let Some(s) = sub.take() {
                    s.task.abort();
                }
                continue;
            };
            if sub.as_ref().is_some_and(|s| {
                !Arc::ptr_eq(&s.link, &link)
                    || s.task.is_finished()
                    || s.generation != link.generation()
            }) {
                if let Some(s) = sub.take() {
                    s.task.abort();
                }
            }
            if !link.is_up() && !link.connect().await {
                continue;
            }
            if sub.is_none() {
                let task = tokio::spawn(listen(
                    link.clone(),
                    self.snapshot.clone(),
                    self.shield.clone(),
                ));
                sub = Some(Subscription {
                    link: link.clone(),
                    generation: link.generation(),
                    task,
                });
            }
            if last_resync.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                last_resync = Some(Instant::now());
                self.shield
                    .bans
                    .resync(&link, snap.config.limits.ipv6_prefix)
                    .await;
            }
        }
    }
}

#[derive(Deserialize)]
struct Revoked {
    jti: String,
    exp: u64,
}

/// Receives bans from the other instances and revocations from galion-auth until
/// the subscription breaks (then the link is marked down and the service
/// reconnects and subscribes again).
async fn listen(link: Arc<RedisLink>, snapshot: SnapshotHandle, shield: Arc<Shield>) {
    let bans_ch = link.key("bans");
    let rev_ch = link.config.revocations_channel.clone();
    let ps = async {
        let mut ps = link.client().get_async_pubsub().await?;
        ps.subscribe(&[bans_ch.as_str(), rev_ch.as_str()]).await?;
        Ok::<_, redis::RedisError>(ps)
    };
    let ps = match tokio::time::timeout(link.config.timeout * 4, ps).await {
        Ok(Ok(ps)) => ps,
        Ok(Err(e)) => return link.down(&format!("subscribe: {e}")),
        Err(_) => return link.down("subscribe: timed out"),
    };
    let mut messages = ps.into_on_message();
    while let Some(msg) = messages.next().await {
        let snap = snapshot.load();
        let payload = msg.get_payload_bytes();
        if msg.get_channel_name() == bans_ch {
            shield
                .bans
                .apply_remote(payload, snap.config.limits.ipv6_prefix);
        } else if msg.get_channel_name() == rev_ch {
            let Ok(r) = serde_json::from_slice::<Revoked>(payload) else {
                tracing::debug!("ignored a malformed revocation message");
                continue;
            };
            if let Some(rev) = &snap.auth.revocations {
                if rev.revoke(&r.jti, r.exp) {
                    if let Some(v) = &snap.auth.jwt {
                        v.forget_jti(&r.jti);
                    }
                }
            }
        }
    }
    link.down("subscription closed");
}
