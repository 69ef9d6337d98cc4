//! A move interleaved with everything else, at random but reproducibly. Seeded runs
//! interleave the batches of a move (`Move::step`) with admits and releases through every
//! table of the chain (the one moving out, the one it moves to, stale ones before them),
//! rate changes through any of them, time moving on, and new moves to random shapes
//! (finer, coarser, smaller, larger) once the last one finished. After every operation:
//!
//! - every table's structure (`check_invariants`), and every table of the chain has the
//!   rate in force and, as the TATs' basis, the last rate put in force: one lineage, one
//!   rate, even halfway through a move;
//! - every entry's open count is the number of live tickets whose count the rule puts
//!   there (`check_counts`), and no ticket's count is lost;
//! - every admit or refusal is the one `explain` predicted through the same handle (so
//!   `peek` and `has_room` follow the move as admits do), and an admitted connection's
//!   entry then holds at most `max_connections`;
//! - a table a finished move left is empty; once every ticket is dropped, every count is 0.
//!
//! A failure prints the run, its seed and the step.
#![cfg(test)]

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::model_tests::{Rng, pool, random_rate, random_shape};
use super::move_tests::{Home, check_counts, entries, home};
use super::reshape::Move;
use super::shard::Key;
use super::sources::lock;
use super::*;

/// Runs and operations per run: about a second in a debug build.
const RUNS: u64 = 30;
const STEPS: usize = 800;

struct World {
    pool: Vec<IpAddr>,
    now: Instant,
    rate: Option<Rate>,
    /// The last rate put in force: TATs are in its terms, even while there is none.
    basis: Option<Rate>,
    max_connections: Option<u32>,
    /// Every table so far, oldest first; while a move runs, the last two are its ends.
    chain: Vec<Arc<SourceTable>>,
    moving: Option<Move>,
    held: Vec<Ticket>,
}

fn open_at(t: &SourceTable, key: Key) -> u32 {
    let hash = t.hasher.hash_one(key);
    let shard = lock(&t.shards[t.shard_index(hash)]);
    shard.get(hash, &key).map_or(0, |e| e.open)
}

impl World {
    fn new(rng: &mut Rng) -> World {
        let rate = random_rate(rng);
        let table = Arc::new(SourceTable::new(random_shape(rng), rate));
        World {
            pool: pool(),
            now: table.epoch(),
            rate,
            basis: rate,
            max_connections: rng.pick(&[Some(1), Some(2), Some(3), None]),
            chain: vec![table],
            moving: None,
            held: Vec::new(),
        }
    }

    /// Mostly the table workers use (the old one while a move runs), else any of the chain.
    fn handle(&self, rng: &mut Rng) -> Arc<SourceTable> {
        let n = self.chain.len();
        let published = n - 1 - usize::from(self.moving.is_some());
        let i = match rng.below(10) {
            0..6 => published,
            6 | 7 => n - 1,
            _ => rng.below(n),
        };
        self.chain[i].clone()
    }

    fn admit(&mut self, rng: &mut Rng) {
        let ip = rng.pick(&self.pool);
        let policy = Policy {
            per_source: Some(PerSource {
                rate: self.rate,
                max_connections: self.max_connections,
                exempt: PrefixSet::default(),
                table: self.handle(rng),
            }),
            ..Policy::default()
        };
        let expected = policy.explain(ip, self.now).reason;
        let result = policy.admit_at(ip, self.now).map_err(|r| r.reason);
        assert_eq!(result.as_ref().err().copied(), expected, "{ip}: explain");
        if let Ok(ticket) = result {
            let ticket = ticket.expect("limited sources get a ticket");
            let Home::Entry(t, key) = home(&ticket) else {
                panic!("{ip}: admitted, counted nowhere");
            };
            let max = self.max_connections.unwrap_or(u32::MAX);
            assert!(open_at(&t, key) <= max, "{ip}: past max");
            self.held.push(ticket);
        }
    }

    fn step_move(&mut self, rng: &mut Rng) {
        let Some(m) = &mut self.moving else {
            return;
        };
        for _ in 0..=rng.below(4) {
            if !m.step() {
                self.moving = None;
                let left = &self.chain[self.chain.len() - 2];
                assert!(entries(left).is_empty(), "a finished move left entries");
                return;
            }
        }
    }

    fn start_move(&mut self, rng: &mut Rng) {
        if self.moving.is_none() {
            let from = &self.chain[self.chain.len() - 1];
            let mut m = Move::start(from, random_shape(rng), self.now);
            // Batches that end halfway through shards, more often than not.
            m.per_batch = (1 + rng.below(12), 1 + rng.below(6));
            self.chain.push(m.to.clone());
            self.moving = Some(m);
        }
    }

    fn step(&mut self, rng: &mut Rng) {
        self.now += Duration::from_millis(rng.below(40) as u64);
        match rng.below(100) {
            0..40 => self.admit(rng),
            40..65 => {
                if !self.held.is_empty() {
                    let i = rng.below(self.held.len());
                    self.held.swap_remove(i);
                }
            }
            65..85 => self.step_move(rng),
            85..91 => self.start_move(rng),
            91..96 => {
                let rate = random_rate(rng);
                self.handle(rng).set_rate(self.now, rate);
                self.rate = rate;
                self.basis = rate.or(self.basis);
            }
            _ => self.now += Duration::from_secs(1 + rng.below(90) as u64),
        }
    }

    fn check(&self) {
        for t in &self.chain {
            let shards = t.check_invariants();
            assert_eq!(shards[0].rates, (self.rate, self.basis), "rate and basis");
        }
        check_counts(&self.chain, &self.held);
    }
}

#[test]
fn a_move_agrees_with_the_rule_whatever_happens_between_its_batches() {
    for run in 0..RUNS {
        let seed = 0x5851_f42d_4c95_7f2d ^ run.wrapping_mul(0x1405_7b7e_f767_814f);
        let mut rng = Rng(seed | 1);
        let mut w = World::new(&mut rng);
        for step in 0..STEPS {
            let check = std::panic::AssertUnwindSafe(|| {
                w.step(&mut rng);
                w.check();
            });
            if let Err(e) = std::panic::catch_unwind(check) {
                eprintln!("run {run} (seed {seed:#x}), step {step}");
                std::panic::resume_unwind(e);
            }
        }
        while w.moving.is_some() {
            w.step_move(&mut rng);
        }
        w.held.clear();
        w.check();
        for t in &w.chain {
            assert!(entries(t).iter().all(|e| e.open == 0), "run {run}: open");
        }
    }
}
