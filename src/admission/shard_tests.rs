//! The shard's recency list and eviction, step by step.

use super::*;
use std::hash::RandomState;

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
