//! Jail bookkeeping in process: recent matching events per (jail, client) within
//! `findtime`, and offence counts that make repeat bans longer.
//!
//! Both maps are bounded: a flood of distinct addresses cannot grow them without
//! limit (the oldest entries go first).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::{EventKind, JailCondition, JailConfig};

/// One finished request, as the jails see it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Event<'a> {
    pub route: Option<&'a str>,
    pub status: u16,
    pub auth_reject: Option<&'static str>,
    pub rate_limited: bool,
    pub malformed: bool,
}

impl JailCondition {
    pub fn matches(&self, e: &Event<'_>) -> bool {
        if let Some(r) = &self.route {
            if e.route != Some(r.as_str()) {
                return false;
            }
        }
        if !self.status.is_empty() && !self.status.contains(&e.status) {
            return false;
        }
        match self.event {
            None => true,
            Some(EventKind::RateLimited) => e.rate_limited,
            Some(EventKind::Malformed) => e.malformed,
            Some(EventKind::AuthRejected) => e
                .auth_reject
                .is_some_and(|r| self.reasons.is_empty() || self.reasons.iter().any(|x| x == r)),
        }
    }
}

impl JailConfig {
    pub fn matches(&self, e: &Event<'_>) -> bool {
        self.on.iter().any(|c| c.matches(e))
    }
}

const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Offence {
    pub count: u32,
    /// When the record may be forgotten (unix ms).
    pub forget_at_ms: u64,
}

type Hits = HashMap<(String, IpNet), VecDeque<u64>>;

/// Adds an event at `now` and returns how many lie within findtime (at most maxretry).
fn record(hits: &mut Hits, jail: &JailConfig, target: IpNet, now: u64) -> usize {
    let window = jail.findtime.as_millis() as u64;
    if hits.len() >= MAX_TRACKED {
        // Drop the stalest half rather than everything: an attacker flooding with
        // fresh addresses must not wipe the counters of the others.
        hits.retain(|_, q| q.back().is_some_and(|t| t + window > now));
        if hits.len() >= MAX_TRACKED {
            let mut lasts: Vec<u64> = hits.values().filter_map(|q| q.back().copied()).collect();
            let mid = lasts.len() / 2;
            let (_, cut, _) = lasts.select_nth_unstable(mid);
            let cut = *cut;
            hits.retain(|_, q| q.back().is_some_and(|t| *t > cut));
        }
    }
    let q = hits.entry((jail.name.clone(), target)).or_default();
    while q.front().is_some_and(|t| t + window <= now) {
        q.pop_front();
    }
    q.push_back(now);
    while q.len() > jail.maxretry as usize {
        q.pop_front();
    }
    q.len()
}

#[derive(Default)]
pub struct JailState {
    hits: Mutex<Hits>,
    offences: Mutex<HashMap<(String, IpNet), Offence>>,
}

impl JailState {
    /// Records one matching event at `now` (ms); returns the events within findtime.
    #[cfg(test)]
    pub fn hit(&self, jail: &JailConfig, target: IpNet, now: u64) -> u32 {
        let mut hits = self.hits.lock().unwrap_or_else(|p| p.into_inner());
        record(&mut hits, jail, target, now) as u32
    }

    /// Records one event; true — with the counter cleared, under the same lock —
    /// when it reaches maxretry (so concurrent events make exactly one ban).
    pub fn trip(&self, jail: &JailConfig, target: IpNet, now: u64) -> bool {
        let mut hits = self.hits.lock().unwrap_or_else(|p| p.into_inner());
        if record(&mut hits, jail, target, now) >= jail.maxretry as usize {
            hits.remove(&(jail.name.clone(), target));
            return true;
        }
        false
    }

    /// Forgets the events of a client that was just banned (a new window starts
    /// when the ban ends).
    pub fn reset(&self, jail: &str, target: IpNet) {
        let mut hits = self.hits.lock().unwrap_or_else(|p| p.into_inner());
        hits.remove(&(jail.to_owned(), target));
    }

    /// Counts one more offence and returns its number (1 for the first).
    pub fn offend(&self, jail: &str, target: IpNet, now: u64, keep_ms: u64) -> u32 {
        let mut m = self.offences.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_TRACKED {
            m.retain(|_, o| o.forget_at_ms > now);
            if m.len() >= MAX_TRACKED {
                let mut f: Vec<u64> = m.values().map(|o| o.forget_at_ms).collect();
                let mid = f.len() / 2;
                let (_, cut, _) = f.select_nth_unstable(mid);
                let cut = *cut;
                m.retain(|_, o| o.forget_at_ms > cut);
            }
        }
        let o = m.entry((jail.to_owned(), target)).or_insert(Offence {
            count: 0,
            forget_at_ms: 0,
        });
        if o.forget_at_ms <= now {
            o.count = 0;
        }
        o.count = o.count.saturating_add(1);
        o.forget_at_ms = now + keep_ms;
        o.count
    }

    /// Sets the count learnt from elsewhere (cluster store) if it is higher.
    pub fn note_offences(&self, jail: &str, target: IpNet, count: u32, forget_at_ms: u64) {
        let mut m = self.offences.lock().unwrap_or_else(|p| p.into_inner());
        let o = m.entry((jail.to_owned(), target)).or_insert(Offence {
            count: 0,
            forget_at_ms: 0,
        });
        if count >= o.count {
            o.count = count;
            o.forget_at_ms = o.forget_at_ms.max(forget_at_ms);
        }
    }

    pub fn offences(&self, now: u64) -> Vec<(String, IpNet, Offence)> {
        let m = self.offences.lock().unwrap_or_else(|p| p.into_inner());
        m.iter()
            .filter(|(_, o)| o.forget_at_ms > now)
            .map(|((j, t), o)| (j.clone(), *t, *o))
            .collect()
    }

    pub fn sweep(&self, now: u64) {
        let mut m = self.offences.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, o| o.forget_at_ms > now);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::BanAction;
    use std::time::Duration;

    fn jail() -> JailConfig {
        JailConfig {
            name: "login".into(),
            on: vec![
                JailCondition {
                    route: Some("login".into()),
                    status: vec![401, 403],
                    event: None,
                    reasons: vec![],
                },
                JailCondition {
                    route: None,
                    status: vec![],
                    event: Some(EventKind::AuthRejected),
                    reasons: vec!["signature".into()],
                },
            ],
            maxretry: 3,
            findtime: Duration::from_secs(60),
            bantime: Duration::from_secs(600),
            increment: None,
            ignoreip: vec![],
            action: BanAction::Reject,
        }
    }

    #[test]
    fn conditions() {
        let j = jail();
        let e = |route, status, auth| Event {
            route,
            status,
            auth_reject: auth,
            ..Event::default()
        };
        assert!(j.matches(&e(Some("login"), 401, None)));
        assert!(!j.matches(&e(Some("login"), 200, None)));
        assert!(!j.matches(&e(Some("other"), 401, None)));
        assert!(j.matches(&e(Some("other"), 401, Some("signature"))));
        assert!(!j.matches(&e(Some("other"), 401, Some("expired"))));
    }

    #[test]
    fn window_and_offences() {
        let j = jail();
        let s = JailState::default();
        let t: IpNet = "192.0.2.1/32".parse().unwrap();
        assert_eq!(s.hit(&j, t, 1_000), 1);
        assert_eq!(s.hit(&j, t, 2_000), 2);
        // The first hit leaves the 60 s window.
        assert_eq!(s.hit(&j, t, 61_500), 2);
        assert_eq!(s.hit(&j, t, 61_900), 3);
        s.reset("login", t);
        assert_eq!(s.hit(&j, t, 63_000), 1);
        s.reset("login", t);
        assert!(!s.trip(&j, t, 64_000));
        assert!(!s.trip(&j, t, 64_001));
        assert!(s.trip(&j, t, 64_002), "the third event trips maxretry 3");
        assert!(!s.trip(&j, t, 64_003), "and clears the counter");
        assert_eq!(s.offend("login", t, 0, 1_000), 1);
        assert_eq!(s.offend("login", t, 10, 1_000), 2);
        // Forgotten after keep_ms.
        assert_eq!(s.offend("login", t, 5_000, 1_000), 1);
    }
}
