//! Carrying a listener's per-source state across a reload that changes its limits, so that
//! a reload never hands a limited source a fresh burst or forgets its open connections.
//!
//! - A new rate or burst keeps what each source owes, counted in connections, capped at
//!   what the new rate could have run up ([`SourceTable::set_rate`], [`Rate::carry`]):
//!   loosening a limit takes effect at once, tightening it leaves no source more than the
//!   new limit would. The rate lives in each shard, under its lock, so a worker still on
//!   the previous snapshot cannot write a TAT in the old rate's terms afterwards.
//! - A new `max_tracked_sources` or prefix moves the state into a new table
//!   ([`SourceTable::reshape`]): every source with open connections (always, even past a
//!   shard's share: forgetting it would forget its count), then idle sources that have not
//!   recovered, oldest first, while they fit; recovered idle ones are as good as unknown and
//!   stay behind. A coarser prefix merges groups (open connections add up, the later TAT
//!   wins). A finer one cannot split what a coarse group spent, so those groups start
//!   afresh, and tickets of their older connections release nothing there.
//!
//! The move runs with every shard of the old table locked (0.2-0.35 s for a million
//! sources, during which that listener's admissions and closes wait), and the old table
//! then points to the new one, so admits and releases that still reach it (a worker on the
//! previous snapshot, a connection admitted before) land in the new table.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Instant;

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
    /// How long every shard of the old table was locked.
    pub took: std::time::Duration,
}

/// IPv4 groups are stored as `::ffff:a.b.c.d` (see [`SourceTable::key`]).
fn is_v4(bits: u128) -> bool {
    bits >> 32 == 0xffff
}

/// The key of an old group under the new shape; `None` when its prefix got finer.
pub(super) fn rekey(key: Key, old: Shape, new: Shape) -> Option<Key> {
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
    /// this table forwards every operation there. The new table keeps this one's clock and
    /// rate; the caller puts a new rate in force afterwards if it changed.
    pub fn reshape(self: &Arc<Self>, shape: Shape, now: Instant) -> (Arc<SourceTable>, Carried) {
        let started = Instant::now();
        let t = self.nanos(now);
        // Every shard, in order (operations lock one shard at a time, so no deadlock).
        let mut guards: Vec<_> = self.shards.iter().map(lock).collect();
        if let Some(already) = self.moved.get() {
            // Moved by an earlier reload: reshape where the state is now.
            let already = already.clone();
            drop(guards);
            return already.reshape(shape, now);
        }
        let rates = guards.first().map(|g| g.rates()).unwrap_or_default();
        let next = Arc::new(SourceTable::with_epoch(shape, self.epoch, rates.0));
        let mut carried = Carried::default();
        // Open sources from every shard before any idle one, so that none of them can be
        // crowded out; then idle ones, oldest first, per shard.
        let mut open = Vec::new();
        let mut idle = Vec::new();
        for shard in &mut guards {
            for entry in shard.take_state(t) {
                if entry.open > 0 {
                    open.push(entry);
                } else {
                    idle.push(entry);
                }
            }
        }
        // Grouped by destination shard, each locked once.
        let mut by_shard: Vec<Vec<(u64, super::shard::Entry)>> =
            vec![Vec::new(); next.shards.len()];
        for mut entry in open.into_iter().chain(idle) {
            let Some(key) = rekey(entry.key, self.shape, shape) else {
                carried.split += 1;
                continue;
            };
            entry.key = key;
            let hash = next.hasher.hash_one(key);
            by_shard[next.shard_index(hash)].push((hash, entry));
        }
        for (i, entries) in by_shard.iter().enumerate() {
            let mut shard = lock(&next.shards[i]);
            shard.inherit(rates);
            for (hash, entry) in entries {
                if shard.merge(*hash, entry, &next.hasher) {
                    carried.kept += 1;
                } else {
                    carried.no_room += 1;
                }
            }
        }
        // Set before the locks go: an operation waiting on a shard then sees it.
        let _ = self.moved.set(next.clone());
        drop(guards);
        carried.took = started.elapsed();
        (next, carried)
    }
}

#[cfg(test)]
#[path = "reshape_tests.rs"]
mod tests;
