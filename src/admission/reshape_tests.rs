//! Limiter state across reloads: new rates, new sizes, new prefixes, on a hand-moved clock.
#![cfg(test)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::admission::{PerSource, Policy, PrefixSet, Rate, Reason};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn shape(max_tracked: usize, ipv4_prefix: u8) -> Shape {
    Shape {
        ipv4_prefix,
        ipv6_prefix: 64,
        max_tracked,
    }
}

fn policy(table: &Arc<SourceTable>, rate: Option<Rate>, max: Option<u32>) -> Policy {
    table.set_rate(table.epoch(), rate);
    Policy {
        per_source: Some(PerSource {
            rate,
            max_connections: max,
            exempt: PrefixSet::default(),
            table: table.clone(),
        }),
        ..Policy::default()
    }
}

fn per_hour(n: u64, burst: u32) -> Option<Rate> {
    Some(Rate::new(n, Duration::from_secs(3600), burst))
}

#[test]
fn a_new_rate_caps_what_sources_owe() {
    let t = Arc::new(SourceTable::new(shape(1000, 32), None));
    let t0 = t.epoch();
    let slow = policy(&t, per_hour(1, 10), None);
    for _ in 0..11 {
        slow.admit_at(ip("10.0.0.1"), t0).unwrap();
    }
    assert!(slow.admit_at(ip("10.0.0.1"), t0).is_err(), "owes 11 hours");
    let fast = policy(&t, Some(Rate::new(100, Duration::from_secs(1), 0)), None);
    assert!(
        fast.admit_at(ip("10.0.0.1"), t0).is_err(),
        "no token at once"
    );
    assert!(
        fast.admit_at(ip("10.0.0.1"), t0 + Duration::from_millis(10))
            .is_ok(),
        "one interval of the new rate later"
    );
}

#[test]
fn a_new_size_carries_open_connections_and_debts() {
    let old = Arc::new(SourceTable::new(shape(1000, 32), None));
    let t0 = old.epoch();
    let rate = per_hour(1, 4);
    let before = policy(&old, rate, Some(2));
    let held = [
        before.admit_at(ip("10.0.0.1"), t0).unwrap(),
        before.admit_at(ip("10.0.0.1"), t0).unwrap(),
    ];
    for _ in 0..5 {
        drop(before.admit_at(ip("10.0.0.2"), t0).unwrap());
    }
    let (new, carried) = old.reshape(shape(2_000_000, 32), t0);
    assert_eq!((carried.kept, carried.split, carried.no_room), (2, 0, 0));
    let after = policy(&new, rate, Some(2));
    let refused = |p: &Policy, a: &str| p.admit_at(ip(a), t0).unwrap_err().reason;
    assert_eq!(refused(&after, "10.0.0.1"), Reason::SourceLimit);
    assert_eq!(refused(&after, "10.0.0.2"), Reason::RateLimit);
    // A worker still on the old snapshot lands in the new table too.
    assert_eq!(refused(&before, "10.0.0.1"), Reason::SourceLimit);
    assert_eq!(old.tracked(), 2, "the old table forwards");
    // Tickets from before the move release there.
    drop(held);
    assert_eq!(new.peek(ip("10.0.0.1"), t0).0.unwrap().open, 0);
    assert!(after.admit_at(ip("10.0.0.1"), t0).is_ok());
}

#[test]
fn a_coarser_prefix_merges_groups_and_a_finer_one_starts_afresh() {
    let old = Arc::new(SourceTable::new(shape(1000, 32), None));
    let t0 = old.epoch();
    let before = policy(&old, None, Some(2));
    let a = before.admit_at(ip("10.0.0.1"), t0).unwrap();
    let b = before.admit_at(ip("10.0.0.2"), t0).unwrap();
    let (coarse, carried) = old.reshape(shape(1000, 24), t0);
    assert_eq!(carried.kept, 2);
    let p24 = policy(&coarse, None, Some(2));
    assert_eq!(
        coarse.peek(ip("10.0.0.77"), t0).0.unwrap().open,
        2,
        "merged"
    );
    assert!(p24.admit_at(ip("10.0.0.3"), t0).is_err());
    drop(a);
    let c = p24.admit_at(ip("10.0.0.3"), t0).unwrap();
    // Back to /32: the /24's count cannot be split; old tickets then release nothing.
    let (fine, carried) = coarse.reshape(shape(1000, 32), t0);
    assert_eq!((carried.kept, carried.split), (0, 1));
    let p32 = policy(&fine, None, Some(2));
    let d = p32.admit_at(ip("10.0.0.2"), t0).unwrap();
    drop((b, c));
    assert_eq!(
        fine.peek(ip("10.0.0.2"), t0).0.unwrap().open,
        1,
        "older tickets release nothing in the split group"
    );
    assert!(fine.peek(ip("10.0.0.3"), t0).0.is_none());
    drop(d);
    assert!(p32.admit_at(ip("10.0.0.2"), t0).is_ok());
}

#[test]
fn a_smaller_table_keeps_the_limited_sources_it_can() {
    let old = Arc::new(SourceTable::new(shape(100, 32), None));
    let t0 = old.epoch();
    let rate = per_hour(1, 0);
    let p = policy(&old, rate, None);
    for i in 0..50u8 {
        drop(p.admit_at(IpAddr::from([10, 0, 0, i]), t0).unwrap());
    }
    let (small, carried) = old.reshape(shape(10, 32), t0);
    assert_eq!((carried.kept, carried.no_room), (10, 40));
    assert!(small.tracked() <= 10);
}

#[test]
fn a_rate_removed_and_added_back_carries_from_the_last_one() {
    let t = Arc::new(SourceTable::new(shape(1000, 32), None));
    let t0 = t.epoch();
    let hourly = policy(&t, per_hour(1, 0), None);
    hourly.admit_at(ip("10.0.0.1"), t0).unwrap();
    let none = policy(&t, None, None);
    assert!(
        none.admit_at(ip("10.0.0.1"), t0).is_ok(),
        "no rate, no limit"
    );
    let fast = policy(&t, Some(Rate::new(100, Duration::from_secs(1), 0)), None);
    assert!(
        fast.admit_at(ip("10.0.0.1"), t0 + Duration::from_millis(10))
            .is_ok(),
        "the hour owed was carried into 100/s terms, not kept as an hour"
    );
}

#[test]
fn a_stale_snapshot_admits_under_the_rate_in_force() {
    let t = Arc::new(SourceTable::new(shape(1000, 32), None));
    let t0 = t.epoch();
    let old = policy(&t, Some(Rate::new(1, Duration::from_secs(60), 0)), None);
    // The reload puts 100/s in force; a worker still holds the old policy.
    let _new = policy(&t, Some(Rate::new(100, Duration::from_secs(1), 0)), None);
    old.admit_at(ip("10.0.0.1"), t0).unwrap();
    assert!(
        old.admit_at(ip("10.0.0.1"), t0 + Duration::from_millis(10))
            .is_ok(),
        "the shard's rate decides, not the stale snapshot's"
    );
}

#[test]
fn sources_with_open_connections_always_move_even_past_a_shard_share() {
    let old = Arc::new(SourceTable::new(shape(16_384, 32), None));
    let t0 = old.epoch();
    let p = policy(&old, per_hour(1, 0), Some(1));
    let held: Vec<_> = (0..3000u32)
        .map(|i| {
            p.admit_at(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), t0)
                .unwrap()
        })
        .collect();
    let (small, carried) = old.reshape(shape(1000, 32), t0);
    assert_eq!(carried.kept, 3000, "{carried:?}");
    let after = policy(&small, per_hour(1, 0), Some(1));
    for i in (0..3000u32).step_by(97) {
        let ip = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
        assert_eq!(
            after.admit_at(ip, t0).unwrap_err().reason,
            Reason::SourceLimit
        );
    }
    drop(held);
}
