//! Passive health: connect failures in a row mark a backend down (no more attempts on it);
//! without an active check a back-off probe brings it back once it answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::time::Duration;

use common::*;

#[test]
fn failures_in_a_row_mark_a_backend_down_until_it_answers_again() {
    let good = named_backend(1);
    let flaky = refused_addr();
    let pool = "connect_retries: 1\npassive: { consecutive_failures: 2 }";
    let server = start(&config(&[(good, 1), (flaky, 1)], "", pool, ""));
    let front_addr = front(&server);
    let control = server.control().clone();
    for _ in 0..6 {
        assert_eq!(who_answers(front_addr), 1, "the refused backend is skipped");
    }
    wait_for("marked down", Duration::from_secs(5), || {
        !control.health_of("back", flaky).up
    });
    let failures = || {
        server.snapshot().pool("back").unwrap().backends[1]
            .stats
            .failures()
    };
    // The data plane reports the second failure in a row; until the control plane has marked
    // the backend down, a connection arriving meanwhile may still try it once more.
    let after_down = failures();
    assert!(
        (2..=3).contains(&after_down),
        "the limit was tried, and at most one more before the mark: {after_down}"
    );
    for _ in 0..6 {
        assert_eq!(who_answers(front_addr), 1);
    }
    assert_eq!(
        failures(),
        after_down,
        "no connect is tried on a backend that is down"
    );
    // It comes back: the back-off probe (1 s) sees it answer and marks it up.
    let revived = TcpListener::bind(flaky).unwrap();
    std::thread::spawn(move || {
        for s in revived.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.write_all(&[2]);
        }
    });
    wait_for("marked up again", Duration::from_secs(10), || {
        control.health_of("back", flaky).up
    });
    let ids: Vec<u8> = (0..4).map(|_| who_answers(front_addr)).collect();
    assert!(ids.contains(&2), "it takes connections again: {ids:?}");
    server.shutdown();
}

/// Regressions from review: a reload must not bring a passively-downed backend back, and a
/// backend a reload adds to a checked pool takes no traffic before its first check.
#[test]
fn reloads_keep_passive_health_and_new_checked_backends_wait_for_their_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    let good = named_backend(1);
    let dead = refused_addr();
    let pool = "connect_retries: 1\npassive: { consecutive_failures: 2 }";
    std::fs::write(&path, config(&[(good, 1), (dead, 1)], "", pool, "")).unwrap();
    let cfg = tollgate::config::load(&path).unwrap();
    let server = tollgate::app::Server::start_from(&cfg, Some(path.clone())).unwrap();
    let front_addr = front(&server);
    let control = server.control().clone();
    for _ in 0..4 {
        assert_eq!(who_answers(front_addr), 1);
    }
    wait_for("marked down", Duration::from_secs(5), || {
        !control.health_of("back", dead).up
    });
    control.reload_blocking().unwrap();
    assert!(
        !control.health_of("back", dead).up,
        "still down after a reload"
    );
    // A checked pool gains a dead backend: no connection may try it before its first probe.
    let dead2 = refused_addr();
    let checked = format!("{pool}\nhealth_check: {{ type: tcp, interval: 1s, timeout: 500ms }}");
    std::fs::write(&path, config(&[(good, 1), (dead, 1)], "", &checked, "")).unwrap();
    control.reload_blocking().unwrap();
    std::fs::write(
        &path,
        config(&[(good, 1), (dead, 1), (dead2, 1)], "", &checked, ""),
    )
    .unwrap();
    control.reload_blocking().unwrap();
    for _ in 0..6 {
        assert_eq!(who_answers(front_addr), 1);
    }
    let tried = server.snapshot().pool("back").unwrap().backends[2]
        .stats
        .failures();
    assert_eq!(tried, 0, "the new backend waited for its check");
    server.shutdown();
}
