//! A shard's side of a reshape (`reshape.rs`): taking its entries out a bounded batch at a
//! time, and merging carried entries into a shard of the new table.
//!
//! Workers keep using an old shard between batches (an entry still in it is handled in it),
//! so every removal leaves the shard whole: index, slab and recency list agree after each
//! one. Nothing here decides where an entry goes or releases a lock; the caller holds this
//! shard's lock (and the new shard's, for `merge`) for the whole batch.

use std::hash::BuildHasher;

use hashbrown::HashTable;

use super::{Entry, Key, NIL, Shard, at};

impl Shard {
    /// Whether `key` is tracked here.
    pub fn holds(&self, hash: u64, key: &Key) -> bool {
        self.find(hash, key).is_some()
    }

    /// Removes the entry at slab position `i` (from the index, and from the recency list
    /// when idle); the last entry of the slab takes its position.
    fn remove_at(&mut self, i: u32, hasher: &impl BuildHasher) -> Entry {
        let e = self.entries[at(i)];
        if let Ok(slot) = self.index.find_entry(hasher.hash_one(e.key), |&j| j == i) {
            slot.remove();
        }
        if e.open == 0 {
            self.unlink(i);
        }
        let last = self.entries.len() - 1;
        if at(i) != last {
            // Read after the unlink above, which may have changed its links. The slab never
            // holds more than u32::MAX entries (`push_entry`), so the cast keeps the value.
            let moved = self.entries[last];
            let from = last as u32;
            if let Some(slot) = self
                .index
                .find_mut(hasher.hash_one(moved.key), |&j| j == from)
            {
                *slot = i;
            }
            if moved.open == 0 {
                match moved.newer {
                    NIL => self.newest = i,
                    n => self.entries[at(n)].older = i,
                }
                match moved.older {
                    NIL => self.oldest = i,
                    o => self.entries[at(o)].newer = i,
                }
            }
        }
        self.entries.swap_remove(at(i));
        e
    }

    /// The first pass of a move: examines up to `scan` slab positions from `*cursor` (and
    /// moves the cursor on), taking the entries with open connections into `out`, at most
    /// `take` of them. True once the whole slab has been examined. Between calls only the
    /// move removes entries (a moving shard takes no new key), so positions before the
    /// cursor stay examined; one that gets a connection meanwhile goes in the second pass.
    pub fn take_open(
        &mut self,
        cursor: &mut usize,
        (scan, take): (usize, usize),
        out: &mut Vec<Entry>,
        hasher: &impl BuildHasher,
    ) -> bool {
        let limit = out.len().saturating_add(take);
        for _ in 0..scan {
            let Some(e) = self.entries.get(*cursor) else {
                break;
            };
            if e.open > 0 {
                // The last entry, not yet examined, comes to the cursor: look at it next.
                // The cursor is below the slab's length, which fits a u32.
                out.push(self.remove_at(*cursor as u32, hasher));
                if out.len() >= limit {
                    break;
                }
            } else {
                *cursor += 1;
            }
        }
        *cursor >= self.entries.len()
    }

    /// The second pass of a move: takes up to `take` entries out, the least recently seen
    /// idle ones first, then (none idle left) those with open connections. Into `out` go
    /// the ones worth carrying: open ones, and idle ones that have not recovered by `now`;
    /// a recovered idle one is as good as unknown and is dropped. True once the shard is
    /// empty, its storage then given back.
    pub fn take_rest(
        &mut self,
        now: u64,
        take: usize,
        out: &mut Vec<Entry>,
        hasher: &impl BuildHasher,
    ) -> bool {
        for _ in 0..take {
            let i = match self.oldest {
                NIL => match self.entries.len() {
                    0 => break,
                    n => (n - 1) as u32,
                },
                oldest => oldest,
            };
            let e = self.remove_at(i, hasher);
            if e.open > 0 || e.tat > now {
                out.push(e);
            }
        }
        if !self.entries.is_empty() {
            return false;
        }
        self.entries = Vec::new();
        self.index = HashTable::new();
        true
    }

    /// Sets storage aside at once for `n` more entries (never past the capacity), so that
    /// merging a move's batches in does not grow it (a copy and a rehash of the whole
    /// shard) while the move holds an old shard's lock.
    pub fn reserve(&mut self, n: usize, hasher: &impl BuildHasher) {
        let n = n.min(self.cap.saturating_sub(self.entries.len()));
        self.entries.reserve_exact(n);
        let entries = &self.entries;
        self.index
            .reserve(n, |&j| hasher.hash_one(entries[at(j)].key));
    }

    /// Gives back most of what [`Shard::reserve`] set aside and the move did not fill (a
    /// coarser prefix merges many entries into few).
    pub fn trim(&mut self, hasher: &impl BuildHasher) {
        if self.entries.len() < self.entries.capacity() / 4 {
            self.entries.shrink_to_fit();
            let entries = &self.entries;
            self.index
                .shrink_to_fit(|&j| hasher.hash_one(entries[at(j)].key));
        }
    }

    /// Adds an entry carried from another table, merging with one of the same key (open
    /// connections add up, the later TAT wins); false when the shard is full. A source with
    /// open connections always gets in: forgetting it would forget its count, and the
    /// listener's `max_connections` bounds how many such sources there are.
    pub fn merge(&mut self, hash: u64, from: &Entry, hasher: &impl BuildHasher) -> bool {
        let i = match self.find(hash, &from.key) {
            Some(i) => i,
            None => {
                let Some(i) = self.push_entry(from.open > 0) else {
                    return false;
                };
                self.entries[at(i)].key = from.key;
                self.push_newest(i);
                let entries = &self.entries;
                self.index
                    .insert_unique(hash, i, |&j| hasher.hash_one(entries[at(j)].key));
                i
            }
        };
        let e = &mut self.entries[at(i)];
        let was_idle = e.open == 0;
        e.tat = e.tat.max(from.tat);
        e.open = e.open.saturating_add(from.open);
        e.logged = e.logged.max(from.logged);
        if was_idle && e.open > 0 {
            self.unlink(i);
        }
        true
    }
}
