//! Binary upgrade, per-source limits: what limited sources owe their rate moves to the new
//! process (a spent burst stays spent, a half-spent one stays half-spent), and the
//! connections handed over count against their source's `max_connections` there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::sources::{loopback, probe_from};
use common::upgrade::*;
use common::{echo_backend, wait_for};

const LIMITS: &str = "    pool: back\n    limits:\n      per_source:\n        \
                      connection_rate: 1/m\n        burst: 4\n        max_connections: 3\n";

fn source(admin: std::net::SocketAddr, ip: IpAddr) -> serde_json::Value {
    let answer = common::http::get(admin, &format!("/api/v1/listeners/front/sources/{ip}"));
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()
}

#[test]
fn a_spent_burst_stays_spent_and_handed_over_connections_keep_counting() {
    let yaml = yaml(echo_backend()).replace("    pool: back\n", LIMITS);
    let install = Install::new(&yaml);
    let mut old = install.start();
    let (front, admin) = (old.addr(), admin_of(&old));
    // a spends its whole burst (1 + 4), b holds its 3 connections, c spends 2 of 5.
    let (a, b, c) = (loopback(5, 1), loopback(5, 2), loopback(5, 3));
    for i in 0..5 {
        assert!(probe_from(a, front).is_some(), "connection {i} of a");
    }
    assert!(probe_from(a, front).is_none(), "a's burst is spent");
    let mut held: Vec<_> = (0..3).map(|_| probe_from(b, front).unwrap()).collect();
    assert!(
        probe_from(b, front).is_none(),
        "b is at its max_connections"
    );
    for _ in 0..2 {
        assert!(probe_from(c, front).is_some());
    }
    // a's connections end before the upgrade: only b's are handed over.
    wait_for("a's connections are closed", Duration::from_secs(5), || {
        source(admin, a)["per_source"]["open_connections"] == 0
    });

    let answer = upgrade(admin);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let new = Adopted::of(&answer);
    assert_eq!(old.wait_exit(Duration::from_secs(5)).code(), Some(0));
    assert_eq!(
        metric(admin, "tollgate_upgrade_connections_handed_over_total"),
        3.0
    );

    // The new process knows what a owes: no fresh burst.
    let seen = source(admin, a);
    assert_eq!(seen["reason"], "rate_limit", "{seen}");
    assert!(probe_from(a, front).is_none(), "a is still refused");
    // b's three connections count here, and still echo.
    let seen = source(admin, b);
    assert_eq!(seen["per_source"]["open_connections"], 3, "{seen}");
    assert_eq!(seen["reason"], "source_limit", "{seen}");
    assert!(
        probe_from(b, front).is_none(),
        "b is still at its max_connections"
    );
    assert_held_echo(&mut held, b'y');
    // One of b's ends: its place comes back, and b has tokens left for it.
    drop(held.pop());
    wait_for("b has a place again", Duration::from_secs(5), || {
        source(admin, b)["per_source"]["open_connections"] == 2
    });
    held.push(probe_from(b, front).expect("b admitted after a close"));
    // c has what it had left: 3 of 5 (and the little the rate gave back since).
    let tokens = source(admin, c)["per_source"]["tokens"].as_f64().unwrap();
    assert!((3.0..3.5).contains(&tokens), "c has {tokens} tokens");
    drop(held);
    new.stop(Duration::from_secs(15));
}
