//! The shard's recency list and eviction, step by step, and the structural check the model
//! test (`model_tests.rs`) runs after every step.
#![cfg(test)]

use super::*;
use std::hash::RandomState;

/// What [`Shard::check_invariants`] found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(in crate::admission) struct Census {
    pub entries: usize,
    pub cap: usize,
    /// Entries with open connections.
    pub pinned: usize,
    /// See [`Shard::rates`].
    pub rates: (Option<Rate>, Option<Rate>),
}

impl Shard {
    /// Every entry, in slab order.
    pub(in crate::admission) fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Asserts the shard's structure: the recency list holds exactly the idle entries
    /// (`open == 0`), linked the same way in both directions and without a cycle; pinned
    /// entries are unlinked; the index has exactly one slot per entry, found under the
    /// entry's key, whose hash `here` accepts (it picks this shard); the basis is the rate
    /// in force, if there is one.
    pub(in crate::admission) fn check_invariants(
        &self,
        hasher: &impl BuildHasher,
        here: impl Fn(u64) -> bool,
    ) -> Census {
        let n = self.entries.len();
        let mut listed = vec![false; n];
        let (mut i, mut older) = (self.oldest, NIL);
        while i != NIL {
            assert!(at(i) < n, "recency link {i} out of the slab");
            assert!(!listed[at(i)], "cycle in the recency list at {i}");
            listed[at(i)] = true;
            let e = &self.entries[at(i)];
            assert_eq!(e.older, older, "older link of {i}");
            assert_eq!(
                e.open, 0,
                "entry {i} with open connections in the recency list"
            );
            (older, i) = (i, e.newer);
        }
        assert_eq!(self.newest, older, "newest end of the recency list");
        let mut pinned = 0;
        for (j, e) in self.entries.iter().enumerate() {
            if e.open > 0 {
                pinned += 1;
                assert_eq!((e.newer, e.older), (NIL, NIL), "pinned entry {j} linked");
            } else {
                assert!(listed[j], "idle entry {j} missing from the recency list");
            }
            let hash = hasher.hash_one(e.key);
            assert!(here(hash), "entry {j} in the wrong shard");
            assert_eq!(self.find(hash, &e.key), Some(j as u32), "index slot of {j}");
        }
        // Every entry found at its own slot, and no more slots than entries: a bijection.
        assert_eq!(self.index.len(), n, "index slots vs entries");
        assert!(
            self.rate.is_none() || self.basis == self.rate,
            "basis behind the rate"
        );
        Census {
            entries: n,
            cap: self.cap,
            pinned,
            rates: self.rates(),
        }
    }
}

#[test]
fn the_least_recently_seen_idle_source_is_forgotten_first() {
    let hasher = RandomState::new();
    let mut shard = Shard::new(3, None);
    let admit = |shard: &mut Shard, k: u64, now: u64| {
        let key = [0, k];
        shard.admit(hasher.hash_one(key), key, now, None, &hasher)
    };
    let release = |shard: &mut Shard, k: u64| {
        let key = [0, k];
        shard.release(hasher.hash_one(key), &key);
    };
    for k in 1..=3 {
        assert_eq!(admit(&mut shard, k, 0), Outcome::Admitted);
        release(&mut shard, k);
    }
    assert_eq!(shard.idle_keys(), [[0, 1], [0, 2], [0, 3]]);
    // Seeing 1 again makes 2 the oldest, and 4 takes its place.
    admit(&mut shard, 1, 0);
    release(&mut shard, 1);
    admit(&mut shard, 4, 0);
    release(&mut shard, 4);
    assert_eq!(shard.idle_keys(), [[0, 3], [0, 1], [0, 4]]);
    assert_eq!(shard.len(), 3);
    // Under a rate, a source that has not recovered is skipped; one that has goes.
    let rate = Rate::new(1, std::time::Duration::from_secs(1), 0);
    let mut shard = Shard::new(2, Some(rate));
    admit(&mut shard, 1, 0); // recovers at 1 s
    admit(&mut shard, 2, 500_000_000); // recovers at 1.5 s
    release(&mut shard, 1);
    release(&mut shard, 2);
    assert_eq!(admit(&mut shard, 3, 900_000_000), Outcome::Full);
    assert!(!shard.has_room(900_000_000));
    assert!(shard.has_room(1_000_000_000));
    assert_eq!(admit(&mut shard, 3, 1_200_000_000), Outcome::Admitted);
    assert_eq!(
        shard.idle_keys(),
        [[0, 2]],
        "1 was forgotten; 3 holds a connection"
    );
}
