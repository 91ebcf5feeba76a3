//! The table of active bans, read by every request and every accepted connection.
//!
//! Single addresses (and IPv6 groups) live in sharded hash maps; wider networks
//! banned by hand in a short list scanned after the map. An atomic count lets the
//! common case — nobody banned — skip the lookup entirely.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::BanAction;
use crate::sharded::ShardedMap;

const SHARDS: usize = 16;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ban {
    /// The banned address (`/32`, or the IPv6 group) or network.
    pub target: IpNet,
    /// The jail that issued it, or `manual`.
    pub jail: String,
    pub reason: String,
    /// Unix time in milliseconds at which the ban ends.
    pub until_ms: u64,
    /// How many times this target was banned by this jail (1 for the first ban).
    pub offences: u32,
    #[serde(with = "action_serde")]
    pub action: BanAction,
}

mod action_serde {
    use crate::config::BanAction;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(a: &BanAction, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(a.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BanAction, D::Error> {
        Ok(match String::deserialize(d)?.as_str() {
            "drop" => BanAction::Drop,
            _ => BanAction::Reject,
        })
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn is_host(n: &IpNet, ipv6_prefix: u8) -> bool {
    match n {
        IpNet::V4(v4) => v4.prefix_len() == 32,
        IpNet::V6(v6) => v6.prefix_len() == ipv6_prefix,
    }
}

pub struct BanTable {
    /// Hosts (`/32`, IPv6 groups): unbounded, bans are issued by the gateway's
    /// jails or by hand and swept when they end.
    hosts: ShardedMap<IpNet, Arc<Ban>>,
    nets: RwLock<Vec<Arc<Ban>>>,
    count: AtomicUsize,
    net_count: AtomicUsize,
}

impl Default for BanTable {
    fn default() -> Self {
        BanTable {
            hosts: ShardedMap::new(SHARDS, None),
            nets: RwLock::new(Vec::new()),
            count: AtomicUsize::new(0),
            net_count: AtomicUsize::new(0),
        }
    }
}

impl BanTable {
    /// The active ban covering `ip` (whose group is `group`), if any.
    pub fn lookup(&self, ip: IpAddr, group: &IpNet, now: u64) -> Option<Arc<Ban>> {
        if self.count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        if let Some(b) = self.hosts.get(group).filter(|b| b.until_ms > now) {
            return Some(b);
        }
        if self.net_count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let nets = self.nets.read().unwrap_or_else(|p| p.into_inner());
        nets.iter()
            .find(|b| b.until_ms > now && b.target.contains(&ip))
            .cloned()
    }

    /// Adds the ban of `ban.target`, or replaces it unless the current one lasts
    /// longer (a short jail ban never shortens a long manual one).
    pub fn insert(&self, ban: Ban, ipv6_prefix: u8) {
        let ban = Arc::new(ban);
        if is_host(&ban.target, ipv6_prefix) {
            let added = self.hosts.update(ban.target, |cur| {
                if cur.as_ref().is_some_and(|c| c.until_ms > ban.until_ms) {
                    return false;
                }
                cur.replace(ban).is_none()
            });
            if added {
                self.count.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            let mut nets = self.nets.write().unwrap_or_else(|p| p.into_inner());
            if let Some(slot) = nets.iter_mut().find(|b| b.target == ban.target) {
                if slot.until_ms <= ban.until_ms {
                    *slot = ban;
                }
            } else {
                nets.push(ban);
                self.count.fetch_add(1, Ordering::Relaxed);
                self.net_count.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The ban of exactly `target`.
    pub fn get(&self, target: &IpNet) -> Option<Arc<Ban>> {
        self.hosts.get(target).or_else(|| {
            self.nets
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .find(|b| b.target == *target)
                .cloned()
        })
    }

    pub fn remove(&self, target: &IpNet) -> Option<Arc<Ban>> {
        let removed = self.hosts.remove(target).or_else(|| {
            let mut nets = self.nets.write().unwrap_or_else(|p| p.into_inner());
            let i = nets.iter().position(|b| b.target == *target)?;
            self.net_count.fetch_sub(1, Ordering::Relaxed);
            Some(nets.swap_remove(i))
        });
        if removed.is_some() {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Every ban, expired or not.
    pub fn all(&self) -> Vec<Arc<Ban>> {
        let mut out: Vec<Arc<Ban>> = Vec::new();
        self.hosts.for_each(|_, b| out.push(b.clone()));
        out.extend(
            self.nets
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned(),
        );
        out
    }

    /// Drops expired bans; returns them.
    pub fn sweep(&self, now: u64) -> Vec<Arc<Ban>> {
        let mut out = Vec::new();
        self.hosts.retain(|_, b| {
            let keep = b.until_ms > now;
            if !keep {
                out.push(b.clone());
            }
            keep
        });
        self.count.fetch_sub(out.len(), Ordering::Relaxed);
        let expired_nets: Vec<IpNet> = self
            .nets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|b| b.until_ms <= now)
            .map(|b| b.target)
            .collect();
        out.extend(expired_nets.iter().filter_map(|t| self.remove(t)));
        out
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::client_ip::group;

    fn ban(target: &str, until_ms: u64) -> Ban {
        Ban {
            target: target.parse().unwrap(),
            jail: "t".into(),
            reason: "test".into(),
            until_ms,
            offences: 1,
            action: BanAction::Reject,
        }
    }

    #[test]
    fn hosts_groups_and_networks() {
        let t = BanTable::default();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let check = |t: &BanTable, s: &str, now| t.lookup(ip(s), &group(ip(s), 64), now).is_some();
        assert!(!check(&t, "192.0.2.1", 10));
        t.insert(ban("192.0.2.1/32", 100), 64);
        t.insert(ban("2001:db8:1:2::/64", 100), 64);
        t.insert(ban("198.51.100.0/24", 100), 64);
        assert_eq!(t.len(), 3);
        assert!(check(&t, "192.0.2.1", 10));
        assert!(check(&t, "::ffff:192.0.2.1", 10));
        assert!(!check(&t, "192.0.2.2", 10));
        assert!(check(&t, "2001:db8:1:2:ffff::9", 10));
        assert!(!check(&t, "2001:db8:1:3::9", 10));
        assert!(check(&t, "198.51.100.77", 10));
        // Expired bans no longer apply and are swept.
        assert!(!check(&t, "192.0.2.1", 100));
        assert_eq!(t.sweep(100).len(), 3);
        assert!(t.is_empty());
        t.insert(ban("192.0.2.1/32", 100), 64);
        assert!(t.remove(&"192.0.2.1/32".parse().unwrap()).is_some());
        assert!(!check(&t, "192.0.2.1", 10));
    }
}
