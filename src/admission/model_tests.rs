//! A randomized model of the per-source table across reloads. Seeded xorshift runs
//! interleave admits (through the current policy, a stale policy or a stale table handle),
//! ticket drops, reloads to random shapes (IPv4 and IPv6 prefixes, smaller and larger
//! `max_tracked`, sometimes through a stale handle), rate changes (to and from none) and
//! time moving on. After every step it checks:
//!
//! - every shard's structure (`Shard::check_invariants`): the recency list is exactly the
//!   idle entries, linked both ways without a cycle; one index slot per entry; all shards
//!   have the rate in force and, as the TATs' basis, the last rate put in force; tables
//!   that moved are empty and forward to the current one;
//! - a group's open count is the number of live tickets of the group that count: those taken
//!   since the last reshape that made their family's prefix finer (a split group starts
//!   afresh and older tickets release nothing), so no leak and no undercount;
//! - a group whose live tickets were all taken since its family's prefix last changed holds
//!   at most `max_connections` (a coarser prefix legitimately merges counts past it), and
//!   every admit or refusal is the one `explain` on the current policy predicted;
//! - the bound: with `pinned` the entries with open connections a shard received from the
//!   last reshape and `cap` its share of `max_tracked`, every shard holds at most
//!   `max(cap, pinned)` entries, so `tracked() <= max_tracked + Σ max(0, pinned - cap)`;
//! - once every ticket is dropped, every open count is 0.
//!
//! A failure prints the run, its seed and the step.
#![cfg(test)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::shard::Outcome;
use super::*;

/// Runs and steps per run: about 1.5 s in a debug build.
const RUNS: u64 = 50;
const STEPS: usize = 1000;
/// Policies kept for workers still on an older snapshot.
const STALE: usize = 4;

/// xorshift64.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(super) fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len())]
    }
}

/// IPv4 sources (some again as IPv4-mapped IPv6) and IPv6 ones, their addresses differing
/// in bits that the prefixes of `random_shape` keep or clear: each prefix groups them anew.
pub(super) fn pool() -> Vec<IpAddr> {
    let v4 = (0..48u32).map(|i| {
        let bits = 0x0a00_0000 | (i & 3) | (i >> 2 & 3) << 6 | (i >> 4 & 3) << 14 | (i >> 5) << 22;
        IpAddr::from(bits.to_be_bytes())
    });
    let mapped = (0..48u32).step_by(5).map(|i| {
        let bits = 0xffff_0a00_0000u128 | u128::from(i & 3) | u128::from(i >> 2 & 3) << 6;
        IpAddr::from(bits.to_be_bytes())
    });
    let v6 = (0..32u128).map(|i| {
        let bits = 0x2001_0db8 << 96 | (i & 3) | (i >> 2 & 1) << 64 | (i >> 3) << 78;
        IpAddr::from(bits.to_be_bytes())
    });
    v4.chain(mapped).chain(v6).collect()
}

pub(super) fn random_shape(rng: &mut Rng) -> Shape {
    Shape {
        ipv4_prefix: rng.pick(&[1, 8, 10, 16, 18, 24, 26, 30, 31, 32]),
        ipv6_prefix: rng.pick(&[1, 32, 48, 56, 64, 96, 126, 127, 128]),
        max_tracked: rng.pick(&[1, 2, 4, 8, 20, 24, 32, 48, 100, 512, 1024, 2048]),
    }
}

pub(super) fn random_rate(rng: &mut Rng) -> Option<Rate> {
    let s = Duration::from_secs;
    rng.pick(&[
        None,
        Some(Rate::new(1, s(1), 2)),
        Some(Rate::new(10, s(1), 0)),
        Some(Rate::new(1, s(60), 5)),
        Some(Rate::new(100, s(1), 3)),
    ])
}

/// A source's group as the model computes it: family (0: IPv4, 1: IPv6), masked address.
fn group(ip: IpAddr, shape: Shape) -> (usize, u128) {
    match ip.to_canonical() {
        IpAddr::V4(a) => (
            0,
            u128::from(u32::from(a) & u32::MAX << (32 - shape.ipv4_prefix)),
        ),
        IpAddr::V6(a) => (1, u128::from(a) & u128::MAX << (128 - shape.ipv6_prefix)),
    }
}

struct Held {
    ip: IpAddr,
    /// How many reshapes had happened when it was admitted.
    reshapes: usize,
    _ticket: Ticket,
}

/// Per group with live tickets: one of its sources, the live tickets that count, all live
/// tickets, and whether all were taken since the family's prefix last changed.
struct Tally {
    ip: IpAddr,
    counted: u32,
    live: u32,
    exact: bool,
}

struct Model {
    pool: Vec<IpAddr>,
    now: Instant,
    shape: Shape,
    rate: Option<Rate>,
    /// The last rate put in force: TATs are in its terms, even while there is none.
    basis: Option<Rate>,
    max_connections: Option<u32>,
    table: Arc<SourceTable>,
    policies: Vec<Policy>,
    held: Vec<Held>,
    reshapes: usize,
    /// Per family, the reshape (1-based) that last made its prefix finer, and that last
    /// changed it at all.
    finer_at: [usize; 2],
    changed_at: [usize; 2],
    /// Per shard of the current table: entries with open connections it got from the move.
    pinned_at_move: Vec<usize>,
}

impl Model {
    fn new(rng: &mut Rng) -> Model {
        let shape = random_shape(rng);
        let rate = random_rate(rng);
        let table = Arc::new(SourceTable::new(shape, rate));
        let shards = table.shard_count();
        let mut m = Model {
            pool: pool(),
            now: table.epoch(),
            shape,
            rate,
            basis: rate,
            max_connections: rng.pick(&[Some(1), Some(2), Some(3), None]),
            table,
            policies: Vec::new(),
            held: Vec::new(),
            reshapes: 0,
            finer_at: [0; 2],
            changed_at: [0; 2],
            pinned_at_move: vec![0; shards],
        };
        m.new_policy();
        m
    }

    fn new_policy(&mut self) {
        if self.policies.len() == STALE {
            self.policies.remove(0);
        }
        self.policies.push(Policy {
            per_source: Some(PerSource {
                rate: self.rate,
                max_connections: self.max_connections,
                exempt: PrefixSet::default(),
                table: self.table.clone(),
            }),
            ..Policy::default()
        });
    }

    /// A handle on the table: the current one, or one a stale policy holds.
    fn handle(&self, rng: &mut Rng) -> Arc<SourceTable> {
        let p = &self.policies[rng.below(self.policies.len())];
        p.per_source.as_ref().unwrap().table.clone()
    }

    fn tally(&self) -> HashMap<(usize, u128), Tally> {
        let mut groups: HashMap<_, Tally> = HashMap::new();
        for h in &self.held {
            let g = group(h.ip, self.shape);
            let t = groups.entry(g).or_insert(Tally {
                ip: h.ip,
                counted: 0,
                live: 0,
                exact: true,
            });
            t.live += 1;
            t.counted += u32::from(h.reshapes >= self.finer_at[g.0]);
            t.exact &= h.reshapes >= self.changed_at[g.0];
        }
        groups
    }

    fn admit(&mut self, rng: &mut Rng) {
        let ip = rng.pick(&self.pool);
        let current = self.policies.last().unwrap();
        let expected = current.explain(ip, self.now);
        let counted = self
            .tally()
            .get(&group(ip, self.shape))
            .map_or(0, |t| t.counted);
        let result = match rng.below(10) {
            0..=6 => current.admit_at(ip, self.now).map_err(|r| r.reason),
            7 | 8 => {
                let stale = &self.policies[rng.below(self.policies.len())];
                stale.admit_at(ip, self.now).map_err(|r| r.reason)
            }
            _ => {
                let table = self.handle(rng);
                let result = table.admit(ip, self.now, self.max_connections);
                result.map(Some).map_err(|o| match o {
                    Outcome::RateLimited { .. } => Reason::RateLimit,
                    Outcome::OverConnections { .. } => Reason::SourceLimit,
                    Outcome::Full => Reason::SourceTableFull,
                    Outcome::Admitted => unreachable!("admitted without a ticket"),
                })
            }
        };
        assert_eq!(
            result.as_ref().err().copied(),
            expected.reason,
            "{ip}: explain"
        );
        if let Ok(ticket) = result {
            assert!(
                self.max_connections.is_none_or(|m| counted < m),
                "{ip}: past max"
            );
            let reshapes = self.reshapes;
            let _ticket = ticket.expect("limited sources get a ticket");
            self.held.push(Held {
                ip,
                reshapes,
                _ticket,
            });
        }
    }

    /// A reload as `live.rs` does it, through the table the listener holds (or a stale one).
    fn reload(&mut self, rng: &mut Rng) {
        let shape = if rng.below(3) == 0 {
            self.shape
        } else {
            random_shape(rng)
        };
        let rate = if rng.below(3) == 0 {
            self.rate
        } else {
            random_rate(rng)
        };
        let via = self.handle(rng);
        if shape != self.shape {
            let (next, carried) = via.reshape(shape, self.now);
            assert!(Arc::ptr_eq(&self.table.current(), &next));
            let moved = self.table.check_invariants();
            assert!(
                moved.iter().all(|s| s.entries == 0),
                "the old table emptied"
            );
            self.reshapes += 1;
            let prefixes = |s: Shape| [s.ipv4_prefix, s.ipv6_prefix];
            let (old, new) = (prefixes(self.shape), prefixes(shape));
            for family in 0..2 {
                if new[family] > old[family] {
                    self.finer_at[family] = self.reshapes;
                }
                if new[family] != old[family] {
                    self.changed_at[family] = self.reshapes;
                }
            }
            if new[0] <= old[0] && new[1] <= old[1] {
                assert_eq!(carried.split, 0, "{carried:?}");
            }
            self.pinned_at_move = next.check_invariants().iter().map(|s| s.pinned).collect();
            (self.table, self.shape) = (next, shape);
        }
        // Sometimes the same rate again: putting it in force once more changes nothing.
        if rate != self.rate || rng.below(4) == 0 {
            self.set_rate(rng, rate);
        }
        self.new_policy();
    }

    fn set_rate(&mut self, rng: &mut Rng, rate: Option<Rate>) {
        self.handle(rng).set_rate(self.now, rate);
        self.rate = rate;
        self.basis = rate.or(self.basis);
    }

    fn check(&self, rng: &mut Rng) {
        let shards = self.table.check_invariants();
        let rates = (self.rate, self.basis);
        assert_eq!(shards[0].rates, rates, "the rate in force and the basis");
        let mut excess = 0;
        for (s, &pinned) in shards.iter().zip(&self.pinned_at_move) {
            assert!(s.entries <= s.cap.max(pinned), "{s:?}, {pinned} moved in");
            excess += pinned.saturating_sub(s.cap);
        }
        let caps: usize = shards.iter().map(|s| s.cap).sum();
        assert_eq!(caps, self.shape.max_tracked, "shards split the bound");
        let tracked = self.handle(rng).tracked();
        assert_eq!(tracked, shards.iter().map(|s| s.entries).sum::<usize>());
        assert!(
            tracked <= self.shape.max_tracked + excess,
            "{tracked} tracked"
        );
        // Every group with live tickets has the open count of those that count, and no
        // other entry has open connections.
        let tally = self.tally();
        for t in tally.values() {
            let open = self.table.peek(t.ip, self.now).0.map_or(0, |e| e.open);
            assert_eq!(open, t.counted, "{}: open vs live tickets", t.ip);
            let max = self.max_connections.unwrap_or(u32::MAX);
            assert!(!t.exact || t.live <= max, "{}: {} live", t.ip, t.live);
        }
        let open_groups = tally.values().filter(|t| t.counted > 0).count();
        let pinned: usize = shards.iter().map(|s| s.pinned).sum();
        assert_eq!(pinned, open_groups, "entries with open connections");
        for p in &self.policies {
            let t = &p.per_source.as_ref().unwrap().table;
            assert!(
                Arc::ptr_eq(&t.current(), &self.table),
                "a stale handle forwards"
            );
        }
    }

    fn step(&mut self, rng: &mut Rng) {
        self.now += Duration::from_millis(rng.below(40) as u64);
        match rng.below(100) {
            0..45 => self.admit(rng),
            45..80 => {
                if !self.held.is_empty() {
                    let i = rng.below(self.held.len());
                    self.held.swap_remove(i);
                }
            }
            80..84 => self.now += Duration::from_secs(1 + rng.below(90) as u64),
            84..94 => self.reload(rng),
            _ => {
                // A reload that changes only the rate, sometimes to none.
                let rate = random_rate(rng);
                self.set_rate(rng, rate);
                self.new_policy();
            }
        }
    }
}

#[test]
fn the_table_agrees_with_a_model_across_reloads() {
    for run in 0..RUNS {
        let seed = 0x9e37_79b9_7f4a_7c15 ^ run.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let mut rng = Rng(seed | 1);
        let mut m = Model::new(&mut rng);
        for step in 0..STEPS {
            let check = std::panic::AssertUnwindSafe(|| {
                m.step(&mut rng);
                m.check(&mut rng);
            });
            if let Err(e) = std::panic::catch_unwind(check) {
                eprintln!("run {run} (seed {seed:#x}), step {step}");
                std::panic::resume_unwind(e);
            }
        }
        m.held.clear();
        m.check(&mut rng);
        for &ip in &m.pool {
            let open = m.table.peek(ip, m.now).0.map_or(0, |e| e.open);
            assert_eq!(open, 0, "run {run}: {ip} open with every ticket dropped");
        }
    }
}
