//! A reshape in progress, stepped by hand (`Move::step`, one batch each): where every
//! operation on the old table lands in each phase of the move, that a rate put in force
//! halfway converts every debt exactly once, what `peek`, `has_room`, `tracked` and
//! `memory` say meanwhile, and stale handles across a chain of moves. The count check
//! (`home`, `check_counts`) is shared with `move_model_tests.rs`.
#![cfg(test)]

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::reshape::{Move, rekey};
use super::shard::{Entry, Key, Outcome};
use super::sources::lock;
use super::*;

pub(super) fn shape(max_tracked: usize, ipv4_prefix: u8) -> Shape {
    Shape {
        ipv4_prefix,
        ipv6_prefix: 64,
        max_tracked,
    }
}

pub(super) fn v4(n: u32) -> IpAddr {
    IpAddr::from(n.to_be_bytes())
}

pub(super) fn per_hour(n: u64, burst: u32) -> Option<Rate> {
    Some(Rate::new(n, Duration::from_secs(3600), burst))
}

/// Where the count of a ticket's connection is now, found by the rule the tables follow:
/// the entry of its key if the table holds it, else (the shard has started moving) the
/// group it maps to in the table the state moved to, hop by hop.
#[derive(Debug)]
pub(super) enum Home {
    Entry(Arc<SourceTable>, Key),
    /// A finer prefix split its group: the count started afresh without it.
    Split,
    /// Neither held nor forwarded: the count is gone (a bug).
    Lost,
}

pub(super) fn home(ticket: &Ticket) -> Home {
    let (table, key) = ticket.issued();
    let (mut table, mut key) = (table.clone(), key);
    loop {
        let hash = table.hasher.hash_one(key);
        let (held, moving) = {
            let shard = lock(&table.shards[table.shard_index(hash)]);
            (shard.holds(hash, &key), shard.moving)
        };
        if held {
            return Home::Entry(table, key);
        }
        let Some(next) = table.moved.get().filter(|_| moving).cloned() else {
            return Home::Lost;
        };
        match rekey(key, table.shape, next.shape) {
            Some(k) => (table, key) = (next, k),
            None => return Home::Split,
        }
    }
}

pub(super) fn entries(t: &SourceTable) -> Vec<Entry> {
    (t.shards.iter())
        .flat_map(|s| lock(s).entries().to_vec())
        .collect()
}

/// Asserts that every entry of every table of `chain` has as open connections exactly the
/// live tickets whose count is there, and that no ticket's count was lost.
pub(super) fn check_counts<'a>(
    chain: &[Arc<SourceTable>],
    tickets: impl IntoIterator<Item = &'a Ticket>,
) {
    let mut want: HashMap<(*const SourceTable, Key), u32> = HashMap::new();
    for ticket in tickets {
        match home(ticket) {
            Home::Entry(t, key) => *want.entry((Arc::as_ptr(&t), key)).or_default() += 1,
            Home::Split => {}
            Home::Lost => panic!("the count of {:?} was lost", ticket.issued().1),
        }
    }
    for t in chain {
        for e in entries(t) {
            let live = want.remove(&(Arc::as_ptr(t), e.key)).unwrap_or(0);
            assert_eq!(e.open, live, "{:x?}: open vs live tickets", e.key);
        }
    }
    assert!(want.is_empty(), "tickets counted in no table of the chain");
}

fn shard_of(t: &SourceTable, ip: IpAddr) -> usize {
    t.shard_index(t.hasher.hash_one(t.key(ip)))
}

/// Whether `t` tracks `ip`'s group itself (not through the table it moves to).
pub(super) fn holds(t: &SourceTable, ip: IpAddr) -> bool {
    let key = t.key(ip);
    let hash = t.hasher.hash_one(key);
    lock(&t.shards[t.shard_index(hash)]).holds(hash, &key)
}

fn issued_by(ticket: &Ticket, t: &Arc<SourceTable>) -> bool {
    Arc::ptr_eq(ticket.issued().0, t)
}

/// The first two sources of 10.0.0.0/16 in shard 0 of `t` (where a move starts), and the
/// first two elsewhere.
fn in_shard_zero_and_not(t: &SourceTable) -> ([IpAddr; 2], [IpAddr; 2]) {
    let pick = |zero: bool| {
        let mut it = (0..65_536).map(|i| v4(0x0a00_0000 + i));
        let mut next = || it.find(|&ip| (shard_of(t, ip) == 0) == zero).unwrap();
        [next(), next()]
    };
    (pick(true), pick(false))
}

#[test]
fn each_operation_lands_where_its_entry_is_in_every_phase() {
    let old = Arc::new(SourceTable::new(shape(16_384, 32), per_hour(1, 10)));
    let (t0, max) = (old.epoch(), Some(2));
    let ([a, b], [c, d]) = in_shard_zero_and_not(&old);
    drop(old.admit(a, t0, max).unwrap()); // idle, owes an hour
    let c1 = old.admit(c, t0, max).unwrap();
    let mut m = Move::start(&old, shape(20_000, 32), t0);
    let new = m.to.clone();
    // No shard has started: everything is served here, new sources too.
    let d1 = old.admit(d, t0, max).unwrap();
    assert!(issued_by(&d1, &old) && holds(&old, d) && !holds(&new, d));
    // The first pass on shard 0: a is idle, so it waits for the second.
    assert!(m.step());
    assert!(holds(&old, a) && !holds(&new, a));
    // Shard 0 has started: a, still there, is served in place (and released there); b,
    // absent, in the new table, whose ticket it is.
    let a1 = old.admit(a, t0, max).unwrap();
    assert!(issued_by(&a1, &old) && !holds(&new, a));
    drop(a1);
    assert_eq!(old.peek(a, t0).0.unwrap().open, 0);
    let b1 = old.admit(b, t0, max).unwrap();
    assert!(issued_by(&b1, &new) && holds(&new, b) && !holds(&old, b));
    assert_eq!(
        old.peek(b, t0).0.unwrap().open,
        1,
        "peek follows the source"
    );
    // c's shard has not started: served in place, up to max.
    let c2 = old.admit(c, t0, max).unwrap();
    assert!(issued_by(&c2, &old));
    assert!(matches!(
        old.admit(c, t0, max),
        Err(Outcome::OverConnections { .. })
    ));
    let chain = [old.clone(), new.clone()];
    check_counts(&chain, [&b1, &c1, &c2, &d1]);
    // The rest of the first pass moves c and d (open); a (idle) stays for the second.
    for _ in 1..old.shard_count() {
        assert!(m.step());
    }
    assert!(holds(&new, c) && holds(&new, d) && !holds(&old, c) && holds(&old, a));
    check_counts(&chain, [&b1, &c1, &c2, &d1]);
    // A ticket of the old table releases in the new one; an admit goes there too.
    drop(c1);
    let c3 = old.admit(c, t0, max).unwrap();
    assert!(issued_by(&c3, &new));
    assert!(old.admit(c, t0, max).is_err(), "the carried count holds");
    while m.step() {}
    assert!(holds(&new, a) && entries(&old).is_empty());
    check_counts(&chain, [&b1, &c2, &c3, &d1]);
    assert_eq!(
        (m.carried.kept, m.carried.split, m.carried.no_room),
        (3, 0, 0)
    );
    drop((b1, c2, c3, d1));
    assert!(entries(&new).iter().all(|e| e.open == 0));
    assert!(
        old.admit(a, t0, max).is_ok(),
        "a carried its debt, within its burst"
    );
}

/// A debt of five connections at 1/h, converted to 2/h: two and a half hours (in ns).
const CONVERTED: u64 = 9_000 * 1_000_000_000;

fn a_rate_put_in_force_halfway_converts_every_debt_once(via_new: bool) {
    let old = Arc::new(SourceTable::new(shape(16_384, 32), per_hour(1, 4)));
    let t0 = old.epoch();
    let debtors: Vec<_> = (0..500).map(|i| v4(0x0a00_0000 + i)).collect();
    for &ip in &debtors {
        for _ in 0..5 {
            drop(old.admit(ip, t0, None).unwrap());
        }
        assert!(old.admit(ip, t0, None).is_err(), "owes five hours");
    }
    let mut m = Move::start(&old, shape(20_000, 32), t0);
    // The first pass (nothing open), then half of the second.
    for _ in 0..old.shard_count() * 3 / 2 {
        assert!(m.step());
    }
    let moved = debtors.iter().filter(|&&ip| holds(&m.to, ip)).count();
    assert!(0 < moved && moved < debtors.len(), "{moved} moved");
    let faster = per_hour(2, 20);
    let via = if via_new { m.to.clone() } else { old.clone() };
    via.set_rate(t0, faster);
    while m.step() {}
    for &ip in &debtors {
        assert_eq!(m.to.peek(ip, t0).0.unwrap().tat, CONVERTED, "{ip}");
    }
    for t in [&old, &m.to] {
        let rates = t.check_invariants()[0].rates;
        assert_eq!(rates, (faster, faster));
    }
}

#[test]
fn a_rate_put_in_force_halfway_through_the_old_table_reaches_both() {
    a_rate_put_in_force_halfway_converts_every_debt_once(false);
}

#[test]
fn a_rate_put_in_force_halfway_through_the_new_table_reaches_both() {
    a_rate_put_in_force_halfway_converts_every_debt_once(true);
}

#[test]
fn peek_has_room_tracked_and_memory_follow_the_move() {
    // Four shards, every one full of sources that owe an hour.
    let old = Arc::new(SourceTable::new(shape(1024, 32), per_hour(1, 0)));
    let t0 = old.epoch();
    for i in 0..8192 {
        drop(old.admit(v4(0x0a00_0000 + i), t0, None));
    }
    assert_eq!(old.tracked(), 1024);
    let mut m = Move::start(&old, shape(4096, 32), t0);
    assert!(m.step()); // shard 0 has started (nothing open: nothing moved)
    let fresh: Vec<_> = (0..256).map(|i| v4(0x0b00_0000 + i)).collect();
    let x = *fresh.iter().find(|&&ip| shard_of(&old, ip) == 0).unwrap();
    let y = *fresh.iter().find(|&&ip| shard_of(&old, ip) != 0).unwrap();
    // A new source of a started shard is judged by the new table (room), one of a shard
    // not started by the old one (full).
    assert!(old.has_room(x, t0) && !old.has_room(y, t0));
    assert_eq!(old.admit(y, t0, None).unwrap_err(), Outcome::Full);
    drop(old.admit(x, t0, None).unwrap());
    assert_eq!(old.peek(x, t0).0.unwrap().tat, 3_600_000_000_000);
    assert_eq!(old.tracked(), 1025, "both tables, each source once");
    while m.step() {}
    assert_eq!((old.tracked(), m.to.tracked()), (1025, 1025));
    assert_eq!(
        old.memory(),
        m.to.memory(),
        "the old table gave its storage back"
    );
    assert!(entries(&old).is_empty());
}

#[test]
fn stale_handles_work_across_a_chain_of_moves() {
    let a = Arc::new(SourceTable::new(shape(16_384, 32), per_hour(1, 100)));
    let (t0, max) = (a.epoch(), Some(3));
    let ip = |i: u32| v4(0x0a00_0000 + (i % 8) * 256 + i / 8);
    let mut held: Vec<_> = (0..64).map(|i| a.admit(ip(i), t0, max).unwrap()).collect();
    // A coarser prefix (done), then a smaller table (stepped).
    let (b, carried) = a.reshape(shape(16_384, 24), t0);
    assert_eq!(carried.kept, 64);
    let mut m = Move::start(&b, shape(8_192, 24), t0);
    let c = m.to.clone();
    let chain = [a.clone(), b.clone(), c.clone()];
    for round in 0.. {
        // Through every handle: an admit (refused once a /24 holds 3) and a release.
        for (n, h) in chain.iter().enumerate() {
            if let Ok(t) = h.admit(ip(round * 3 + n as u32), t0, max) {
                held.push(t);
            }
        }
        if !held.is_empty() {
            held.swap_remove(round as usize * 7 % held.len());
        }
        check_counts(&chain, &held);
        if !m.step() {
            break;
        }
    }
    assert!(entries(&a).is_empty() && entries(&b).is_empty());
    assert!(Arc::ptr_eq(&a.current(), &c));
    // A reshape through the oldest handle moves from where the state is: finer again.
    let (d, carried) = a.reshape(shape(8_192, 32), t0);
    assert_eq!(carried.split, 8, "{carried:?}");
    assert!(carried.longest_hold <= carried.took);
    check_counts(&[a.clone(), b, c, d.clone()], &held);
    drop(held);
    assert!(entries(&d).iter().all(|e| e.open == 0));
}
