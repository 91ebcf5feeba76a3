//! Revoked token ids (logout), polled from galion-auth's `/revocations` feed.
//!
//! Polled every `interval` (500 ms by default) so a revoked token is refused within a
//! second. Readers see an immutable set through `ArcSwap`; the poller replaces it when
//! it changes.
//!
//! The feed is read by sequence number: each answer carries a `cursor` (the highest
//! seq it covers) that the next poll passes back as `after_seq`, so a poll that fails
//! (auth down, a slow answer) loses nothing: the next one resumes from the last seq
//! applied, a page at a time. Reading by `revoked_at` instead (`since`, still used
//! against a feed without `cursor`) missed revocations whose transaction committed
//! after the poller's time window had moved on (issue 21).
//!
//! An entry is kept until the token's `exp` + the JWT leeway, the last instant the
//! verifier accepts the token; dropping it at `exp` let a revoked token back in for
//! the leeway (issue 21).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::Deserialize;

use super::cache::now_secs;
use crate::config::RevocationConfig;

/// Pages read in one poll at most before yielding to the next tick (a backlog of
/// this many thousand revocations is caught up over several polls).
const MAX_PAGES_PER_POLL: usize = 50;

#[derive(Deserialize)]
struct Feed {
    revocations: Vec<Entry>,
    /// Highest seq covered by this answer; absent from feeds that predate it.
    #[serde(default)]
    cursor: Option<u64>,
    /// The answer was one full page: more follow `cursor`.
    #[serde(default)]
    more: bool,
    #[serde(default)]
    server_time: Option<u64>,
}

#[derive(Deserialize)]
struct Entry {
    jti: String,
    exp: u64,
}

/// Where the next poll reads from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cursor {
    /// Nothing read yet: the whole list.
    Start,
    /// Everything up to this seq is applied.
    Seq(u64),
    /// A feed without seqs: its last `server_time`.
    Time(u64),
}

/// Token ids and their `exp`. foldhash, not SipHash: every token a cached
/// identity passes is looked up here, and the keys come from the auth
/// service's feed (and verified tokens), not from what a client can choose.
type Revoked = HashMap<String, u64, foldhash::fast::RandomState>;

pub struct Revocations {
    pub config: RevocationConfig,
    /// The JWT verifier's leeway, in seconds: how long after `exp` a token is still
    /// accepted, so how long its revocation must be kept.
    leeway: u64,
    revoked: ArcSwap<Revoked>,
    cursor: Mutex<Cursor>,
    last_poll: Mutex<Option<Instant>>,
    http: reqwest::Client,
    failing: std::sync::atomic::AtomicBool,
}

impl Revocations {
    /// `leeway` is the JWT verifier's (`auth.jwt.leeway`).
    pub fn new(config: RevocationConfig, leeway: Duration) -> Self {
        Revocations {
            config,
            leeway: leeway.as_secs(),
            revoked: ArcSwap::from_pointee(Revoked::default()),
            cursor: Mutex::new(Cursor::Start),
            last_poll: Mutex::new(None),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
            failing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn is_revoked(&self, jti: &str) -> bool {
        self.revoked.load().contains_key(jti)
    }

    /// Whether a token expiring at `exp` may still be accepted at `now`, so its
    /// revocation must be kept.
    fn in_force(&self, exp: u64, now: u64) -> bool {
        exp.saturating_add(self.leeway) > now
    }

    /// Records one revocation pushed to us (Redis pub/sub in cluster mode); returns
    /// false when it was already known or the token can no longer be accepted anyway.
    pub fn revoke(&self, jti: &str, exp: u64) -> bool {
        if !self.in_force(exp, now_secs()) || self.is_revoked(jti) {
            return false;
        }
        self.revoked.rcu(|cur| {
            let mut next = HashMap::clone(cur);
            next.insert(jti.to_owned(), exp);
            next
        });
        true
    }

    /// Takes over what `previous` knew: the authenticator this one replaces when
    /// the `auth:` section is reloaded. Without it the new set starts empty and
    /// revoked tokens pass until its first poll. The cursor is kept only for the same
    /// feed: another feed's seqs mean nothing here.
    pub fn carry_over(&self, previous: &Revocations) {
        let known = previous.revoked.load_full();
        self.revoked.rcu(|cur| {
            let mut next = HashMap::clone(cur);
            for (jti, exp) in known.iter() {
                next.entry(jti.clone()).or_insert(*exp);
            }
            next
        });
        if previous.config.url == self.config.url {
            if let (Ok(prev), Ok(mut mine)) = (previous.cursor.lock(), self.cursor.lock()) {
                if *mine == Cursor::Start {
                    *mine = *prev;
                }
            }
        }
    }

    pub fn poll_due(&self) -> bool {
        match self.last_poll.lock().ok().and_then(|t| *t) {
            None => true,
            Some(t) => t.elapsed() >= self.config.interval,
        }
    }

    /// One poll (one or more pages); returns the newly revoked ids. On an error the
    /// pages already read stay applied and the next poll resumes after them.
    pub async fn poll(&self) -> Result<Vec<String>, String> {
        if let Ok(mut t) = self.last_poll.lock() {
            *t = Some(Instant::now());
        }
        let mut fresh = Vec::new();
        for _ in 0..MAX_PAGES_PER_POLL {
            let cursor = self.cursor.lock().map(|c| *c).unwrap_or(Cursor::Start);
            let feed = self.fetch(cursor).await?;
            fresh.extend(self.apply(feed.revocations, now_secs()));
            let next = match (feed.cursor, feed.server_time) {
                (Some(seq), _) => Cursor::Seq(seq),
                (None, Some(t)) => Cursor::Time(t),
                (None, None) => cursor,
            };
            if let Ok(mut c) = self.cursor.lock() {
                *c = next;
            }
            if !feed.more || feed.cursor.is_none() {
                break;
            }
        }
        Ok(fresh)
    }

    async fn fetch(&self, cursor: Cursor) -> Result<Feed, String> {
        let mut req = self.http.get(&self.config.url);
        req = match cursor {
            Cursor::Start => req.query(&[("after_seq", 0)]),
            Cursor::Seq(n) => req.query(&[("after_seq", n)]),
            // A feed without seqs is inclusive: ask from one second before its last
            // time. `after_seq=0` too, so a feed upgraded meanwhile answers with the
            // whole list and a cursor, and the poller switches to seqs.
            Cursor::Time(t) => req.query(&[("after_seq", 0), ("since", t.saturating_sub(1))]),
        };
        if let Some(t) = &self.config.token {
            req = req.bearer_auth(t);
        }
        let result = async {
            let resp = req.send().await.map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("revocation feed: HTTP {}", resp.status()));
            }
            resp.json::<Feed>().await.map_err(|e| e.to_string())
        }
        .await;
        match result {
            Ok(f) => {
                if self
                    .failing
                    .swap(false, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::info!("revocation feed reachable again");
                }
                Ok(f)
            }
            Err(e) => {
                // Log once per outage; the known revocations keep being enforced.
                if !self
                    .failing
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!(error = %e, url = %self.config.url, "revocation feed unreachable");
                }
                Err(e)
            }
        }
    }

    /// Adds the entries still in force at `now`, drops those no longer in force;
    /// returns the ids that were new.
    fn apply(&self, entries: Vec<Entry>, now: u64) -> Vec<String> {
        let current = self.revoked.load();
        let fresh: Vec<Entry> = entries
            .into_iter()
            .filter(|e| self.in_force(e.exp, now) && !current.contains_key(&e.jti))
            .collect();
        let stale = current.values().any(|exp| !self.in_force(*exp, now));
        if !fresh.is_empty() || stale {
            let mut next: Revoked = current
                .iter()
                .filter(|(_, exp)| self.in_force(**exp, now))
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            for e in &fresh {
                next.insert(e.jti.clone(), e.exp);
            }
            self.revoked.store(Arc::new(next));
        }
        fresh.into_iter().map(|e| e.jti).collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LEEWAY: Duration = Duration::from_secs(30);

    fn revocations(url: String) -> Revocations {
        Revocations::new(
            RevocationConfig {
                url,
                token: Some("svc".into()),
                interval: Duration::from_millis(500),
            },
            LEEWAY,
        )
    }

    fn entry(jti: &str, exp: u64) -> Entry {
        Entry {
            jti: jti.into(),
            exp,
        }
    }

    #[test]
    fn an_entry_is_kept_until_exp_plus_leeway() {
        let r = revocations("http://127.0.0.1:1/revocations".into());
        let exp = 1_000_000;
        let leeway = LEEWAY.as_secs();
        // Learned after `exp`, within the leeway: the token is still accepted by the
        // verifier, so the revocation is taken.
        assert_eq!(r.apply(vec![entry("a", exp)], exp + 5), ["a"]);
        // Kept through the leeway, dropped once the verifier refuses the token itself.
        r.apply(vec![], exp + leeway - 1);
        assert!(r.is_revoked("a"));
        r.apply(vec![], exp + leeway);
        assert!(!r.is_revoked("a"));
        // Learned only then: nothing to keep.
        assert_eq!(
            r.apply(vec![entry("late", exp)], exp + leeway),
            Vec::<String>::new()
        );
        assert!(!r.is_revoked("late"));

        // Pushed over Redis: same rule, against the clock.
        let now = now_secs();
        assert!(r.revoke("pushed", now - 10));
        assert!(r.is_revoked("pushed"));
        assert!(!r.revoke("pushed", now - 10), "already known");
        assert!(!r.revoke("gone", now - leeway - 1));
        assert!(!r.is_revoked("gone"));
    }

    #[test]
    fn a_reloaded_authenticator_keeps_the_known_revocations() {
        let url = "http://127.0.0.1:1/revocations".to_owned();
        let old = revocations(url.clone());
        let now = now_secs();
        old.apply(vec![entry("a", now + 60)], now);
        *old.cursor.lock().unwrap() = Cursor::Seq(9);
        let same_feed = revocations(url);
        same_feed.carry_over(&old);
        assert!(same_feed.is_revoked("a"));
        assert_eq!(*same_feed.cursor.lock().unwrap(), Cursor::Seq(9));
        let other_feed = revocations("http://127.0.0.1:2/revocations".into());
        other_feed.carry_over(&old);
        assert!(other_feed.is_revoked("a"));
        assert_eq!(*other_feed.cursor.lock().unwrap(), Cursor::Start);
    }

    /// A fake galion-auth feed: rows `(seq, jti, exp)`, answered by `after_seq` in
    /// pages of `page`, or without seqs (`legacy`), or 503 while `down`.
    #[derive(Default)]
    struct FakeState {
        rows: Vec<(u64, String, u64)>,
        page: usize,
        down: bool,
        legacy: bool,
        queries: Vec<String>,
    }

    async fn fake_feed(state: Arc<Mutex<FakeState>>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0u8; 8192];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let target = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
                let (status, body) = {
                    let mut st = state.lock().unwrap();
                    st.queries.push(query.to_owned());
                    let param = |name: &str| {
                        query
                            .split('&')
                            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                            .and_then(|v| v.parse::<u64>().ok())
                    };
                    if st.down {
                        (503, json!({"error": "down"}))
                    } else if !head.contains("authorization: Bearer svc") {
                        (401, json!({}))
                    } else if st.legacy {
                        let list: Vec<_> = st
                            .rows
                            .iter()
                            .map(|(_, j, e)| json!({"jti": j, "exp": e}))
                            .collect();
                        (200, json!({"revocations": list, "server_time": 1_000}))
                    } else {
                        let after = param("after_seq").unwrap_or(0);
                        let page: Vec<_> = st
                            .rows
                            .iter()
                            .filter(|(seq, _, _)| *seq > after)
                            .take(st.page)
                            .collect();
                        let cursor = page.last().map_or(after, |(seq, _, _)| *seq);
                        let more = page.len() == st.page;
                        let list: Vec<_> = page
                            .iter()
                            .map(|(seq, j, e)| json!({"jti": j, "exp": e, "seq": seq}))
                            .collect();
                        (
                            200,
                            json!({"revocations": list, "cursor": cursor, "more": more, "server_time": 1_000}),
                        )
                    }
                };
                let body = body.to_string();
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        format!("http://{addr}/revocations")
    }

    #[tokio::test]
    async fn a_poller_that_missed_a_window_catches_up_from_its_seq() {
        let state = Arc::new(Mutex::new(FakeState {
            page: 2,
            ..FakeState::default()
        }));
        let r = revocations(fake_feed(state.clone()).await);
        let exp = now_secs() + 900;
        let add = |seq: u64, jti: &str| state.lock().unwrap().rows.push((seq, jti.into(), exp));
        add(1, "a");
        add(2, "b");
        add(4, "c");
        // Three rows, pages of two: one poll follows `more` to the end.
        assert_eq!(r.poll().await.unwrap(), ["a", "b", "c"]);
        assert_eq!(*r.cursor.lock().unwrap(), Cursor::Seq(4));
        assert_eq!(
            state.lock().unwrap().queries,
            ["after_seq=0", "after_seq=2"]
        );

        // Auth unreachable for a few polls while revocations go on: the next poll
        // that gets through resumes after seq 4, however long the outage was.
        state.lock().unwrap().down = true;
        assert!(r.poll().await.is_err());
        assert!(r.poll().await.is_err());
        add(5, "d");
        add(6, "e");
        add(7, "f");
        state.lock().unwrap().down = false;
        state.lock().unwrap().queries.clear();
        assert_eq!(r.poll().await.unwrap(), ["d", "e", "f"]);
        assert_eq!(
            state.lock().unwrap().queries,
            ["after_seq=4", "after_seq=6"]
        );
        for jti in ["a", "b", "c", "d", "e", "f"] {
            assert!(r.is_revoked(jti), "{jti}");
        }
        // Nothing new: one request, nothing returned, the cursor stays.
        assert_eq!(r.poll().await.unwrap(), Vec::<String>::new());
        assert_eq!(*r.cursor.lock().unwrap(), Cursor::Seq(7));
    }

    #[tokio::test]
    async fn a_feed_without_seqs_is_read_by_time() {
        let state = Arc::new(Mutex::new(FakeState {
            page: 2,
            legacy: true,
            ..FakeState::default()
        }));
        let r = revocations(fake_feed(state.clone()).await);
        state
            .lock()
            .unwrap()
            .rows
            .push((0, "old".into(), now_secs() + 900));
        assert_eq!(r.poll().await.unwrap(), ["old"]);
        assert_eq!(*r.cursor.lock().unwrap(), Cursor::Time(1_000));
        assert_eq!(r.poll().await.unwrap(), Vec::<String>::new());
        assert_eq!(
            state.lock().unwrap().queries,
            ["after_seq=0", "after_seq=0&since=999"]
        );
        // The feed is upgraded: the poller switches to seqs.
        state.lock().unwrap().legacy = false;
        state.lock().unwrap().rows[0].0 = 3;
        r.poll().await.unwrap();
        assert_eq!(*r.cursor.lock().unwrap(), Cursor::Seq(3));
        assert!(r.is_revoked("old"));
    }
}
