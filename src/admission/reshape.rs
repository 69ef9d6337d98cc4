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
//! The move runs shard by shard, in batches of at most `BATCH` entries, each under the
//! lock of its old shard and, after it, of the new shards it fills (the new table's own
//! operations never lock an old shard). An admission or close waits at most one batch:
//! 0.03-0.5 ms of work with a million sources, where the move used to hold every shard for
//! 0.1-0.35 s (longer only if the thread running the move is preempted while it holds a
//! shard). Meanwhile the old table keeps serving, by one rule checked under the old
//! shard's lock: a key still in its old shard is handled there, in the old shape; a key
//! absent from a shard the move has started on is handled in the new table (rekeyed;
//! tickets of admits sent there belong to the new table); a shard not started yet handles
//! everything itself, and its entries move later. A started shard takes no new key, and a
//! batch puts its entries in the new table before it lets the old shard go, so an entry is
//! never between the tables while a worker could look for it, and a ticket released on the
//! old table finds its count wherever it is. A first pass takes the open sources of every
//! shard, a second the rest, shard by shard, oldest idle first: open sources land before
//! any idle one can crowd them out. The old table then forwards everything, so admits and
//! releases that still reach it (a worker on the previous snapshot, a connection admitted
//! before) land in the new table.
//!
//! A rate put in force during a move reaches both tables (every table of the lineage, see
//! [`SourceTable::set_rate`]) and excludes batches meanwhile, so no batch carries a TAT
//! between shards whose rates differ. Reshapes of one lineage run one at a time. The new
//! table should reach workers once `reshape` returns: used earlier, it does not see the
//! entries not moved yet, so a group could start there afresh and later merge with its
//! moved entry (counts stay exact, as for a coarser prefix).

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::shard::{Entry, Key};
use super::sources::{Shape, SourceTable, guard, lock, mask};

/// Entries one batch takes out of an old shard: small enough that a worker waiting on the
/// shard waits well under a millisecond, large enough that locking per batch is noise.
pub(super) const BATCH: usize = 256;
/// Slab positions the first pass examines per batch (it only reads a counter in each).
const SCAN: usize = 4096;

/// What a reshape carried over and what it could not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Carried {
    /// Entries moved (before merging).
    pub kept: usize,
    /// Groups of a family whose prefix got finer: they start afresh.
    pub split: usize,
    /// Limited sources that did not fit a smaller table: forgotten.
    pub no_room: usize,
    /// How long the whole move took.
    pub took: Duration,
    /// The longest a shard of the old table was locked at once (one batch): what an
    /// admission or a close could have waited for the move.
    pub longest_hold: Duration,
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
    /// Moves this table's state into a new table of `shape` and returns it, batch by batch
    /// (see the module docs); from now on this table forwards every operation there. The
    /// new table keeps this one's clock and rate; the caller puts a new rate in force
    /// afterwards if it changed. Sources recovered by `now` stay behind.
    pub fn reshape(self: &Arc<Self>, shape: Shape, now: Instant) -> (Arc<SourceTable>, Carried) {
        let lineage = self.lineage.clone();
        let _one_at_a_time = guard(&lineage.reshaping);
        let started = Instant::now();
        // Moved by an earlier reload (all finished: they held the lock): move from where the
        // state is now.
        let mut m = Move::start(&self.current(), shape, now);
        while m.step() {}
        m.carried.took = started.elapsed();
        (m.to, m.carried)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Entries with open connections, from every shard.
    Open,
    /// The rest, shard by shard.
    Rest,
}

/// A move in progress, one batch per [`Move::step`] (tests step it by hand).
pub(super) struct Move {
    from: Arc<SourceTable>,
    pub(super) to: Arc<SourceTable>,
    now: u64,
    pass: Pass,
    /// Shards not done with the current pass, in turn: consecutive batches lock different
    /// shards, so a worker waiting on one gets it before the move comes back.
    pending: std::collections::VecDeque<usize>,
    /// Per old shard: how far the first pass has examined its slab.
    cursor: Vec<usize>,
    taken: Vec<Entry>,
    /// Slab positions the first pass examines and entries a batch takes (`SCAN`, `BATCH`;
    /// tests make them tiny so that batches end halfway through shards).
    pub(super) per_batch: (usize, usize),
    pub(super) carried: Carried,
}

impl Move {
    /// Creates the new table and points `from` to it; no shard has started yet.
    pub(super) fn start(from: &Arc<SourceTable>, shape: Shape, now: Instant) -> Move {
        let mut members = guard(&from.lineage.members);
        members.retain(|t| t.strong_count() > 0);
        if !members
            .iter()
            .any(|t| std::ptr::eq(t.as_ptr(), Arc::as_ptr(from)))
        {
            members.push(Arc::downgrade(from));
        }
        // All shards have the same rates while `members` is held (see `set_rate`).
        let rates = lock(&from.shards[0]).rates();
        let to = Arc::new(SourceTable::with_epoch(
            shape,
            from.epoch,
            rates,
            from.lineage.clone(),
        ));
        members.push(Arc::downgrade(&to));
        // Storage for what will move, set aside before anyone can reach the new table: a
        // shard growing while the move holds an old shard's lock would make workers wait
        // for a copy and a rehash (up to milliseconds for a large shard). The hash spreads
        // keys within a few percent of the mean; a shard that gets more grows as usual,
        // and one that gets fewer (merged groups) gives the rest back at the end.
        let expected = from.tracked() / to.shards.len();
        for shard in to.shards.iter() {
            lock(shard).reserve(expected + expected / 16 + 64, &to.hasher);
        }
        let _ = from.moved.set(to.clone());
        let shards = from.shards.len();
        Move {
            from: from.clone(),
            to,
            now: from.nanos(now),
            pass: Pass::Open,
            pending: (0..shards).collect(),
            cursor: vec![0; shards],
            taken: Vec::with_capacity(BATCH),
            per_batch: (SCAN, BATCH),
            carried: Carried::default(),
        }
    }

    /// Moves one batch; false once everything has moved.
    pub(super) fn step(&mut self) -> bool {
        let Some(i) = self.pending.pop_front() else {
            return false;
        };
        if !self.batch(i) {
            self.pending.push_back(i);
        } else if self.pending.is_empty() {
            match self.pass {
                Pass::Open => {
                    self.pass = Pass::Rest;
                    self.pending = (0..self.from.shards.len()).collect();
                }
                Pass::Rest => {
                    for shard in self.to.shards.iter() {
                        lock(shard).trim(&self.to.hasher);
                    }
                }
            }
        }
        !self.pending.is_empty()
    }

    /// One batch from old shard `i`, under its lock; true when the shard is done with the
    /// current pass.
    fn batch(&mut self, i: usize) -> bool {
        let from = self.from.clone();
        let _rates = guard(&from.lineage.members);
        let mut shard = lock(&from.shards[i]);
        let held = Instant::now();
        shard.moving = true;
        self.taken.clear();
        let done = match self.pass {
            Pass::Open => shard.take_open(
                &mut self.cursor[i],
                self.per_batch,
                &mut self.taken,
                &from.hasher,
            ),
            Pass::Rest => {
                shard.take_rest(self.now, self.per_batch.1, &mut self.taken, &from.hasher)
            }
        };
        self.carry();
        drop(shard);
        self.carried.longest_hold = self.carried.longest_hold.max(held.elapsed());
        done
    }

    /// Merges the batch just taken into the new table (the old shard still locked), each
    /// new shard locked once, the batch's order kept within it.
    fn carry(&mut self) {
        let (old, to) = (self.from.shape, &self.to);
        let mut dest: Vec<(usize, u64, Entry)> = Vec::with_capacity(self.taken.len());
        for entry in &self.taken {
            let Some(key) = rekey(entry.key, old, to.shape) else {
                self.carried.split += 1;
                continue;
            };
            let hash = to.hasher.hash_one(key);
            let mut entry = *entry;
            entry.key = key;
            dest.push((to.shard_index(hash), hash, entry));
        }
        dest.sort_by_key(|d| d.0);
        for run in dest.chunk_by(|a, b| a.0 == b.0) {
            let mut shard = lock(&to.shards[run[0].0]);
            for (_, hash, entry) in run {
                if shard.merge(*hash, entry, &to.hasher) {
                    self.carried.kept += 1;
                } else {
                    self.carried.no_room += 1;
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "reshape_tests.rs"]
mod tests;
