//! The flow table: focused cases for each promise, then a deterministic simulation of
//! thousands of seeded event sequences checked step by step against the model (`model.rs`).
#![cfg(test)] // test code only: unwraps here fail a test, never a running tollgate

use std::net::SocketAddr;
use std::num::NonZeroU32;

use super::model::{self, Summary};
use super::*;
use crate::balance::mix;

const IDLE: u64 = 100;

fn table(max_sessions: usize) -> FlowTable<u8, &'static str> {
    FlowTable::new(Limits {
        idle: IDLE,
        max_sessions,
    })
}

fn key(client: &str) -> FlowKey {
    FlowKey {
        client: client.parse().unwrap(),
        local: "192.0.2.1:53".parse::<SocketAddr>().unwrap(),
    }
}

fn up(_: &u8) -> bool {
    true
}

fn expired(t: &mut FlowTable<u8, &'static str>, now: u64) -> Vec<&'static str> {
    std::iter::from_fn(|| t.pop_expired(now).map(|(_, s)| s.handle)).collect()
}

#[test]
fn a_session_ends_after_idle_and_not_before() {
    let mut t = table(8);
    t.insert(key("10.0.0.1:1000"), 0, "a", None, 0).unwrap();
    assert_eq!(t.next_deadline(), Some(IDLE));
    assert!(expired(&mut t, IDLE - 1).is_empty());
    assert_eq!(expired(&mut t, IDLE), ["a"]);
    assert!(t.is_empty());
    assert_eq!(t.next_deadline(), None);
}

#[test]
fn a_refreshed_session_is_never_expired_by_a_stale_deadline() {
    let mut t = table(8);
    let k = key("10.0.0.1:1000");
    let id = t.insert(k, 0, "a", None, 0).unwrap();
    // A datagram at 90 and a reply at 150: the entry filed for 100 is stale twice over.
    assert!(matches!(t.lookup(&k, 90, up), Lookup::Live(i, _) if i == id));
    assert!(expired(&mut t, 100).is_empty(), "refreshed at 90");
    assert!(matches!(t.reply(id, 150), Reply::Forward(_)));
    assert!(expired(&mut t, 249).is_empty(), "refreshed at 150");
    assert_eq!(expired(&mut t, 250), ["a"]);
}

#[test]
fn an_ended_sessions_deadline_does_not_end_its_successor() {
    let mut t = table(8);
    let k = key("10.0.0.1:1000");
    let old = t.insert(k, 0, "old", None, 0).unwrap();
    assert_eq!(t.remove(old).map(|s| s.handle), Some("old"));
    // Same key, same slot, later: the entry filed for 100 belongs to the ended session.
    let new = t.insert(k, 1, "new", None, 50).unwrap();
    assert_ne!(old, new);
    assert!(expired(&mut t, 100).is_empty());
    assert!(t.get(old).is_none() && matches!(t.reply(old, 120), Reply::Gone));
    assert_eq!(expired(&mut t, 150), ["new"]);
}

#[test]
fn responses_one_ends_the_session_at_its_first_reply() {
    let mut t = table(8);
    let one = NonZeroU32::new(1);
    let id = t.insert(key("10.0.0.1:1000"), 0, "dns", one, 0).unwrap();
    match t.reply(id, 5) {
        Reply::Last(s) => assert_eq!((s.handle, s.replies()), ("dns", 1)),
        other => panic!("{other:?}"),
    }
    assert!(t.is_empty());
    assert!(
        matches!(t.reply(id, 6), Reply::Gone),
        "a second reply is dropped"
    );
    let two = t.insert(key("10.0.0.1:1001"), 0, "two", NonZeroU32::new(2), 0);
    let two = two.unwrap();
    assert!(matches!(t.reply(two, 1), Reply::Forward(s) if s.replies() == 1));
    assert!(matches!(t.reply(two, 2), Reply::Last(_)));
}

/// `responses` counts per client datagram: two queries in flight from one port (a resolver
/// asking A and AAAA at once) both get their answer before the session ends.
#[test]
fn responses_count_per_client_datagram() {
    let mut t = table(8);
    let k = key("10.0.0.1:1000");
    let id = t.insert(k, 0, "dns", NonZeroU32::new(1), 0).unwrap();
    assert!(matches!(t.lookup(&k, 1, |_| true), Lookup::Live(same, _) if same == id));
    assert!(
        matches!(t.reply(id, 2), Reply::Forward(s) if (s.requests(), s.replies()) == (2, 1)),
        "the first answer of two leaves the session open"
    );
    assert!(matches!(t.reply(id, 3), Reply::Last(s) if s.replies() == 2));
    assert!(t.is_empty());
}

#[test]
fn a_down_backends_session_is_repicked_and_keeps_its_key() {
    let mut t = table(8);
    let k = key("10.0.0.1:1000");
    let id = t.insert(k, 1, "on 1", None, 0).unwrap();
    assert!(matches!(t.reply(id, 10), Reply::Forward(_)));
    let down = |b: &u8| *b != 1;
    let Lookup::Moved(moved) = t.lookup(&k, 20, down) else {
        panic!("backend 1 is down");
    };
    assert_eq!(moved, id);
    assert_eq!(t.repick(id, 2, "on 2"), Ok((1, "on 1")));
    match t.lookup(&k, 30, down) {
        Lookup::Live(i, s) => {
            assert_eq!((i, s.key(), s.backend, s.handle), (id, k, 2, "on 2"));
            assert_eq!((s.created(), s.replies(), s.last_active()), (0, 1, 30));
        }
        other => panic!("{other:?}"),
    }
    t.remove(id);
    assert_eq!(t.repick(id, 3, "late"), Err((3, "late")));
}

#[test]
fn max_sessions_refuses_new_sessions_and_never_old_ones() {
    let mut t = table(2);
    let (a, b, c) = (key("10.0.0.1:1"), key("10.0.0.1:2"), key("10.0.0.1:3"));
    t.insert(a, 0, "a", None, 0).unwrap();
    t.insert(b, 0, "b", None, 0).unwrap();
    assert!(matches!(
        t.lookup(&c, 1, up),
        Lookup::Refused(Refusal::MaxSessions)
    ));
    assert_eq!(Refusal::MaxSessions.label(), "max_sessions");
    let refused = t.insert(c, 0, "c", None, 1).unwrap_err();
    assert_eq!(refused.why, InsertError::Refused(Refusal::MaxSessions));
    assert_eq!(
        refused.handle, "c",
        "what was given comes back to be closed"
    );
    assert!(matches!(t.lookup(&a, 1, up), Lookup::Live(..)));
    let dup = t.insert(a, 0, "a2", None, 1).unwrap_err();
    assert!(matches!(dup.why, InsertError::Exists(_)));
    // A lower cap keeps who is there; room comes back as they leave.
    t.set_limits(Limits {
        idle: IDLE,
        max_sessions: 1,
    });
    assert_eq!(t.len(), 2);
    assert_eq!(expired(&mut t, IDLE), ["b"]);
    assert!(matches!(t.lookup(&c, IDLE, up), Lookup::Refused(_)));
    assert_eq!(expired(&mut t, IDLE + 1), ["a"]);
    assert!(matches!(t.lookup(&c, IDLE + 1, up), Lookup::New));
}

#[test]
fn a_shorter_idle_applies_to_sessions_already_there() {
    let mut t = table(8);
    t.insert(key("10.0.0.1:1"), 0, "a", None, 0).unwrap();
    t.set_limits(Limits {
        idle: 10,
        max_sessions: 8,
    });
    assert_eq!(expired(&mut t, 10), ["a"]);
}

#[test]
fn a_clock_read_late_never_moves_a_deadline_back() {
    let mut t = table(8);
    let k = key("10.0.0.1:1");
    t.insert(k, 0, "a", None, 50).unwrap();
    assert!(matches!(t.lookup(&k, 40, up), Lookup::Live(_, s) if s.last_active() == 50));
    assert!(expired(&mut t, 149).is_empty());
    assert_eq!(expired(&mut t, 150), ["a"]);
}

#[test]
fn retain_hands_back_what_a_reload_removed() {
    let mut t = table(8);
    for (i, b) in [0u8, 1, 0, 2].into_iter().enumerate() {
        let k = key(&format!("10.0.0.1:{}", 1000 + i));
        t.insert(k, b, ["a", "b", "c", "d"][i], None, 0).unwrap();
    }
    let gone: Vec<_> = t
        .retain(|_, s| s.backend != 0)
        .into_iter()
        .map(|(_, s)| s.handle)
        .collect();
    assert_eq!(gone, ["a", "c"]);
    let kept: Vec<_> = t.iter().map(|(_, s)| s.handle).collect();
    assert_eq!(kept, ["b", "d"]);
}

/// A DNS-like load (every session ends at its reply) keeps the deadline heap bounded, and
/// expiry pops no more than it must.
#[test]
fn churn_keeps_memory_bounded() {
    let mut t: FlowTable<u8, u32> = FlowTable::new(Limits {
        idle: 30_000,
        max_sessions: 100,
    });
    for i in 0..100_000u32 {
        let k = FlowKey {
            client: SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 53)),
            local: "192.0.2.1:53".parse().unwrap(),
        };
        let id = t.insert(k, 0, i, NonZeroU32::new(1), u64::from(i)).unwrap();
        assert!(matches!(t.reply(id, u64::from(i)), Reply::Last(_)));
        assert!(t.deadlines_on_file() <= 2 * t.len() + 64);
    }
    assert!(t.is_empty());
    assert_eq!(t.pop_expired(u64::MAX).map(|(_, s)| s.handle), None);
}

/// Pseudo-random bytes for the model's driver.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| mix(seed << 20 | i) as u8).collect()
}

#[test]
fn deterministic_simulation_agrees_with_the_model() {
    let mut total = Summary::default();
    for seed in 0..3000 {
        let data = bytes(seed, 600);
        let run = std::panic::catch_unwind(|| model::check(&data));
        match run {
            Ok(summary) => total += summary,
            Err(_) => panic!("seed {seed} diverged; replay with model::check(&bytes({seed}, 600))"),
        }
    }
    // Every outcome was reached, many times.
    let reached = [
        ("inserted", total.inserted),
        ("live", total.live),
        ("refused", total.refused),
        ("moved", total.moved),
        ("no_backend", total.no_backend),
        ("expired", total.expired),
        ("forwarded", total.forwarded),
        ("last_replies", total.last_replies),
        ("stale_ids", total.stale_ids),
        ("removed", total.removed),
        ("retained_out", total.retained_out),
        ("exists", total.exists),
    ];
    for (what, n) in reached {
        assert!(n >= 100, "{what} reached only {n} times: {total:?}");
    }
    assert!(total.steps > 500_000, "{total:?}");
}
