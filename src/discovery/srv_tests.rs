//! SRV entries on a hand-moved clock: priorities as ranks, record weights scaled and shared
//! among a target's addresses, targets kept through failures, rotated answers changing
//! nothing, and the SRV question deciding the result.
#![cfg(test)]

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::addresses::srv_weight;
use super::answer::*;
use super::answer_tests::{T, addrs, ip, sock};

fn srv(priority: u16, weight: u16, port: u16, target: &str) -> Srv {
    Srv {
        priority,
        weight,
        port,
        target: target.to_owned(),
    }
}

#[test]
fn srv_priorities_rank_and_weights_carry_over() {
    let mut s = NameState::default();
    let round = Round {
        srv: Some(Reply::Records(
            30,
            vec![
                srv(20, 5, 9002, "b.test"),
                srv(10, 60, 9001, "a.test"),
                srv(10, 0, 9003, "c.test"),
            ],
        )),
        addresses: vec![
            (
                "a.test".to_owned(),
                Reply::Records(10, vec![ip(1)]),
                Reply::NoData,
            ),
            (
                "b.test".to_owned(),
                Reply::Records(10, vec![ip(2)]),
                Reply::NoData,
            ),
            (
                "c.test".to_owned(),
                Reply::Records(10, vec![ip(3)]),
                Reply::NoData,
            ),
        ],
    };
    let d = s.apply(round, 0, Instant::now(), T);
    assert_eq!(d, Duration::from_secs(10), "the targets' TTL is smaller");
    let got: Vec<_> = s
        .resolved
        .iter()
        .map(|r| (r.address, r.weight, r.rank))
        .collect();
    assert_eq!(
        got,
        vec![
            (sock(1, 9001), Some(1000), 0),
            (sock(3, 9003), Some(1), 0),
            (sock(2, 9002), Some(1000), 1),
        ]
    );
    assert_eq!(
        s.srv_targets(),
        vec!["a.test", "c.test", "b.test"],
        "lowest priority first"
    );
}

#[test]
fn a_failing_srv_question_keeps_its_targets() {
    let (mut s, t0) = (NameState::default(), Instant::now());
    let round = Round {
        srv: Some(Reply::Records(30, vec![srv(1, 1, 7000, "a.test")])),
        addresses: vec![(
            "a.test".to_owned(),
            Reply::Records(30, vec![ip(1)]),
            Reply::NoData,
        )],
    };
    s.apply(round, 0, t0, T);
    let round = Round {
        srv: Some(Reply::Failed(Failure::ServFail)),
        addresses: vec![(
            "a.test".to_owned(),
            Reply::Records(30, vec![ip(9)]),
            Reply::NoData,
        )],
    };
    s.apply(round, 0, t0, T);
    assert_eq!(
        addrs(&s),
        vec![sock(9, 7000)],
        "held SRV, fresh target address"
    );
    assert_eq!(s.last_result, "servfail");
}

#[test]
fn srv_weights_are_scaled_so_the_largest_is_1000() {
    assert_eq!(srv_weight(0, 0), 1000, "all zero: equal");
    assert_eq!(srv_weight(0, 10), 1, "zero: a very small chance");
    assert_eq!(srv_weight(10, 10), 1000);
    assert_eq!(srv_weight(1, 3), 333);
    assert_eq!(srv_weight(65535, 65535), 1000);
    assert_eq!(srv_weight(6553, 65535), 100);
    assert_eq!(srv_weight(1, 65535), 1);
}

fn srv_round(records: Vec<Srv>, targets: Vec<(&str, Reply<IpAddr>)>) -> Round {
    Round {
        srv: Some(Reply::Records(30, records)),
        addresses: targets
            .into_iter()
            .map(|(n, a)| (n.to_owned(), a, Reply::NoData))
            .collect(),
    }
}

#[test]
fn a_record_weight_is_shared_among_its_targets_addresses() {
    let mut s = NameState::default();
    let round = srv_round(
        vec![srv(1, 10, 80, "three.test"), srv(1, 10, 81, "one.test")],
        vec![
            ("three.test", Reply::Records(30, vec![ip(1), ip(2), ip(3)])),
            ("one.test", Reply::Records(30, vec![ip(4)])),
        ],
    );
    s.apply(round, 0, Instant::now(), T);
    let weights: Vec<_> = s.resolved.iter().map(|r| (r.address, r.weight)).collect();
    assert_eq!(
        weights,
        vec![
            (sock(4, 81), Some(1000)),
            (sock(1, 80), Some(333)),
            (sock(2, 80), Some(333)),
            (sock(3, 80), Some(333))
        ],
        "each target's share follows its record, 1:1"
    );
}

#[test]
fn new_srv_targets_that_fail_to_resolve_leave_the_old_ones_in_force() {
    let (mut s, t0) = (NameState::default(), Instant::now());
    s.apply(
        srv_round(
            vec![srv(1, 1, 80, "old.test")],
            vec![("old.test", Reply::Records(30, vec![ip(1)]))],
        ),
        0,
        t0,
        T,
    );
    let switched = srv_round(
        vec![srv(1, 1, 80, "new.test")],
        vec![("new.test", Reply::Failed(Failure::Timeout))],
    );
    s.apply(switched, 0, t0, T);
    assert_eq!(
        addrs(&s),
        vec![sock(1, 80)],
        "a timeout keeps the last good answer"
    );
    assert_eq!(s.last_result, "timeout");
    let resolved = srv_round(
        vec![srv(1, 1, 80, "new.test")],
        vec![("new.test", Reply::Records(30, vec![ip(2)]))],
    );
    s.apply(resolved, 0, t0, T);
    assert_eq!(
        addrs(&s),
        vec![sock(2, 80)],
        "switched once the new target resolves"
    );
    assert_eq!(s.srv_targets(), vec!["new.test"]);
}

#[test]
fn rotated_records_change_nothing_and_odd_ones_are_left_out() {
    let mut s = NameState::default();
    let t0 = Instant::now();
    let mapped: IpAddr = "::ffff:10.0.0.9".parse().unwrap();
    let round = |order: Vec<IpAddr>| {
        srv_round(
            vec![srv(1, 1, 80, "a.test"), srv(1, 1, 0, "a.test")],
            vec![("a.test", Reply::Records(30, order))],
        )
    };
    s.apply(round(vec![ip(1), ip(2), mapped]), 0, t0, T);
    let first = s.resolved.clone();
    s.apply(round(vec![mapped, ip(2), ip(1)]), 0, t0, T);
    assert_eq!(s.resolved, first, "the same set in another order");
    assert_eq!(
        addrs(&s),
        vec![sock(1, 80), sock(2, 80), sock(9, 80)],
        "port 0 dropped, mapped as IPv4"
    );
}

#[test]
fn a_negative_srv_question_is_the_result_and_the_age_is_the_oldest_answer_in_force() {
    let t0 = Instant::now();
    let mut s = NameState::default();
    s.apply(
        srv_round(
            vec![srv(1, 1, 80, "a.test")],
            vec![("a.test", Reply::Records(30, vec![ip(1)]))],
        ),
        0,
        t0,
        T,
    );
    let later = t0 + Duration::from_secs(3);
    let round = Round {
        srv: Some(Reply::NxDomain),
        addresses: vec![(
            "a.test".to_owned(),
            Reply::Records(30, vec![ip(1)]),
            Reply::NoData,
        )],
    };
    s.apply(round, 0, later, T);
    assert_eq!(
        s.last_result, "nxdomain",
        "the SRV question decides, not its held targets"
    );
    assert_eq!(
        s.answered_at,
        Some(t0),
        "the SRV records in force are from t0"
    );
    assert_eq!(addrs(&s), vec![sock(1, 80)], "held");
}
