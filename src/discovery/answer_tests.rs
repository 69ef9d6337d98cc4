//! The DNS policy on a hand-moved clock: TTLs clamped, failures keeping the last answer with
//! a bounded back-off, negative answers removing hosts only after the hold, SRV priorities
//! and weights.
#![cfg(test)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::answer::*;

pub(super) const T: Timing = Timing {
    min_ttl: Duration::from_secs(1),
    max_ttl: Duration::from_secs(300),
    negative_hold: Duration::from_secs(30),
};

pub(super) fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

pub(super) fn host(a: Reply<IpAddr>, aaaa: Reply<IpAddr>) -> Round {
    Round {
        srv: None,
        addresses: vec![("app.test".to_owned(), a, aaaa)],
    }
}

pub(super) fn addrs(s: &NameState) -> Vec<SocketAddr> {
    s.resolved.iter().map(|r| r.address).collect()
}

pub(super) fn sock(last: u8, port: u16) -> SocketAddr {
    SocketAddr::new(ip(last), port)
}

/// A state holding 10.0.0.1:80 (TTL 5) from a round at the returned instant.
fn seeded() -> (NameState, Instant) {
    let (mut s, t0) = (NameState::default(), Instant::now());
    s.apply(
        host(Reply::Records(5, vec![ip(1)]), Reply::NoData),
        80,
        t0,
        T,
    );
    (s, t0)
}

#[test]
fn records_are_used_and_asked_again_after_their_ttl_clamped() {
    let (mut s, t0) = (NameState::default(), Instant::now());
    let d = s.apply(
        host(Reply::Records(7, vec![ip(1), ip(2)]), Reply::NoData),
        80,
        t0,
        T,
    );
    assert_eq!(d, Duration::from_secs(7));
    assert_eq!(addrs(&s), vec![sock(1, 80), sock(2, 80)]);
    assert_eq!((s.last_result, s.ttl), ("success", Some(7)));
    let d = s.apply(
        host(Reply::Records(0, vec![ip(3)]), Reply::NoData),
        80,
        t0,
        T,
    );
    assert_eq!(d, T.min_ttl, "TTL 0 is raised to min_ttl");
    assert_eq!(
        addrs(&s),
        vec![sock(3, 80)],
        "a changed answer replaces the old one"
    );
    let d = s.apply(
        host(Reply::Records(86_400, vec![ip(3)]), Reply::NoData),
        80,
        t0,
        T,
    );
    assert_eq!(d, T.max_ttl, "a long TTL is cut to max_ttl");
}

#[test]
fn the_smallest_ttl_of_a_and_aaaa_decides() {
    let mut s = NameState::default();
    let v6: IpAddr = "2001:db8::1".parse().unwrap();
    let d = s.apply(
        host(
            Reply::Records(60, vec![ip(1)]),
            Reply::Records(20, vec![v6]),
        ),
        9,
        Instant::now(),
        T,
    );
    assert_eq!(d, Duration::from_secs(20));
    assert_eq!(s.resolved.len(), 2);
}

#[test]
fn failures_keep_the_last_answer_and_back_off_within_bounds() {
    let (mut s, t0) = seeded();
    let mut delays = Vec::new();
    for f in [
        Failure::Timeout,
        Failure::ServFail,
        Failure::Refused,
        Failure::Timeout,
        Failure::Timeout,
        Failure::Timeout,
        Failure::Timeout,
    ] {
        let d = s.apply(host(Reply::Failed(f.clone()), Reply::Failed(f)), 80, t0, T);
        assert_eq!(addrs(&s), vec![sock(1, 80)], "the last good answer stays");
        delays.push(d.as_secs());
    }
    assert_eq!(
        delays,
        vec![1, 2, 4, 8, 16, 30, 30],
        "doubling from min_ttl, at most 30 s"
    );
    assert_eq!(s.last_result, "timeout");
    assert!(s.last_error.is_some());
    let d = s.apply(
        host(Reply::Records(5, vec![ip(2)]), Reply::NoData),
        80,
        t0,
        T,
    );
    assert_eq!(
        (d.as_secs(), s.last_result),
        (5, "success"),
        "recovery resets the back-off"
    );
    assert_eq!(s.last_error, None);
}

#[test]
fn one_family_failing_keeps_its_own_records() {
    let (mut s, t0) = (NameState::default(), Instant::now());
    let v6: IpAddr = "2001:db8::1".parse().unwrap();
    s.apply(
        host(Reply::Records(5, vec![ip(1)]), Reply::Records(5, vec![v6])),
        80,
        t0,
        T,
    );
    s.apply(
        host(
            Reply::Records(5, vec![ip(2)]),
            Reply::Failed(Failure::ServFail),
        ),
        80,
        t0,
        T,
    );
    assert_eq!(addrs(&s), vec![sock(2, 80), SocketAddr::new(v6, 80)]);
    assert_eq!(s.last_result, "servfail");
}

#[test]
fn nxdomain_removes_hosts_only_after_the_hold() {
    let (mut s, t0) = seeded();
    let d = s.apply(
        host(Reply::NxDomain, Reply::NxDomain),
        80,
        t0 + Duration::from_secs(5),
        T,
    );
    assert_eq!(addrs(&s), vec![sock(1, 80)], "held");
    assert_eq!(s.last_result, "nxdomain");
    assert_eq!(d, Duration::from_secs(1));
    let at = t0 + Duration::from_secs(34);
    let d = s.apply(host(Reply::NxDomain, Reply::NxDomain), 80, at, T);
    assert_eq!(
        addrs(&s),
        vec![sock(1, 80)],
        "29 s into the hold: still held"
    );
    assert_eq!(
        d,
        Duration::from_secs(1),
        "asked again when the hold runs out"
    );
    s.apply(
        host(Reply::NxDomain, Reply::NxDomain),
        80,
        t0 + Duration::from_secs(35),
        T,
    );
    assert!(s.resolved.is_empty(), "removed once the hold has passed");
    assert!(s.has_answer(), "it did answer once");
}

#[test]
fn a_negative_answer_that_clears_up_within_the_hold_removes_nothing() {
    let (mut s, t0) = seeded();
    s.apply(
        host(Reply::NoData, Reply::NoData),
        80,
        t0 + Duration::from_secs(20),
        T,
    );
    assert_eq!(s.last_result, "empty");
    s.apply(
        host(Reply::Records(5, vec![ip(1)]), Reply::NoData),
        80,
        t0 + Duration::from_secs(25),
        T,
    );
    // A new negative spell starts its own hold.
    s.apply(
        host(Reply::NxDomain, Reply::NxDomain),
        80,
        t0 + Duration::from_secs(40),
        T,
    );
    assert_eq!(addrs(&s), vec![sock(1, 80)]);
    let hold0 = Timing {
        negative_hold: Duration::ZERO,
        ..T
    };
    s.apply(
        host(Reply::NxDomain, Reply::NxDomain),
        80,
        t0 + Duration::from_secs(41),
        hold0,
    );
    assert!(s.resolved.is_empty(), "a zero hold removes at once");
}

#[test]
fn no_answer_yet_means_nothing_in_force() {
    let mut s = NameState::default();
    s.apply(
        host(
            Reply::Failed(Failure::Timeout),
            Reply::Failed(Failure::Timeout),
        ),
        80,
        Instant::now(),
        T,
    );
    assert!(!s.has_answer());
    assert!(s.resolved.is_empty());
}

#[test]
fn a_family_that_keeps_failing_does_not_stop_the_other_following_its_ttl() {
    let (mut s, t0) = (NameState::default(), Instant::now());
    for _ in 0..8 {
        let d = s.apply(
            host(
                Reply::Records(5, vec![ip(1)]),
                Reply::Failed(Failure::Timeout),
            ),
            80,
            t0,
            T,
        );
        assert!(d <= Duration::from_secs(5), "{d:?}");
    }
    assert_eq!(s.last_result, "timeout");
}

#[test]
fn the_same_name_on_another_port_keeps_its_addresses() {
    let mut s = NameState::default();
    s.apply(
        host(Reply::Records(5, vec![ip(1)]), Reply::NoData),
        80,
        Instant::now(),
        T,
    );
    assert_eq!(addrs(&s.with_port(81)), vec![sock(1, 81)]);
}

#[test]
fn a_hold_shorter_than_min_ttl_never_asks_sooner_than_min_ttl() {
    let (mut s, t0) = (NameState::default(), Instant::now());
    let short = Timing {
        negative_hold: Duration::from_millis(100),
        ..T
    };
    s.apply(
        host(Reply::Records(5, vec![ip(1)]), Reply::NoData),
        80,
        t0,
        short,
    );
    let d = s.apply(
        host(Reply::NxDomain, Reply::NxDomain),
        80,
        t0 + Duration::from_secs(5),
        short,
    );
    assert_eq!(addrs(&s), vec![sock(1, 80)], "held for now");
    assert!(d >= T.min_ttl, "{d:?}");
}

#[test]
fn failures_after_a_hold_ran_out_still_back_off() {
    let (mut s, t0) = seeded();
    s.apply(
        host(Reply::NxDomain, Reply::NxDomain),
        80,
        t0 + Duration::from_secs(1),
        T,
    );
    let mut at = t0 + Duration::from_secs(2);
    let mut delays = Vec::new();
    for _ in 0..8 {
        at += Duration::from_secs(40);
        let f = Reply::Failed(Failure::ServFail);
        delays.push(s.apply(host(f.clone(), f), 80, at, T).as_secs());
    }
    assert_eq!(
        delays,
        vec![2, 4, 8, 16, 30, 30, 30, 30],
        "the expired hold does not pin the delay"
    );
    assert_eq!(addrs(&s), vec![sock(1, 80)], "SERVFAIL never removes");
}
