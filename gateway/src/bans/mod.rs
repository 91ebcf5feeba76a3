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

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Held while the state is written, so the last save at exit waits for one
    /// still in flight on a background thread instead of racing it.
    save_lock: Mutex<()>,
    /// Bans not yet confirmed stored in Redis (pushed at the next resync).
    pending: Mutex<HashSet<IpNet>>,
    /// Unbans made while Redis was unreachable (lifted there when it returns).
    pending_unbans: Mutex<HashSet<IpNet>>,
    /// When each target was last banned here or announced to us.
    recent: Mutex<HashMap<IpNet, Instant>>,
    /// The link generation the table was last reconciled with.
    synced_generation: AtomicU64,
}

impl Default for Bans {
    fn default() -> Self {
        Bans {
            table: BanTable::default(),
            jails: JailState::default(),
            dirty: AtomicBool::new(false),
            save_now: tokio::sync::Notify::new(),
            save_lock: Mutex::new(()),
            pending: Mutex::new(HashSet::new()),
            pending_unbans: Mutex::new(HashSet::new()),
            recent: Mutex::new(HashMap::new()),
            synced_generation: AtomicU64::new(0),
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
        let target = group(ip, ipv6_prefix);
        for jail in jails {
            // An ignored address is never banned, nor is the IPv6 group holding one.
            // Matched first: most requests match no jail, and ignoreip holds
            // every trusted proxy network (Cloudflare's list among them).
            if !jail.matches(ev) {
                continue;
            }
            let ignored = jail
                .ignoreip
                .iter()
                .any(|n| n.contains(&ip) || target.contains(&n.network()));
            if ignored {
                continue;
            }
            if self.check(ip, ipv6_prefix).is_some() {
                return;
            }
            let now = now_ms();
            let keep = keep_offence(jail);
            let keep_ms = keep.as_millis() as u64;
            let shared = match link {
                Some(l) => cluster::hit(l, jail, target, keep).await,
                None => None,
            };
            let offences = match shared {
                Some(0) => continue,
                Some(n) => {
                    self.jails
                        .note_offences(&jail.name, target, n, now + keep_ms);
                    n
                }
                None => {
                    if !self.jails.trip(jail, target, now) {
                        continue;
                    }
                    self.jails.offend(&jail.name, target, now, keep_ms)
                }
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
        self.touch(ban.target);
        self.changed();
        if let Some(l) = link {
            // Pending until Redis has it: a resync running meanwhile must not drop it.
            lock(&self.pending).insert(ban.target);
            if cluster::publish_ban(l, &ban).await {
                lock(&self.pending).remove(&ban.target);
            }
        }
    }

    /// Lifts the ban of exactly `target` (and forgets its jail counters); false
    /// when there was none.
    pub async fn unban(&self, target: &IpNet, jails: &[String], link: Option<&RedisLink>) -> bool {
        let target = target.trunc();
        let removed = self.table.remove(&target).is_some();
        lock(&self.pending).remove(&target);
        for j in jails {
            self.jails.reset(j, target);
        }
        let remote = match link {
            Some(l) => {
                cluster::reset_counters(l, jails, &target).await;
                match cluster::publish_unban(l, &target).await {
                    Some(held) => held,
                    None => {
                        // Redis is down: remember to lift it there when it returns.
                        lock(&self.pending_unbans).insert(target);
                        false
                    }
                }
            }
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
        let _writing = self.save_lock.lock().unwrap_or_else(|p| p.into_inner());
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
                    self.touch(b.target);
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

    fn touch(&self, target: IpNet) {
        lock(&self.recent).insert(target, Instant::now());
    }

    /// Makes the local table match Redis. After each (re)connection the local view
    /// is pushed first — unbans made while Redis was away, then every local ban
    /// (the longer ban wins) — so neither an outage nor a Redis restart without
    /// persistence loses a decision.
    pub async fn resync(&self, link: &RedisLink, ipv6_prefix: u8) {
        let generation = link.generation();
        let fresh_link = self.synced_generation.load(Ordering::Relaxed) != generation;
        let unbans: Vec<IpNet> = lock(&self.pending_unbans).iter().copied().collect();
        for t in unbans {
            if cluster::publish_unban(link, &t).await.is_some() {
                lock(&self.pending_unbans).remove(&t);
            }
        }
        let pending: HashSet<IpNet> = lock(&self.pending).clone();
        let now = now_ms();
        for b in self.table.all() {
            if (fresh_link || pending.contains(&b.target))
                && b.until_ms > now
                && cluster::publish_ban(link, &b).await
            {
                lock(&self.pending).remove(&b.target);
            }
        }
        let Some(remote) = cluster::all_bans(link).await else {
            return;
        };
        self.synced_generation.store(generation, Ordering::Relaxed);
        let keep: HashSet<IpNet> = {
            let mut recent = lock(&self.recent);
            // Bans added or announced in the last seconds may postdate the snapshot.
            recent.retain(|_, at| at.elapsed() < Duration::from_secs(5));
            remote
                .iter()
                .map(|b| b.target)
                .chain(lock(&self.pending).iter().copied())
                .chain(recent.keys().copied())
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
            let same = self.table.get(&b.target).is_some_and(|cur| *cur == b);
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
