//! [`ShardedMap`]: the concurrent hash map behind the gateway's shared tables
//! (open connections per IP, the verified-token cache, the ban table, the
//! response cache's objects, the local rate limiter's state).
//!
//! Why sharded: these tables are read or written by every worker on the request
//! path. One map behind one lock would queue every request on it; here the keys
//! are spread over a fixed number of shards, each a `HashMap` behind its own
//! `RwLock`, picked from the key's hash. Two workers meet on a lock only when
//! their keys fall in the same shard. No single-key operation takes a global
//! lock; the whole-map ones (`len`, `retain`, `for_each`) take the shard locks
//! one after another, never all at once. A lookup allocates nothing: one hash to
//! pick the shard, one read lock, the map's own probe, a clone of the value
//! (values are `Arc`s or small `Copy` state).
//!
//! Why bounded: tables keyed by what clients send (tokens, rate-limit keys) must
//! not grow with a flood of distinct keys. Given a capacity, each shard holds at
//! most `max(capacity / shards, 1)` entries, and a new key going into a full
//! shard first makes room: entries the caller's rank calls expired go first, then
//! the lowest ranked eighth of the shard (see [`ShardedMap::insert_ranked`]).
//! Freeing an eighth at once keeps the cost of an eviction (one pass over the
//! shard) off all but one insert in `capacity / shards / 8`.

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// For keys that are already uniformly distributed hashes (the rate limiter's
/// 64-bit key hashes, the cache's 128-bit object hashes): hashing them again is
/// waste. The hash is the key's last eight bytes.
#[derive(Default, Clone)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// One shard on its own cache lines (128 bytes: the pair of lines adjacent-line
/// prefetchers fetch together), so that workers writing neighbouring shards do
/// not invalidate each other's lines.
#[repr(align(128))]
struct Shard<T>(RwLock<T>);

/// A hash map split into a power-of-two number of independently locked shards,
/// optionally bounded (see the module documentation).
///
/// A poisoned shard lock (a panic while it was held) is recovered, not
/// propagated: each entry is written whole, so the map stays usable.
///
/// Closures passed to the methods run under a shard lock: they must not call
/// back into the same map.
pub struct ShardedMap<K, V, S = RandomState> {
    shards: Box<[Shard<HashMap<K, V, S>>]>,
    /// `shards.len() - 1`.
    mask: usize,
    /// Most entries one shard holds; `None`: unbounded.
    per_shard: Option<usize>,
    hasher: S,
}

/// The most shards a map is given: more would only waste memory.
const MAX_SHARDS: usize = 1 << 16;

impl<K, V, S> ShardedMap<K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher + Default,
{
    /// A map of `shards` shards (rounded up to a power of two, at least 1, at
    /// most 65536), holding at most `capacity` entries if given: each shard
    /// holds `max(capacity / shards, 1)`, so the map never holds more than
    /// `shards * max(capacity / shards, 1)` entries (`capacity` itself when
    /// `capacity >= shards`).
    pub fn new(shards: usize, capacity: Option<usize>) -> Self {
        let n = shards.clamp(1, MAX_SHARDS).next_power_of_two();
        ShardedMap {
            shards: (0..n)
                .map(|_| Shard(RwLock::new(HashMap::with_hasher(S::default()))))
                .collect(),
            mask: n - 1,
            per_shard: capacity.map(|c| (c / n).max(1)),
            hasher: S::default(),
        }
    }

    /// The shard of `key`. Taken from hash bits 32 and up: the shard's own map
    /// (hashbrown) uses the low bits for the bucket and the top seven as tags, so
    /// these bits, constant within a shard, cost it nothing — even with a hasher
    /// that is the same for the shards as for the maps (as with an identity
    /// hasher over keys that are hashes already).
    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &RwLock<HashMap<K, V, S>> {
        let h = self.hasher.hash_one(key);
        &self.shards[((h >> 32) as usize) & self.mask].0
    }

    /// A clone of the value of `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        read(self.shard(key)).get(key).cloned()
    }

    /// Removes `key`; returns its value.
    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        write(self.shard(key)).remove(key)
    }

    /// Inserts or replaces the value of `key`; returns the replaced one. A new key
    /// in a full shard of a bounded map makes room first, taking no entry for
    /// expired: arbitrary entries go (see [`insert_ranked`](Self::insert_ranked)).
    pub fn insert(&self, key: K, value: V) -> Option<V> {
        self.insert_ranked(key, value, |_, _| Some(0))
    }

    /// [`insert`](Self::insert), with the order in which a full shard makes room
    /// for a new key: `rank(k, v)` is `None` for an entry that may go first
    /// (expired), else its rank.
    ///
    /// Eviction, only when a key not in the map goes into a shard holding its
    /// bound `b` already: (1) every entry ranked `None` is dropped; (2) if the
    /// shard still holds `b`, the `b / 8 + 1` lowest ranked entries are dropped
    /// (among equal ranks, arbitrary ones). `rank` must give the same answer for
    /// an entry throughout one call (compute "now" once, outside it). Replacing
    /// the value of a key already present never evicts.
    pub fn insert_ranked(
        &self,
        key: K,
        value: V,
        rank: impl FnMut(&K, &V) -> Option<u64>,
    ) -> Option<V> {
        let mut m = write(self.shard(&key));
        if let Some(bound) = self.per_shard {
            if m.len() >= bound && !m.contains_key(&key) {
                make_room(&mut m, bound, rank);
            }
        }
        m.insert(key, value)
    }

    /// Read-modify-write of `key` under its shard's lock: `f` sees the current
    /// value (`None`: absent) and may change it, set it (`Some`) or remove it
    /// (`None`); its result is returned. Setting a new key of a bounded map makes
    /// room as [`insert`](Self::insert) does. If `f` panics the entry is gone.
    pub fn update<R>(&self, key: K, f: impl FnOnce(&mut Option<V>) -> R) -> R {
        self.update_ranked(key, |_, _| Some(0), f)
    }

    /// [`update`](Self::update), making room for a new key in the order `rank`
    /// gives (as [`insert_ranked`](Self::insert_ranked) does).
    pub fn update_ranked<R>(
        &self,
        key: K,
        rank: impl FnMut(&K, &V) -> Option<u64>,
        f: impl FnOnce(&mut Option<V>) -> R,
    ) -> R {
        let mut m = write(self.shard(&key));
        let mut slot = m.remove(&key);
        let was_present = slot.is_some();
        let out = f(&mut slot);
        if let Some(v) = slot {
            if let Some(bound) = self.per_shard {
                if !was_present && m.len() >= bound {
                    make_room(&mut m, bound, rank);
                }
            }
            m.insert(key, v);
        }
        out
    }
}

impl<K, V, S> ShardedMap<K, V, S> {
    /// Keeps the entries for which `keep` is true, shard after shard (each under
    /// its write lock in turn).
    pub fn retain(&self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        for s in self.shards.iter() {
            write(&s.0).retain(&mut keep);
        }
    }

    /// Calls `f` on every entry, shard after shard (each under its read lock in
    /// turn: not one snapshot of the whole map).
    pub fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        for s in self.shards.iter() {
            for (k, v) in read(&s.0).iter() {
                f(k, v);
            }
        }
    }

    /// Entries held (summed shard after shard).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| read(&s.0).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| read(&s.0).is_empty())
    }
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// Brings a full shard (`m.len() >= bound`) below `bound`: see
/// [`ShardedMap::insert_ranked`].
fn make_room<K, V, S>(
    m: &mut HashMap<K, V, S>,
    bound: usize,
    mut rank: impl FnMut(&K, &V) -> Option<u64>,
) where
    K: Hash + Eq,
    S: BuildHasher,
{
    m.retain(|k, v| rank(k, v).is_some());
    if m.len() < bound {
        return;
    }
    let n = (bound / 8 + 1).min(m.len());
    // The n-th lowest rank: every entry below it goes, and as many of those equal
    // to it as make n.
    let mut ranks: Vec<u64> = m.iter().map(|(k, v)| rank(k, v).unwrap_or(0)).collect();
    let (_, &mut nth, _) = ranks.select_nth_unstable(n - 1);
    let mut ties = n - ranks.iter().filter(|&&r| r < nth).count();
    m.retain(|k, v| match rank(k, v) {
        Some(r) if r > nth => true,
        Some(r) if r == nth && ties == 0 => true,
        Some(r) if r == nth => {
            ties -= 1;
            false
        }
        _ => false,
    });
    // Only a rank that changed its mind during the call leaves the shard full:
    // the bound holds regardless.
    let mut excess = (m.len() + 1).saturating_sub(bound);
    if excess > 0 {
        m.retain(|_, _| {
            if excess == 0 {
                return true;
            }
            excess -= 1;
            false
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    #[test]
    fn insert_get_remove() {
        let m: ShardedMap<String, u32> = ShardedMap::new(4, None);
        assert!(m.is_empty());
        assert_eq!(m.insert("a".into(), 1), None);
        assert_eq!(m.insert("b".into(), 2), None);
        assert_eq!(m.insert("a".into(), 3), Some(1));
        // Borrowed lookups: a `String` key found by `&str`.
        assert_eq!(m.get("a"), Some(3));
        assert_eq!(m.get("c"), None);
        assert_eq!(m.len(), 2);
        assert_eq!(m.remove("a"), Some(3));
        assert_eq!(m.remove("a"), None);
        assert_eq!(m.get("a"), None);
        assert_eq!(m.len(), 1);
        assert!(!m.is_empty());
    }

    #[test]
    fn shard_count_is_a_power_of_two() {
        for (asked, got) in [
            (0, 1),
            (1, 1),
            (3, 4),
            (16, 16),
            (17, 32),
            (usize::MAX, 1 << 16),
        ] {
            let m: ShardedMap<u64, u64> = ShardedMap::new(asked, Some(1000));
            assert_eq!(m.shards.len(), got, "{asked}");
            assert_eq!(m.mask, got - 1);
        }
        let m: ShardedMap<u64, u64> = ShardedMap::new(16, Some(1000));
        assert_eq!(m.per_shard, Some(62));
        let m: ShardedMap<u64, u64> = ShardedMap::new(16, Some(3));
        assert_eq!(m.per_shard, Some(1));
    }

    #[test]
    fn update_reads_modifies_and_removes() {
        let m: ShardedMap<u32, u32> = ShardedMap::new(8, None);
        let inc = |m: &ShardedMap<u32, u32>, k| {
            m.update(k, |slot| {
                let n = slot.unwrap_or(0) + 1;
                *slot = Some(n);
                n
            })
        };
        assert_eq!(inc(&m, 7), 1);
        assert_eq!(inc(&m, 7), 2);
        assert_eq!(m.get(&7), Some(2));
        // Leaving an absent key absent inserts nothing.
        assert!(!m.update(8, |slot| slot.is_some()));
        assert_eq!(m.get(&8), None);
        // Setting `None` removes.
        m.update(7, |slot| *slot = None);
        assert_eq!(m.get(&7), None);
        assert!(m.is_empty());
    }

    #[test]
    fn bound_holds_under_many_inserts() {
        let m: ShardedMap<u64, u64> = ShardedMap::new(16, Some(256));
        for k in 0..100_000u64 {
            m.insert(k, k);
            // The key just inserted is never the one evicted for it.
            assert_eq!(m.get(&k), Some(k));
        }
        assert!(m.len() <= 256, "{}", m.len());
        for s in m.shards.iter() {
            assert!(read(&s.0).len() <= 16);
        }
        for k in 0..100_000u64 {
            m.update(k + 1_000_000, |slot| *slot = Some(k));
        }
        assert!(m.len() <= 256, "{}", m.len());
        // A bound under the shard count still holds one entry per shard.
        let tiny: ShardedMap<u64, u64> = ShardedMap::new(16, Some(0));
        for k in 0..1000u64 {
            tiny.insert(k, k);
        }
        assert!(tiny.len() <= 16);
    }

    #[test]
    fn replacing_a_key_of_a_full_shard_evicts_nothing() {
        // One shard of 8: an eviction would drop 2 entries.
        let m: ShardedMap<u64, u64> = ShardedMap::new(1, Some(8));
        for k in 0..8 {
            m.insert(k, k);
        }
        m.insert(3, 30);
        m.update(4, |v| *v = Some(40));
        assert_eq!(m.len(), 8);
        m.insert(100, 0);
        assert_eq!(m.len(), 7, "2 dropped (8 / 8 + 1), 1 added");
    }

    #[test]
    fn eviction_drops_expired_first_then_the_lowest_ranked() {
        // One shard of 16; values are (expires at, rank).
        let m: ShardedMap<u64, (u64, u64)> = ShardedMap::new(1, Some(16));
        let now = 100;
        let rank = |_: &u64, v: &(u64, u64)| (v.0 > now).then_some(v.1);
        for k in 0..16 {
            // Keys 0, 5 and 10 have expired; the others rank by key, reversed.
            let exp = if [0, 5, 10].contains(&k) {
                now
            } else {
                now + 1
            };
            m.insert(k, (exp, 100 - k));
        }
        m.insert_ranked(16, (now + 1, 0), rank);
        // Only the expired went: the shard had room again.
        assert_eq!(m.len(), 14);
        for k in [0, 5, 10] {
            assert_eq!(m.get(&k), None);
        }
        m.insert_ranked(17, (now + 1, 0), rank);
        m.insert_ranked(18, (now + 1, 0), rank);
        assert_eq!(m.len(), 16);
        // Full, nothing expired: the 16 / 8 + 1 = 3 lowest ranked go, keys 16, 17
        // and 18 (rank 0); the next lowest, key 15 (rank 85), stays.
        m.update_ranked(19, rank, |v| *v = Some((now + 1, 50)));
        assert_eq!(m.len(), 14);
        assert_eq!(m.get(&15), Some((now + 1, 85)));
        let zeros = [16, 17, 18].iter().filter(|k| m.get(k).is_some()).count();
        assert_eq!(zeros, 0, "ranks 0, 0, 0 are the three lowest");
        assert_eq!(m.get(&19), Some((now + 1, 50)));
        for k in [1, 2, 3, 4, 6, 7, 8, 9, 11, 12, 13, 14, 15] {
            assert!(m.get(&k).is_some(), "{k}");
        }
    }

    #[test]
    fn equal_ranks_drop_exactly_an_eighth() {
        let m: ShardedMap<u64, u64> = ShardedMap::new(1, Some(64));
        for k in 0..64 {
            m.insert(k, 7);
        }
        m.insert_ranked(64, 7, |_, v| Some(*v));
        assert_eq!(m.len(), 64 - 9 + 1);
        assert_eq!(m.get(&64), Some(7));
    }

    #[test]
    fn a_rank_that_changes_its_mind_cannot_break_the_bound() {
        let m: ShardedMap<u64, u64> = ShardedMap::new(1, Some(16));
        for k in 0..16 {
            m.insert(k, k);
        }
        let mut calls = 0u64;
        m.insert_ranked(99, 0, |_, _| {
            calls += 1;
            Some(u64::MAX - calls)
        });
        assert!(m.len() <= 16, "{}", m.len());
        assert_eq!(m.get(&99), Some(0));
    }

    #[test]
    fn retain_and_for_each_cover_every_shard() {
        let m: ShardedMap<u64, Arc<u64>> = ShardedMap::new(8, None);
        for k in 0..1000 {
            m.insert(k, Arc::new(k));
        }
        let mut sum = 0;
        m.for_each(|k, v| {
            assert_eq!(*k, **v);
            sum += *k;
        });
        assert_eq!(sum, 999 * 1000 / 2);
        m.retain(|k, _| k % 3 == 0);
        assert_eq!(m.len(), 334);
        assert_eq!(m.get(&3).as_deref(), Some(&3));
        assert_eq!(m.get(&4), None);
    }

    #[test]
    fn a_poisoned_shard_is_recovered() {
        let m: Arc<ShardedMap<u64, u64>> = Arc::new(ShardedMap::new(1, None));
        m.insert(1, 1);
        let m2 = m.clone();
        let r = std::thread::spawn(move || m2.update(2, |_| -> u8 { panic!("poison") })).join();
        assert!(r.is_err());
        assert_eq!(m.get(&1), Some(1));
        m.insert(3, 3);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn concurrent_updates_from_several_threads() {
        let m: Arc<ShardedMap<u64, u64>> = Arc::new(ShardedMap::new(4, None));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for i in 0..19_200u64 {
                        m.update(i % 64, |v| *v = Some(v.unwrap_or(0) + 1));
                        let _ = m.get(&(i % 64));
                        if i % 1000 == 0 {
                            let _ = m.len();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut total = 0;
        m.for_each(|_, v| total += v);
        assert_eq!(total, 4 * 19_200);
        assert_eq!(m.len(), 64);
        for k in 0..64 {
            assert_eq!(m.get(&k), Some(4 * 19_200 / 64));
        }
    }

    #[test]
    fn concurrent_inserts_keep_the_bound() {
        let m: Arc<ShardedMap<u64, u64>> = Arc::new(ShardedMap::new(8, Some(512)));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for i in 0..50_000u64 {
                        let k = t * 1_000_000 + i;
                        m.insert(k, i);
                        if i % 3 == 1 {
                            m.remove(&(k - 1));
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(m.len() <= 512, "{}", m.len());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u32),
        Remove(u8),
        Get(u8),
        /// Adds to the value, or inserts it; removes it when the sum is even.
        Update(u8, u32),
        /// Keeps the values `% n != 0`.
        Retain(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..48, any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            1 => (0u8..48).prop_map(Op::Remove),
            2 => (0u8..48).prop_map(Op::Get),
            2 => (0u8..48, 0u32..1000).prop_map(|(k, v)| Op::Update(k, v)),
            1 => (2u32..6).prop_map(Op::Retain),
        ]
    }

    /// Applies `op` to both; returns what each answered, for the unbounded case.
    fn apply(
        m: &ShardedMap<u8, u32>,
        model: &mut HashMap<u8, u32>,
        op: &Op,
    ) -> (Option<u32>, Option<u32>) {
        match *op {
            Op::Insert(k, v) => (m.insert(k, v), model.insert(k, v)),
            Op::Remove(k) => (m.remove(&k), model.remove(&k)),
            Op::Get(k) => (m.get(&k), model.get(&k).copied()),
            Op::Update(k, d) => {
                let step = |slot: &mut Option<u32>| {
                    let before = *slot;
                    let n = slot.unwrap_or(0).wrapping_add(d);
                    *slot = (n % 2 == 1).then_some(n);
                    before
                };
                let got = m.update(k, step);
                let mut slot = model.remove(&k);
                let want = step(&mut slot);
                if let Some(v) = slot {
                    model.insert(k, v);
                }
                (got, want)
            }
            Op::Retain(n) => {
                m.retain(|_, v| *v % n != 0);
                model.retain(|_, v| *v % n != 0);
                (None, None)
            }
        }
    }

    proptest! {
        /// Unbounded, the map answers every operation as a `HashMap` does.
        #[test]
        fn unbounded_behaves_like_a_hash_map(
            shards in 1usize..9,
            ops in proptest::collection::vec(op(), 0..300),
        ) {
            let m: ShardedMap<u8, u32> = ShardedMap::new(shards, None);
            let mut model = HashMap::new();
            for op in &ops {
                let (got, want) = apply(&m, &mut model, op);
                prop_assert_eq!(got, want, "{:?}", op);
                prop_assert_eq!(m.len(), model.len());
            }
            let mut all = HashMap::new();
            m.for_each(|k, v| { all.insert(*k, *v); });
            prop_assert_eq!(all, model);
        }

        /// Bounded, the map never holds more than its bound, holds only values the
        /// model holds under the same key, and always holds a key just set.
        #[test]
        fn bounded_never_exceeds_its_bound(
            shards in 1usize..9,
            capacity in 0usize..40,
            ops in proptest::collection::vec(op(), 0..300),
        ) {
            let m: ShardedMap<u8, u32> = ShardedMap::new(shards, Some(capacity));
            let n = m.shards.len();
            let bound = n * (capacity / n).max(1);
            let mut model = HashMap::new();
            for op in &ops {
                if let Op::Update(k, _) = *op {
                    // An update starts from what the map holds: an evicted key
                    // starts afresh.
                    if m.get(&k).is_none() {
                        model.remove(&k);
                    }
                }
                apply(&m, &mut model, op);
                prop_assert!(m.len() <= bound, "{} > {}", m.len(), bound);
                let mut wrong = None;
                m.for_each(|k, v| {
                    if model.get(k) != Some(v) {
                        wrong = Some((*k, *v));
                    }
                });
                prop_assert_eq!(wrong, None);
                match *op {
                    Op::Insert(k, _) | Op::Update(k, _) => {
                        prop_assert_eq!(m.get(&k), model.get(&k).copied());
                    }
                    _ => {}
                }
            }
        }
    }
}
