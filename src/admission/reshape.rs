//! Carrying a listener's per-source state across a reload that changes its limits, so that
//! a reload never hands a limited source a fresh burst or forgets its open connections.
//!
//! - A new rate or burst keeps what each source owes, counted in connections, capped at
//!   what the new rate could have run up ([`SourceTable::change_rate`]): loosening a limit
//!   takes effect at once, tightening it leaves no source more than the new limit would.
//! - A new `max_tracked_sources` or prefix moves the state into a new table
//!   ([`SourceTable::reshape`]): sources with open connections first, then idle sources that
//!   have not recovered, oldest first; recovered idle ones are as good as unknown and stay
//!   behind. A coarser prefix merges groups (open connections add up, the later TAT wins).
//!   A finer one cannot split what a coarse group spent, so those groups start afresh;
//!   tickets of their open connections then release nothing, never too much.
//!
//! The move happens with every shard of the old table locked, and the old table then points
//! to the new one, so admits and releases that still reach it (a worker on the previous
//! snapshot, a connection admitted before) land in the new table.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Instant;

use super::gcra::Rate;
use super::shard::Key;
use super::sources::{Shape, SourceTable, lock, mask};

/// What a reshape carried over and what it could not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Carried {
    /// Entries moved (before merging).
    pub kept: usize,
    /// Groups of a family whose prefix got finer: they start afresh.
    pub split: usize,
    /// Limited sources that did not fit a smaller table: forgotten.
    pub no_room: usize,
}

/// IPv4 groups are stored as `::ffff:a.b.c.d` (see [`SourceTable::key`]).
fn is_v4(bits: u128) -> bool {
    bits >> 32 == 0xffff
}

/// The key of an old group under the new shape; `None` when its prefix got finer.
fn rekey(key: Key, old: Shape, new: Shape) -> Option<Key> {
    let bits = (u128::from(key[0]) << 64) | u128::from(key[1]);
    let bits = if is_v4(bits) {
        if new.ipv4_prefix > old.ipv4_prefix {
            return None;
        }
        (0xffff << 32) | mask(bits & 0xffff_ffff, 32, new.ipv4_prefix)
    } else {
        if new.ipv6_prefix > old.ipv6_prefix {
            return None;
        }
        mask(bits, 128, new.ipv6_prefix)
    };
    Some([(bits >> 64) as u64, bits as u64])
}

impl SourceTable {
    /// Moves this table's state into a new table of `shape` and returns it; from now on
    /// this table forwards every operation there. `rate` is the new rate (it decides which
    /// idle sources still owe something).
    pub fn reshape(
        self: &Arc<Self>,
        shape: Shape,
        now: Instant,
        rate: Option<&Rate>,
    ) -> (Arc<SourceTable>, Carried) {
        let next = Arc::new(SourceTable::with_epoch(shape, self.epoch));
        let t = self.nanos(now);
        // Every shard, in order (operations lock one shard at a time, so no deadlock).
        let mut guards: Vec<_> = self.shards.iter().map(lock).collect();
        if let Some(already) = self.moved.get() {
            // Moved by an earlier reload: reshape where the state is now.
            let already = already.clone();
            drop(guards);
            return already.reshape(shape, now, rate);
        }
        let mut carried = Carried::default();
        for shard in &mut guards {
            for mut entry in shard.take_state(t, rate) {
                let Some(key) = rekey(entry.key, self.shape, shape) else {
                    carried.split += 1;
                    continue;
                };
                entry.key = key;
                let hash = next.hasher.hash_one(key);
                if lock(next.shard_of(hash)).merge(hash, &entry, &next.hasher) {
                    carried.kept += 1;
                } else {
                    carried.no_room += 1;
                }
            }
        }
        // Set before the locks go: an operation waiting on a shard then sees it.
        let _ = self.moved.set(next.clone());
        drop(guards);
        (next, carried)
    }

    /// Re-expresses every source's debt for a new rate or burst at `now`: the connections
    /// it owes stay owed, up to what the new rate could have run up.
    pub fn change_rate(&self, now: Instant, old: &Rate, new: &Rate) {
        if let Some(next) = self.moved.get() {
            return next.change_rate(now, old, new);
        }
        let t = self.nanos(now);
        for shard in self.shards.iter() {
            lock(shard).carry_tats(t, old, new);
        }
    }
}

#[cfg(test)]
#[path = "reshape_tests.rs"]
mod tests;
