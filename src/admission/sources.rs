//! The per-source limiter table of one listener, shared by all its workers: sources are
//! grouped by prefix into keys, keys are spread over 64 (up to 1024 for huge tables)
//! independently locked shards (no global lock on the accept path), and each shard is
//! bounded (`shard.rs`). A connection admitted with a ticket gives its slot back when the
//! ticket drops. While a reload moves the state to a new table (`reshape.rs`), each shard
//! sends what it no longer holds there.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Instant;

use super::Cidr;
use super::gcra::Rate;
use super::shard::{Entry, Key, Outcome, Shard};

/// Enough shards that workers rarely meet on one lock.
const SHARDS: usize = 64;
/// Sources per shard below which fewer shards are used, so that a small table is not split
/// into slivers that fill up (and refuse) while the others are empty.
const MIN_PER_SHARD: usize = 256;
/// Sources per shard above which more shards are used, so that growing one shard (a copy
/// and a rehash, under its lock) never stalls an accept loop for long.
const MAX_PER_SHARD: usize = 16_384;
const MAX_SHARDS: usize = 1024;

/// What a table is keyed and sized by; a reload that changes it starts a new table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub max_tracked: usize,
}

/// A shard on its own cache line, so that workers locking neighbours do not contend.
#[repr(align(64))]
#[derive(Debug)]
pub(super) struct Padded(pub(super) Mutex<Shard>);

/// What a table shares with the tables reshaped from it: one listener's limiter across
/// reloads.
#[derive(Debug, Default)]
pub(super) struct Lineage {
    /// Held by a reshape from start to end: two never run at once, and the second starts
    /// from where the first put the state.
    pub(super) reshaping: Mutex<()>,
    /// The tables of the lineage still alive (empty before the first reshape, when the one
    /// table is all there is). Locked by `set_rate` for its whole run, which puts the rate
    /// in force in all of them, and by the start and each batch of a move: a batch never
    /// carries a TAT between two shards whose rates differ.
    pub(super) members: Mutex<Vec<Weak<SourceTable>>>,
}

#[derive(Debug)]
pub struct SourceTable {
    pub(super) shards: Box<[Padded]>,
    /// Keyed SipHash: source addresses are chosen by the client, so a fixed hash would let
    /// one flood a single bucket chain.
    pub(super) hasher: RandomState,
    pub(super) shape: Shape,
    pub(super) epoch: Instant,
    /// The table this one's state moves to when a reload changed its shape (`reshape.rs`).
    /// Set before any shard starts moving. A shard that has started (`Shard::moving`)
    /// sends there the keys it no longer holds, deciding under its own lock, under which
    /// the move also takes entries out and puts them in: no admit or release falls between
    /// the two tables.
    pub(super) moved: OnceLock<Arc<SourceTable>>,
    pub(super) lineage: Arc<Lineage>,
}

/// Where an operation on a source lands: this table's shard, or the table it moved to.
enum Place<'a> {
    Here(MutexGuard<'a, Shard>),
    Moved(&'a Arc<SourceTable>),
}

pub(super) fn mask(bits: u128, width: u32, prefix: u8) -> u128 {
    let host = width - u32::from(prefix).min(width);
    if host >= 128 {
        0
    } else {
        bits & !((1u128 << host) - 1)
    }
}

impl SourceTable {
    pub fn new(shape: Shape, rate: Option<Rate>) -> SourceTable {
        SourceTable::with_epoch(shape, Instant::now(), (rate, rate), Arc::default())
    }

    /// A table whose clock counts from `epoch` (a reshaped table keeps its predecessor's,
    /// so carried TATs keep their meaning), with the rate in force and the TATs' basis of
    /// [`Shard::rates`].
    pub(super) fn with_epoch(
        shape: Shape,
        epoch: Instant,
        rates: (Option<Rate>, Option<Rate>),
        lineage: Arc<Lineage>,
    ) -> SourceTable {
        let max = shape.max_tracked.max(1);
        let want = (max / MIN_PER_SHARD)
            .min(SHARDS)
            .max(max / MAX_PER_SHARD)
            .clamp(1, MAX_SHARDS);
        // A power of two, so the shard is picked with a mask.
        let count = 1usize << want.ilog2();
        let shards = (0..count)
            .map(|i| {
                let mut shard = Shard::new(max / count + usize::from(i < max % count), rates.0);
                shard.inherit(rates);
                Padded(Mutex::new(shard))
            })
            .collect();
        SourceTable {
            shards,
            hasher: RandomState::new(),
            shape,
            epoch,
            moved: OnceLock::new(),
            lineage,
        }
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The instant this table's clock counts from.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// The source group of `ip`: IPv4 (and IPv4-mapped IPv6) masked to `ipv4_prefix`, IPv6
    /// to `ipv6_prefix`.
    pub fn group(&self, ip: IpAddr) -> Cidr {
        let ip = ip.to_canonical();
        let prefix = if ip.is_ipv4() {
            self.shape.ipv4_prefix
        } else {
            self.shape.ipv6_prefix
        };
        Cidr::covering(ip, prefix)
    }

    /// The table key of `ip`. IPv4 groups are stored as IPv4-mapped IPv6 (`::ffff:a.b.c.d`);
    /// an IPv6 group never falls in that range (mapped addresses are canonicalised to IPv4
    /// first, and masking only clears bits), so the two families cannot collide.
    #[inline]
    pub fn key(&self, ip: IpAddr) -> Key {
        let bits = match ip.to_canonical() {
            IpAddr::V4(v4) => {
                (0xffff << 32) | mask(u128::from(u32::from(v4)), 32, self.shape.ipv4_prefix)
            }
            IpAddr::V6(v6) => mask(u128::from(v6), 128, self.shape.ipv6_prefix),
        };
        [(bits >> 64) as u64, bits as u64]
    }

    pub(super) fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Locks the shard of `key`, or says where its state went: a shard that a move has
    /// started on handles the keys it still holds and sends the others on (it takes no new
    /// key, so one it does not hold now it never will).
    fn place(&self, hash: u64, key: &Key) -> Place<'_> {
        let shard = self.shard(hash);
        if shard.moving
            && !shard.holds(hash, key)
            && let Some(next) = self.moved.get()
        {
            return Place::Moved(next);
        }
        Place::Here(shard)
    }

    pub(super) fn shard_index(&self, hash: u64) -> usize {
        // Bits 40.. pick the shard: hashbrown uses the low bits for the bucket and the top
        // seven as a tag, and reusing either would crowd each shard's index.
        (hash >> 40) as usize & (self.shards.len() - 1)
    }

    fn shard_of(&self, hash: u64) -> &Padded {
        &self.shards[self.shard_index(hash)]
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        lock(self.shard_of(hash))
    }

    /// One connection attempt from `ip` at `now`, under the table's rate and at most
    /// `max_open` connections per source. `Ok` carries the ticket that holds its place among
    /// the source's open connections until dropped.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        now: Instant,
        max_open: Option<u32>,
    ) -> Result<Ticket, Outcome> {
        let key = self.key(ip);
        let hash = self.hasher.hash_one(key);
        let t = self.nanos(now);
        let mut shard = match self.place(hash, &key) {
            Place::Here(shard) => shard,
            Place::Moved(next) => return next.admit(ip, now, max_open),
        };
        match shard.admit(hash, key, t, max_open, &self.hasher) {
            Outcome::Admitted => Ok(Ticket {
                table: self.clone(),
                key,
                hash,
            }),
            refused => Err(refused),
        }
    }

    /// A connection admitted elsewhere (by the process a binary upgrade replaced, or before
    /// it was frozen for a handover that then failed), counted against its source like one
    /// admitted here: without the rate or `max_connections` check, as it is open already and
    /// refusing it would close it. Its source always gets an entry, even in a full shard:
    /// forgetting it would forget its count (as a reshape does, see `reshape.rs`).
    pub fn readmit(self: &Arc<Self>, ip: IpAddr) -> Ticket {
        let key = self.key(ip);
        let hash = self.hasher.hash_one(key);
        let mut shard = match self.place(hash, &key) {
            Place::Here(shard) => shard,
            Place::Moved(next) => return next.readmit(ip),
        };
        shard.merge(hash, &Entry::carried(key, 0, 1), &self.hasher);
        Ticket {
            table: self.clone(),
            key,
            hash,
        }
    }

    /// A connection admitted with `key` in this table ended. Forwarded, the key is mapped
    /// to the group it was merged into; a group that was split (a finer prefix) started
    /// afresh without this connection, so there is nothing to release.
    fn release(&self, key: Key, hash: u64) {
        match self.place(hash, &key) {
            Place::Here(mut shard) => shard.release(hash, &key),
            Place::Moved(next) => {
                if let Some(key) = super::reshape::rekey(key, self.shape, next.shape) {
                    next.release(key, next.hasher.hash_one(key));
                }
            }
        }
    }

    /// Puts `rate` in force at `now` in this table and every other of its lineage (the
    /// ones it moved from and to, even halfway through a move); what sources owe carries
    /// over (see `reshape.rs`).
    pub fn set_rate(&self, now: Instant, rate: Option<Rate>) {
        let t = self.nanos(now);
        let members = guard(&self.lineage.members);
        let mut here = false;
        for table in members.iter().filter_map(Weak::upgrade) {
            here |= std::ptr::eq(&*table, self);
            table.convert(t, rate);
        }
        if !here {
            self.convert(t, rate);
        }
    }

    fn convert(&self, t: u64, rate: Option<Rate>) {
        for shard in self.shards.iter() {
            lock(shard).set_rate(t, rate);
        }
    }

    /// The state of `ip`'s group without changing it (`None`: not tracked), and the time
    /// on this table's clock.
    pub fn peek(&self, ip: IpAddr, now: Instant) -> (Option<Entry>, u64) {
        let key = self.key(ip);
        let hash = self.hasher.hash_one(key);
        match self.place(hash, &key) {
            Place::Here(shard) => (shard.get(hash, &key), self.nanos(now)),
            Place::Moved(next) => next.peek(ip, now),
        }
    }

    /// Whether a source `ip`'s group, if not tracked, would get a slot at `now`.
    pub fn has_room(&self, ip: IpAddr, now: Instant) -> bool {
        let key = self.key(ip);
        let hash = self.hasher.hash_one(key);
        match self.place(hash, &key) {
            Place::Here(shard) => shard.has_room(self.nanos(now)),
            Place::Moved(next) => next.has_room(ip, now),
        }
    }

    /// The table that holds the state now: this one, or the last it moved to.
    pub fn current(self: &Arc<Self>) -> Arc<SourceTable> {
        let mut t = self.clone();
        while let Some(next) = t.moved.get().cloned() {
            t = next;
        }
        t
    }

    /// Sources tracked now: here, and in the table the state moved (or is moving) to.
    /// During a move the sum may count an entry that moves meanwhile twice.
    pub fn tracked(&self) -> usize {
        let here: usize = self.shards.iter().map(|s| lock(s).len()).sum();
        here + self.moved.get().map_or(0, |next| next.tracked())
    }

    /// Bytes held by the table's storage (its bound grows with `max_tracked` only), and by
    /// the table the state moved to (an old table gives its storage back as it empties).
    pub fn memory(&self) -> usize {
        let here: usize = self.shards.iter().map(|s| lock(s).memory()).sum();
        here + self.moved.get().map_or(0, |next| next.memory())
    }

    #[cfg(test)]
    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }
}

#[cfg(test)]
impl SourceTable {
    /// Asserts the structure of every shard of this table (not of the one it moved to; see
    /// `Shard::check_invariants`) and that they all have the same rates.
    pub(super) fn check_invariants(&self) -> Vec<super::shard::tests::Census> {
        let shards: Vec<_> = (self.shards.iter().enumerate())
            .map(|(i, s)| lock(s).check_invariants(&self.hasher, |h| self.shard_index(h) == i))
            .collect();
        for (i, s) in shards.iter().enumerate() {
            assert_eq!(
                s.rates, shards[0].rates,
                "shard {i} has other rates than shard 0"
            );
        }
        shards
    }
}

pub(super) fn lock(p: &Padded) -> MutexGuard<'_, Shard> {
    // A shard's invariants hold between statements that cannot panic, so a poisoned lock
    // still guards a consistent shard.
    guard(&p.0)
}

/// Locks `m`, poisoned or not (every lock of this module guards state that stays
/// consistent between statements that cannot panic).
pub(super) fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One open connection counted against its source; dropping it releases the count (in the
/// table the state moved to, if a reload moved it meanwhile).
#[derive(Debug)]
pub struct Ticket {
    table: Arc<SourceTable>,
    key: Key,
    hash: u64,
}

#[cfg(test)]
impl Ticket {
    /// The table that issued it and its key there.
    pub(super) fn issued(&self) -> (&Arc<SourceTable>, Key) {
        (&self.table, self.key)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.table.release(self.key, self.hash);
    }
}
