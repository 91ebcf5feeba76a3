//! Automatic bans (the fail2ban replacement): jails watch finished requests, and
//! an IP that trips one is banned for `bantime` (longer for repeat offenders).
//!
//! The table is local and read without I/O on every request. In cluster mode every
//! ban is also written to Redis and announced on a channel, so the other instances
//! enforce it at once; a periodic resync repairs anything a lost message missed.
//! Jail counters live in Redis too, so N instances do not give an attacker N times
//! the retries. Without Redis (or while it is down) everything works locally.

mod cluster;
pub mod jails;
pub mod persist;
pub mod table;

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;

use crate::client_ip::group;
use crate::cluster::RedisLink;
use crate::config::{BanAction, JailConfig};
use crate::metrics::metrics;
pub use jails::Event;
use jails::JailState;
pub use table::{now_ms, Ban, BanTable};

pub struct Bans {
    pub table: BanTable,
    jails: JailState,
    /// Set when the persisted state is out of date.
    dirty: AtomicBool,
    /// Wakes the protection service to save at once (a crash or a fast shutdown
    /// right after a ban must not lose it).
    pub save_now: tokio::sync::Notify,
    /// Bans made while Redis was unreachable, pushed to it when it returns.
    pending: Mutex<HashSet<IpNet>>,
    hit_script: redis::Script,
}

impl Default for Bans {
    fn default() -> Self {
        Bans {
            table: BanTable::default(),
            jails: JailState::default(),
            dirty: AtomicBool::new(false),
            save_now: tokio::sync::Notify::new(),
            pending: Mutex::new(HashSet::new()),
            hit_script: redis::Script::new(cluster::HIT_SCRIPT),
        }
    }
}

/// How long an offence is remembered after its ban ends (for `bantime_increment`).
fn keep_offence(jail: &JailConfig) -> Duration {
    jail.increment
        .map(|(_, max)| max)
        .unwrap_or(jail.bantime)
        .max(Duration::from_secs(86_400))
}

impl Bans {
    /// The ban covering a client, if any (the hot path: no I/O, a read lock at most).
    pub fn check(&self, ip: IpAddr, ipv6_prefix: u8) -> Option<Arc<Ban>> {
        if self.table.is_empty() {
            return None;
        }
        self.table.lookup(ip, &group(ip, ipv6_prefix), now_ms())
    }

    /// Feeds one finished request to the jails.
    pub async fn observe(
        &self,
        jails: &[JailConfig],
        ip: IpAddr,
        ipv6_prefix: u8,
        ev: &Event<'_>,
        link: Option<&RedisLink>,
    ) {
        for jail in jails {
            if !jail.matches(ev) || jail.ignoreip.iter().any(|n| n.contains(&ip)) {
                continue;
            }
            if self.check(ip, ipv6_prefix).is_some() {
                return;
            }
            let target = group(ip, ipv6_prefix);
            let now = now_ms();
            let shared = match link {
                Some(l) => cluster::hit(l, &self.hit_script, jail, target).await,
                None => None,
            };
            let count = shared.unwrap_or_else(|| self.jails.hit(jail, target, now));
            if count < jail.maxretry {
                continue;
            }
            self.jails.reset(&jail.name, target);
            let keep = keep_offence(jail);
            let local = self
                .jails
                .offend(&jail.name, target, now, keep.as_millis() as u64);
            let offences = match link {
                Some(l) => cluster::offend(l, &jail.name, target, keep)
                    .await
                    .map_or(local, |n| n.max(local)),
                None => local,
            };
            let lasts = jail.ban_duration(offences);
            let ban = Ban {
                target,
                jail: jail.name.clone(),
                reason: describe(ev),
                until_ms: now + lasts.as_millis() as u64,
                offences,
                action: jail.action,
            };
            tracing::warn!(
                target = %target,
                jail = %jail.name,
                offences,
                seconds = lasts.as_secs(),
                reason = %ban.reason,
                "banned"
            );
            metrics()
                .bans_total
                .with_label_values(&[jail.name.as_str()])
                .inc();
            self.add(ban, ipv6_prefix, link).await;
            return;
        }
    }

    /// Bans by hand (admin API).
    pub async fn ban_manual(
        &self,
        target: IpNet,
        lasts: Duration,
        reason: String,
        action: BanAction,
        ipv6_prefix: u8,
        link: Option<&RedisLink>,
    ) -> Ban {
        let ban = Ban {
            target: target.trunc(),
            jail: "manual".into(),
            reason,
            until_ms: now_ms() + lasts.as_millis() as u64,
            offences: 1,
            action,
        };
        tracing::warn!(target = %ban.target, seconds = lasts.as_secs(), "banned by hand");
        metrics().bans_total.with_label_values(&["manual"]).inc();
        self.add(ban.clone(), ipv6_prefix, link).await;
        ban
    }

    async fn add(&self, ban: Ban, ipv6_prefix: u8, link: Option<&RedisLink>) {
        self.table.insert(ban.clone(), ipv6_prefix);
        self.changed();
        let shared = match link {
            Some(l) => cluster::publish_ban(l, &ban).await,
            None => true,
        };
        if !shared {
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(ban.target);
        }
    }

    /// Lifts the ban of exactly `target`; false when there was none.
    pub async fn unban(&self, target: &IpNet, link: Option<&RedisLink>) -> bool {
        let target = target.trunc();
        let removed = self.table.remove(&target).is_some();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&target);
        let remote = match link {
            Some(l) => cluster::publish_unban(l, &target).await,
            None => false,
        };
        if removed || remote {
            tracing::info!(target = %target, "unbanned");
            self.changed();
        }
        removed || remote
    }

    /// Active bans, soonest to end first.
    pub fn list(&self) -> Vec<Arc<Ban>> {
        let now = now_ms();
        let mut v: Vec<_> = self
            .table
            .all()
            .into_iter()
            .filter(|b| b.until_ms > now)
            .collect();
        v.sort_by_key(|b| b.until_ms);
        v
    }

    fn changed(&self) {
        self.dirty.store(true, Ordering::Relaxed);
        metrics().bans_active.set(self.table.len() as i64);
        self.save_now.notify_one();
    }

    /// Drops expired bans and old offence records.
    pub fn sweep(&self) {
        let now = now_ms();
        if !self.table.sweep(now).is_empty() {
            self.changed();
        }
        self.jails.sweep(now);
    }

    /// Restores the saved state (expired bans are skipped).
    pub fn restore(&self, dir: &Path, ipv6_prefix: u8) {
        match persist::load(dir) {
            Ok(state) => {
                let now = now_ms();
                let mut n = 0;
                for b in state.bans.into_iter().filter(|b| b.until_ms > now) {
                    self.table.insert(b, ipv6_prefix);
                    n += 1;
                }
                for o in state.offences {
                    self.jails.note_offences(
                        &o.jail,
                        o.target,
                        o.offence.count,
                        o.offence.forget_at_ms,
                    );
                }
                metrics().bans_active.set(self.table.len() as i64);
                if n > 0 {
                    tracing::info!(bans = n, dir = %dir.display(), "restored bans");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the saved bans; starting without them")
            }
        }
    }

    /// Writes the state when it changed since the last save.
    pub fn save_if_dirty(&self, dir: &Path) {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return;
        }
        let now = now_ms();
        let state = persist::State {
            bans: self.list().iter().map(|b| (**b).clone()).collect(),
            offences: self
                .jails
                .offences(now)
                .into_iter()
                .map(|(jail, target, offence)| persist::SavedOffence {
                    jail,
                    target,
                    offence,
                })
                .collect(),
        };
        if let Err(e) = persist::save(dir, &state) {
            self.dirty.store(true, Ordering::Relaxed);
            tracing::error!(error = %e, dir = %dir.display(), "cannot save bans");
        }
    }

    /// Applies a message from the bans channel (another instance's ban or unban).
    pub fn apply_remote(&self, payload: &[u8], ipv6_prefix: u8) {
        match cluster::parse_message(payload) {
            Some(cluster::Message::Ban(b)) => {
                if b.until_ms > now_ms() {
                    self.table.insert(b, ipv6_prefix);
                    self.changed();
                }
            }
            Some(cluster::Message::Unban(t)) => {
                if self.table.remove(&t).is_some() {
                    self.changed();
                }
            }
            None => tracing::debug!("ignored a malformed message on the bans channel"),
        }
    }

    /// Makes the local table match Redis (after pushing bans made while it was down).
    pub async fn resync(&self, link: &RedisLink, ipv6_prefix: u8) {
        let pending: Vec<Ban> = {
            let p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            self.table
                .all()
                .into_iter()
                .filter(|b| p.contains(&b.target))
                .map(|b| (*b).clone())
                .collect()
        };
        for b in &pending {
            if cluster::publish_ban(link, b).await {
                self.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&b.target);
            }
        }
        let Some(remote) = cluster::all_bans(link).await else {
            return;
        };
        let now = now_ms();
        let keep: HashSet<IpNet> = {
            let p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            remote
                .iter()
                .map(|b| b.target)
                .chain(p.iter().copied())
                .collect()
        };
        let mut changed = false;
        for b in self.table.all() {
            if !keep.contains(&b.target) {
                self.table.remove(&b.target);
                changed = true;
            }
        }
        for b in remote {
            if b.until_ms <= now {
                continue;
            }
            let same = self
                .table
                .lookup(b.target.addr(), &b.target, now)
                .is_some_and(|cur| *cur == b);
            if !same {
                self.table.insert(b, ipv6_prefix);
                changed = true;
            }
        }
        if changed {
            self.changed();
        }
    }
}

fn describe(ev: &Event<'_>) -> String {
    let mut s = format!("status {}", ev.status);
    if let Some(r) = ev.route {
        s.push_str(" on route ");
        s.push_str(r);
    }
    if let Some(a) = ev.auth_reject {
        s.push_str(", auth rejected: ");
        s.push_str(a);
    }
    if ev.rate_limited {
        s.push_str(", rate limited");
    }
    if ev.malformed {
        s.push_str(", malformed request");
    }
    s
}
