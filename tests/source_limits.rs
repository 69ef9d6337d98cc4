//! Per-source concurrency and how limits live on: `max_connections` per source holds while
//! long-lived connections stay open and frees a place when one ends, `exempt` sources are
//! never limited, and a reload keeps what the limiter knows through new rates, table sizes
//! and groupings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::sources::{loopback, probe_from};
use common::*;

fn limits(lines: &str) -> String {
    let mut s = "limits:\n  per_source:\n".to_owned();
    for l in lines.lines() {
        s.push_str(&format!("    {l}\n"));
    }
    s
}

#[test]
fn max_connections_per_source_holds_with_long_lived_connections() {
    let echo = echo_backend();
    let server = start(&config(&[(echo, 1)], &limits("max_connections: 3"), "", ""));
    let front = front(&server);
    let (a, b) = (loopback(3, 1), loopback(3, 2));
    let mut held: Vec<_> = (0..3)
        .map(|i| probe_from(a, front).unwrap_or_else(|| panic!("connection {i} of a")))
        .collect();
    for _ in 0..5 {
        assert!(probe_from(a, front).is_none(), "a fourth from a is refused");
    }
    // Another source is not affected by a's connections.
    let others: Vec<_> = (0..3).map(|_| probe_from(b, front).unwrap()).collect();
    let spec = server.snapshot().listener("front").unwrap().clone();
    assert_eq!(spec.live.rejected_source_limit.load(Relaxed), 5);
    let e = spec.admission.explain(a, std::time::Instant::now());
    assert_eq!(e.source.as_ref().unwrap().open, 3);
    assert!(!e.admitted);
    // One ends: its place comes back once tollgate has seen the close.
    drop(held.pop());
    wait_for(
        "a place for a is free again",
        Duration::from_secs(5),
        || {
            spec.admission
                .explain(a, std::time::Instant::now())
                .admitted
        },
    );
    held.push(probe_from(a, front).expect("admitted after a close"));
    assert!(probe_from(a, front).is_none(), "and the cap holds again");
    drop((held, others));
}

#[test]
fn exempt_sources_are_never_limited() {
    let echo = echo_backend();
    let rules = "connection_rate: 1/m\nmax_connections: 1\nexempt: [\"127.0.4.0/24\"]";
    let server = start(&config(&[(echo, 1)], &limits(rules), "", ""));
    let front = front(&server);
    let campus = loopback(4, 9);
    let held: Vec<_> = (0..20)
        .map(|i| probe_from(campus, front).unwrap_or_else(|| panic!("exempt connection {i}")))
        .collect();
    let other = loopback(5, 1);
    let first = probe_from(other, front).expect("one for a limited source");
    assert!(probe_from(other, front).is_none());
    drop((held, first));
}

#[test]
fn a_reload_carries_limiter_state_through_new_rates_sizes_and_groupings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    let echo = echo_backend();
    let yaml = |lines: &str| config(&[(echo, 1)], &limits(lines), "", "");
    let server = start_file(
        &path,
        &yaml("connection_rate: 1/m\nburst: 2\nmax_connections: 2"),
    );
    let front = front(&server);
    let source = loopback(6, 1);
    let held = [
        probe_from(source, front).unwrap(),
        probe_from(source, front).unwrap(),
    ];
    assert!(probe_from(source, front).is_none(), "two open");
    // A different rate, the same grouping: what was spent and what is open are kept.
    std::fs::write(
        &path,
        yaml("connection_rate: 2/m\nburst: 2\nmax_connections: 2"),
    )
    .unwrap();
    assert_eq!(server.control().reload_blocking().unwrap(), 2);
    assert!(
        probe_from(source, front).is_none(),
        "still at its cap after the reload"
    );
    // A bigger table: the state moves into it.
    let bigger = "connection_rate: 2/m\nburst: 2\nmax_connections: 2\nmax_tracked_sources: 2000000";
    std::fs::write(&path, yaml(bigger)).unwrap();
    assert_eq!(server.control().reload_blocking().unwrap(), 3);
    assert!(
        probe_from(source, front).is_none(),
        "still at its cap in the new table"
    );
    drop(held);
    let spec = server.snapshot().listener("front").unwrap().clone();
    wait_for("both connections released", Duration::from_secs(5), || {
        let e = spec.admission.explain(source, std::time::Instant::now());
        e.source.is_some_and(|s| s.open == 0)
    });
    // Two of its three tokens were spent, and that carried through both reloads.
    assert!(probe_from(source, front).is_some(), "the one token left");
    assert!(
        probe_from(source, front).is_none(),
        "then its burst is spent"
    );
    // A coarser grouping merges what its members spent: the whole /24 is limited now.
    let coarser = format!("{bigger}\nipv4_prefix: 24");
    std::fs::write(&path, yaml(&coarser)).unwrap();
    assert_eq!(server.control().reload_blocking().unwrap(), 4);
    assert!(probe_from(loopback(6, 200), front).is_none(), "same /24");
    assert!(probe_from(loopback(7, 1), front).is_some(), "another /24");
    // Limits removed: everyone gets in, nothing is tracked.
    std::fs::write(&path, config(&[(echo, 1)], "", "", "")).unwrap();
    assert_eq!(server.control().reload_blocking().unwrap(), 5);
    let spec = server.snapshot().listener("front").unwrap().clone();
    assert!(spec.admission.per_source.is_none());
    for _ in 0..5 {
        assert!(probe_from(source, front).is_some());
    }
}
