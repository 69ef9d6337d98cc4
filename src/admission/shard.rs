//! One shard of the per-source table: a bounded map from source key to its limiter state,
//! with the idle sources in least-recently-seen order so the oldest can be forgotten.
//!
//! Entries live in a slab (`Vec`, never larger than the shard's capacity) and the hash index
//! holds only slab positions, which keeps a tracked source at 50-64 bytes. A source with
//! open connections is pinned: it is out of the recency list and never forgotten, because
//! forgetting it would forget its count. An idle source is forgotten only once its rate state
//! has fully recovered, since a fresh entry would hand it a full burst early; when none of
//! the oldest idle sources qualifies, the new source is refused (fail closed).

use std::hash::BuildHasher;

use hashbrown::HashTable;

use super::gcra::Rate;

/// A source key: the masked address, IPv4 as IPv4-mapped IPv6 (see `sources.rs`).
pub type Key = [u64; 2];

const NIL: u32 = u32::MAX;
/// How many of the least recently seen idle sources an insert examines for one to forget.
const SCAN: usize = 16;
/// A refused source is logged again only after this many seconds.
pub const LOG_EVERY_SECS: u32 = 10;

#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub key: Key,
    /// GCRA theoretical arrival time (ns); 0 = never limited.
    pub tat: u64,
    /// Open connections from this source.
    pub open: u32,
    /// Recency list links (toward newer / older); NIL at the ends or when pinned.
    newer: u32,
    older: u32,
    /// Second (+1) of the last logged refusal; 0 = never.
    logged: u32,
}

/// What the limits allow for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Admitted,
    RateLimited {
        log: bool,
    },
    OverConnections {
        log: bool,
    },
    /// The shard is full of sources that cannot be forgotten yet.
    Full,
}

#[derive(Debug)]
pub struct Shard {
    /// The rate in force, and the last rate the TATs were expressed in (kept when the rate
    /// is removed, so that a rate added back later carries them correctly). Held here, under
    /// the shard's lock, so that a worker still on an older snapshot cannot write a TAT in
    /// terms of a rate a reload already converted away from.
    rate: Option<Rate>,
    basis: Option<Rate>,
    entries: Vec<Entry>,
    index: HashTable<u32>,
    /// Most and least recently seen idle entries.
    newest: u32,
    oldest: u32,
    cap: usize,
    /// Set by a reshape when it starts moving this shard's entries out (`reshape.rs`): from
    /// then on the shard takes no new key, so a key it no longer holds will never be here
    /// again and operations on it go to the table the state moves to.
    pub moving: bool,
}

fn at(i: u32) -> usize {
    i as usize
}

impl Shard {
    pub fn new(cap: usize, rate: Option<Rate>) -> Shard {
        Shard {
            rate,
            basis: rate,
            entries: Vec::new(),
            index: HashTable::new(),
            newest: NIL,
            oldest: NIL,
            cap,
            moving: false,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes held by this shard's storage.
    pub fn memory(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>() + self.index.allocation_size()
    }

    fn find(&self, hash: u64, key: &Key) -> Option<u32> {
        let entries = &self.entries;
        self.index
            .find(hash, |&i| entries[at(i)].key == *key)
            .copied()
    }

    pub fn get(&self, hash: u64, key: &Key) -> Option<Entry> {
        self.find(hash, key).map(|i| self.entries[at(i)])
    }

    fn unlink(&mut self, i: u32) {
        let Entry { newer, older, .. } = self.entries[at(i)];
        match newer {
            NIL => self.newest = older,
            n => self.entries[at(n)].older = older,
        }
        match older {
            NIL => self.oldest = newer,
            o => self.entries[at(o)].newer = newer,
        }
        let e = &mut self.entries[at(i)];
        e.newer = NIL;
        e.older = NIL;
    }

    fn push_newest(&mut self, i: u32) {
        let old_newest = self.newest;
        let e = &mut self.entries[at(i)];
        e.newer = NIL;
        e.older = old_newest;
        match old_newest {
            NIL => self.oldest = i,
            n => self.entries[at(n)].newer = i,
        }
        self.newest = i;
    }

    /// Marks an idle entry as just seen.
    fn touch(&mut self, i: u32) {
        if self.entries[at(i)].open == 0 {
            self.unlink(i);
            self.push_newest(i);
        }
    }

    /// Whether an idle entry can be forgotten without letting anything through early: its
    /// rate state has recovered (a fresh entry would be the same).
    fn recovered(&self, i: u32, now: u64) -> bool {
        self.entries[at(i)].tat <= now
    }

    /// The rate in force and the rate the TATs are expressed in.
    pub fn rates(&self) -> (Option<Rate>, Option<Rate>) {
        (self.rate, self.basis)
    }

    /// Takes over another shard's rates (a reshaped table carrying its TATs as they are).
    pub fn inherit(&mut self, (rate, basis): (Option<Rate>, Option<Rate>)) {
        self.rate = rate;
        self.basis = basis;
    }

    /// Puts `rate` in force, re-expressing every TAT from the last rate they were built
    /// under (see [`Rate::carry`]).
    pub fn set_rate(&mut self, now: u64, rate: Option<Rate>) {
        if let (Some(old), Some(new)) = (self.basis, rate)
            && old != new
        {
            for e in &mut self.entries {
                e.tat = new.carry(e.tat, now, &old);
            }
        }
        self.rate = rate;
        self.basis = rate.or(self.basis);
    }

    /// The least recently seen idle source that can be forgotten, looking at up to `SCAN` of
    /// the oldest. One that cannot be yet (it spent its burst and went quiet) is moved to
    /// the newest end on the way: it cannot be forgotten before its time anyway, and left at
    /// the old end a few such sources would hide every recovered one behind them.
    fn take_forgettable(&mut self, now: u64) -> Option<u32> {
        // SCAN moves, and a look at the entry behind the last one moved.
        for _ in 0..=SCAN {
            let oldest = self.oldest;
            if oldest == NIL {
                return None;
            }
            if self.recovered(oldest, now) {
                return Some(oldest);
            }
            self.unlink(oldest);
            self.push_newest(oldest);
        }
        None
    }

    /// Whether a source not tracked yet would get a slot now: the same look an insert
    /// takes (read-only: rotating past an entry does not change what is found).
    pub fn has_room(&self, now: u64) -> bool {
        if self.entries.len() < self.cap {
            return true;
        }
        let mut i = self.oldest;
        for _ in 0..=SCAN {
            if i == NIL {
                return false;
            }
            if self.recovered(i, now) {
                return true;
            }
            i = self.entries[at(i)].newer;
        }
        false
    }

    /// A new blank slot while below capacity, or past it when `force` (not linked, not
    /// indexed).
    fn push_entry(&mut self, force: bool) -> Option<u32> {
        if self.entries.len() >= self.cap && !force {
            return None;
        }
        if self.entries.len() == self.entries.capacity() {
            // Grow by doubling, but never past the capacity: the bound is on memory.
            let room = self.cap.saturating_sub(self.entries.len()).max(1);
            self.entries
                .reserve_exact(self.entries.len().max(16).min(room));
        }
        let i = u32::try_from(self.entries.len()).ok()?;
        self.entries.push(Entry {
            key: [0; 2],
            tat: 0,
            open: 0,
            newer: NIL,
            older: NIL,
            logged: 0,
        });
        Some(i)
    }

    /// The slot for a new source: a free one while below capacity, else a forgettable one.
    fn slot_for_new(&mut self, now: u64, hasher: &impl BuildHasher) -> Option<u32> {
        if let Some(i) = self.push_entry(false) {
            return Some(i);
        }
        let victim = self.take_forgettable(now)?;
        let key = self.entries[at(victim)].key;
        let entries = &self.entries;
        if let Ok(found) = self
            .index
            .find_entry(hasher.hash_one(key), |&j| entries[at(j)].key == key)
        {
            found.remove();
        }
        self.unlink(victim);
        Some(victim)
    }

    /// One connection attempt from `key` at `now` (ns), under the shard's rate and at
    /// most `max_open` connections.
    pub fn admit(
        &mut self,
        hash: u64,
        key: Key,
        now: u64,
        max_open: Option<u32>,
        hasher: &impl BuildHasher,
    ) -> Outcome {
        let i = match self.find(hash, &key) {
            Some(i) => i,
            None => {
                let Some(i) = self.slot_for_new(now, hasher) else {
                    return Outcome::Full;
                };
                let e = &mut self.entries[at(i)];
                (e.key, e.tat, e.open, e.logged) = (key, 0, 0, 0);
                self.push_newest(i);
                let entries = &self.entries;
                self.index
                    .insert_unique(hash, i, |&j| hasher.hash_one(entries[at(j)].key));
                i
            }
        };
        self.touch(i);
        let e = &mut self.entries[at(i)];
        // Concurrency first, so that a refusal for it does not spend a rate token.
        if max_open.is_some_and(|max| e.open >= max) {
            return Outcome::OverConnections {
                log: e.should_log(now),
            };
        }
        if let Some(rate) = &self.rate {
            match rate.conform(e.tat, now) {
                Some(tat) => e.tat = tat,
                None => {
                    return Outcome::RateLimited {
                        log: e.should_log(now),
                    };
                }
            }
        }
        e.open = e.open.saturating_add(1);
        if e.open == 1 {
            self.unlink(i); // pinned while it has connections
        }
        Outcome::Admitted
    }

    /// A connection from `key` ended.
    pub fn release(&mut self, hash: u64, key: &Key) {
        let Some(i) = self.find(hash, key) else {
            return;
        };
        let e = &mut self.entries[at(i)];
        if e.open == 0 {
            return; // not ours to release (cannot happen: pinned entries are never reused)
        }
        e.open -= 1;
        if e.open == 0 {
            self.push_newest(i);
        }
    }

    /// What each source still owes at `now`: its key and how far its TAT runs ahead (ns).
    /// Sources that owe nothing are as good as unknown and are left out.
    pub fn debts(&self, now: u64, out: &mut Vec<(Key, u64)>) {
        out.extend(
            (self.entries.iter())
                .filter(|e| e.tat > now)
                .map(|e| (e.key, e.tat - now)),
        );
    }

    /// Entries from least to most recently seen, idle ones only (for tests).
    #[cfg(test)]
    pub fn idle_keys(&self) -> Vec<Key> {
        let mut out = Vec::new();
        let mut i = self.oldest;
        while i != NIL {
            out.push(self.entries[at(i)].key);
            i = self.entries[at(i)].newer;
        }
        out
    }
}

impl Entry {
    /// An entry carried from elsewhere (another process's table), to [`Shard::merge`] in.
    pub fn carried(key: Key, tat: u64, open: u32) -> Entry {
        Entry {
            key,
            tat,
            open,
            newer: NIL,
            older: NIL,
            logged: 0,
        }
    }

    /// True at most once per `LOG_EVERY_SECS` per source.
    fn should_log(&mut self, now: u64) -> bool {
        let second = u32::try_from(now / 1_000_000_000)
            .unwrap_or(u32::MAX - 1)
            .saturating_add(1);
        if self.logged == 0 || second.saturating_sub(self.logged) >= LOG_EVERY_SECS {
            self.logged = second;
            return true;
        }
        false
    }
}

#[path = "shard_move.rs"]
mod moving;

#[cfg(test)]
#[path = "shard_tests.rs"]
pub(super) mod tests;
