//! Threads on the tables while a reshape runs on another: workers admit and release
//! (holding and dropping tickets) through the old table, in some runs with a worker on the
//! new table too, and a rate is put in force from yet another thread meanwhile. Whatever
//! the interleaving:
//!
//! - no source ever holds more than `max_connections` tickets from one handle (the workers
//!   count them after the table counted the admit and before it counts the release, so an
//!   overcount here is one in the table);
//! - a source that spent its burst is refused through the old table throughout, and through
//!   both afterwards, its debt converted to the new rate exactly once;
//! - the move carries every entry (none has recovered on the workers' fixed clock, and there
//!   is room for all) and splits none;
//! - afterwards, tickets still held, every entry's open count is the live tickets whose
//!   count it holds (`check_counts`); once they drop, every count is 0; both tables'
//!   structure holds, the old one empty.
//!
//! No sleeps: the reshape starts once every worker has made progress; stepped by hand, the
//! move waits after each batch until every worker has done one more operation, so the
//! workers meet the move in every phase.
#![cfg(test)]

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::Instant;

use super::model_tests::Rng;
use super::move_tests::{check_counts, entries, per_hour, shape, v4};
use super::reshape::Move;
use super::shard::Outcome;
use super::*;

const WORKERS: usize = 3;
/// Sources the workers share: 10.0.0.0/22, four /24s of 64.
const POOL: u32 = 256;
/// Sources that spent their burst before the move: 10.1.0.0/24.
const DEBTORS: u32 = 32;
/// Idle sources that owe an hour, for the move to carry: 10.2.0.0/16 and up.
const FILLER: u32 = 20_000;
const MAX: u32 = 3;
const BURST: u32 = 1000;
/// Operations per worker at most, whatever happens.
const MAX_OPS: u64 = 2_000_000;
/// Operations per worker per batch, when the move is stepped by hand.
const PACE: u64 = 16;
const HOUR: u64 = 3_600_000_000_000;

fn pool(i: u32) -> IpAddr {
    v4(0x0a00_0000 + i / 64 * 256 + i % 64)
}

fn debtor(i: u32) -> IpAddr {
    v4(0x0a01_0000 + i)
}

fn filler(i: u32) -> IpAddr {
    v4(0x0a02_0000 + i)
}

/// The counter of pool source `i`'s group under `shape` (/32 or /24 only).
fn slot(shape: Shape, i: u32) -> usize {
    (if shape.ipv4_prefix == 32 {
        i
    } else {
        i / 64 * 64
    }) as usize
}

#[derive(Clone, Copy)]
struct Run {
    to: Shape,
    /// Step the move by hand, in step with the workers, instead of calling `reshape`.
    stepped: bool,
    new_table_worker: bool,
    set_rate: bool,
}

struct Shared {
    old: Arc<SourceTable>,
    t0: Instant,
    ops: Vec<AtomicU64>,
    finished: Vec<AtomicBool>,
    /// Batches moved so far, when the move is stepped by hand (workers then do at most
    /// `PACE` operations per batch, so the move need not compete with them for the cores).
    steps: Option<AtomicU64>,
    done: AtomicBool,
    /// Live tickets per group, taken through the old table [0] or the new one [1].
    live: [Vec<AtomicU32>; 2],
}

/// Sets its worker's `finished` flag however the worker ends, a failed assertion too.
struct Finished<'a>(&'a AtomicBool);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

impl Shared {
    fn new_table(&self) -> Arc<SourceTable> {
        loop {
            match self.old.moved.get() {
                Some(t) => return t.clone(),
                None => std::thread::yield_now(),
            }
        }
    }

    /// Waits until every worker has done more than `seen` operations or has finished.
    fn wait_for_workers(&self, seen: &[u64]) {
        for (w, &n) in seen.iter().enumerate() {
            while self.ops[w].load(SeqCst) <= n && !self.finished[w].load(SeqCst) {
                std::thread::yield_now();
            }
        }
    }

    fn ops(&self) -> Vec<u64> {
        self.ops.iter().map(|o| o.load(SeqCst)).collect()
    }

    /// Admits and releases pool sources through `via` (old: 0, new: 1), and checks that
    /// debtors stay refused through the old table. Returns the tickets still held, and
    /// how many admits through the old table the new one answered.
    fn work(&self, w: usize, via: usize) -> (Vec<Ticket>, usize) {
        let _finished = Finished(&self.finished[w]);
        let table = if via == 0 {
            self.old.clone()
        } else {
            self.new_table()
        };
        let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ ((w as u64 + 1) * 0x9e37_79b9));
        let (mut held, mut forwarded, mut after_done) = (Vec::new(), 0, 0);
        let (mut step, mut this_step) = (0, 0);
        for n in 0..MAX_OPS {
            if self.done.load(SeqCst) {
                after_done += 1;
                if after_done > 64 {
                    break;
                }
            }
            if let Some(steps) = &self.steps {
                while this_step >= PACE && steps.load(SeqCst) == step && !self.done.load(SeqCst) {
                    std::thread::yield_now();
                }
                if steps.load(SeqCst) != step {
                    (step, this_step) = (steps.load(SeqCst), 0);
                }
                this_step += 1;
            }
            match rng.below(8) {
                0..4 => {
                    let i = rng.below(POOL as usize) as u32;
                    if let Ok(t) = table.admit(pool(i), self.t0, Some(MAX)) {
                        let live = &self.live[via][slot(table.shape(), i)];
                        assert!(live.fetch_add(1, SeqCst) < MAX, "{}: past max", pool(i));
                        forwarded += usize::from(!Arc::ptr_eq(t.issued().0, &table));
                        held.push((i, t));
                    }
                }
                4..7 if !held.is_empty() => {
                    let (i, t) = held.swap_remove(rng.below(held.len()));
                    self.live[via][slot(table.shape(), i)].fetch_sub(1, SeqCst);
                    drop(t);
                }
                7 if via == 0 => {
                    let ip = debtor(rng.below(DEBTORS as usize) as u32);
                    let refused = table.admit(ip, self.t0, Some(MAX));
                    assert!(
                        matches!(refused, Err(Outcome::RateLimited { .. })),
                        "{ip}: {refused:?}"
                    );
                }
                _ => {}
            }
            self.ops[w].store(n + 1, SeqCst);
        }
        (held.into_iter().map(|(_, t)| t).collect(), forwarded)
    }
}

fn run(r: Run) {
    let rate = per_hour(1, BURST);
    let old = Arc::new(SourceTable::new(shape(40_000, 32), rate));
    let t0 = old.epoch();
    for i in 0..FILLER {
        drop(old.admit(filler(i), t0, None).unwrap());
    }
    for i in 0..DEBTORS {
        while old.admit(debtor(i), t0, None).is_ok() {}
    }
    for i in 0..POOL {
        drop(old.admit(pool(i), t0, None).unwrap());
    }
    let before = old.tracked();
    let workers = WORKERS + usize::from(r.new_table_worker);
    let counters = || (0..POOL).map(|_| AtomicU32::new(0)).collect();
    let shared = Shared {
        old: old.clone(),
        t0,
        ops: (0..workers).map(|_| AtomicU64::new(0)).collect(),
        finished: (0..workers).map(|_| AtomicBool::new(false)).collect(),
        steps: r.stepped.then(|| AtomicU64::new(0)),
        done: AtomicBool::new(false),
        live: [counters(), counters()],
    };
    let faster = per_hour(2, BURST / 2);
    let (new, carried, held, forwarded) = std::thread::scope(|s| {
        let shared = &shared;
        let handles: Vec<_> = (0..workers)
            .map(|w| s.spawn(move || shared.work(w, usize::from(w == WORKERS))))
            .collect();
        if r.set_rate {
            s.spawn(|| {
                shared.new_table();
                shared.old.set_rate(t0, faster);
            });
        }
        shared.wait_for_workers(&[0; WORKERS]);
        let (new, carried) = if r.stepped {
            let mut m = Move::start(&old, r.to, t0);
            loop {
                let seen = shared.ops();
                let more = m.step();
                if let Some(steps) = &shared.steps {
                    steps.fetch_add(1, SeqCst);
                }
                shared.wait_for_workers(&seen);
                if !more {
                    break (m.to, m.carried);
                }
            }
        } else {
            old.reshape(r.to, t0)
        };
        shared.done.store(true, SeqCst);
        let (mut held, mut forwarded) = (Vec::new(), 0);
        for h in handles {
            let (tickets, f) = h.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
            held.extend(tickets);
            forwarded += f;
        }
        (new, carried, held, forwarded)
    });
    assert_eq!(
        (carried.kept, carried.split, carried.no_room),
        (before, 0, 0)
    );
    assert!(r.stepped || carried.longest_hold <= carried.took);
    assert!(!r.stepped || forwarded > 0, "no admit met a moved source");
    assert!(entries(&old).is_empty());
    let rates = if r.set_rate {
        (faster, faster)
    } else {
        (rate, rate)
    };
    for t in [&old, &new] {
        assert_eq!(t.check_invariants()[0].rates, rates);
    }
    check_counts(&[old.clone(), new.clone()], &held);
    // Debts, converted once when the rate changed: 1001 connections owed at 1/h, capped
    // at what 2/h with a burst of 500 can owe; fillers owe one connection.
    let (owed, one) = if r.set_rate {
        (HOUR / 2 * 501, HOUR / 2)
    } else {
        (HOUR * 1001, HOUR)
    };
    for i in 0..DEBTORS {
        assert_eq!(new.peek(debtor(i), t0).0.unwrap().tat, owed);
        for t in [&old, &new] {
            let refused = t.admit(debtor(i), t0, Some(MAX));
            assert!(matches!(refused, Err(Outcome::RateLimited { .. })));
        }
    }
    for i in (0..FILLER).step_by(101) {
        assert_eq!(new.peek(filler(i), t0).0.unwrap().tat, one, "{}", filler(i));
    }
    let counted: u32 = shared.live.iter().flatten().map(|c| c.load(SeqCst)).sum();
    assert_eq!(counted as usize, held.len());
    drop(held);
    assert!(entries(&new).iter().all(|e| e.open == 0));
}

#[test]
fn workers_on_the_old_table_while_reshape_runs_and_a_rate_changes() {
    run(Run {
        to: shape(50_000, 32),
        stepped: false,
        new_table_worker: false,
        set_rate: true,
    });
}

#[test]
fn workers_on_the_old_table_while_a_merging_reshape_runs() {
    run(Run {
        to: shape(40_000, 24),
        stepped: false,
        new_table_worker: false,
        set_rate: false,
    });
}

#[test]
fn workers_on_both_tables_meet_every_phase_of_a_move() {
    run(Run {
        to: shape(30_000, 32),
        stepped: true,
        new_table_worker: true,
        set_rate: true,
    });
}

#[test]
fn workers_on_both_tables_meet_every_phase_of_a_merging_move() {
    run(Run {
        to: shape(40_000, 24),
        stepped: true,
        new_table_worker: true,
        set_rate: false,
    });
}
