//! Pool policies over health: backup backends stand in only when no primary is up,
//! `when_all_down` rejects or spreads, and slow start ramps a recovered backend.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use tollgate::control::BackendAction;

fn named(id: u8) -> SocketAddr {
    backend(move |mut s| {
        let _ = s.write_all(&[id]);
    })
}

fn who(front: SocketAddr) -> Option<u8> {
    let mut s = TcpStream::connect(front).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut id = Vec::new();
    s.read_to_end(&mut id).ok()?;
    id.first().copied()
}

fn backends_yaml(list: &[(SocketAddr, bool)]) -> String {
    list.iter()
        .map(|(a, backup)| format!("      - {{ address: \"{a}\", backup: {backup} }}\n"))
        .collect()
}

fn yaml(pool_extra: &str, list: &[(SocketAddr, bool)]) -> String {
    format!(
        "workers: 1\nlisteners:\n  front:\n    bind: \"127.0.0.1:0\"\n    pool: back\npools:\n  back:\n{pool_extra}    backends:\n{}",
        backends_yaml(list)
    )
}

#[test]
fn backups_serve_only_while_no_primary_is_up() {
    let (p1, p2, b) = (named(1), named(2), named(9));
    let server = start(&yaml("", &[(p1, false), (p2, false), (b, true)]));
    let front_addr = front(&server);
    assert!(
        (0..6).all(|_| who(front_addr) != Some(9)),
        "primaries take everything"
    );
    let control = server.control();
    control
        .backend_action_blocking("back", p1, BackendAction::Disable)
        .unwrap();
    assert!(
        (0..4).all(|_| who(front_addr) == Some(2)),
        "one primary left"
    );
    control
        .backend_action_blocking("back", p2, BackendAction::Drain)
        .unwrap();
    assert!(
        (0..4).all(|_| who(front_addr) == Some(9)),
        "no primary up: the backup serves"
    );
    control
        .backend_action_blocking("back", p1, BackendAction::Enable)
        .unwrap();
    assert!(
        (0..4).all(|_| who(front_addr) == Some(1)),
        "a primary is back: the backup stops"
    );
    server.shutdown();
}

/// A pool whose health checks all fail (they probe a closed port) but whose traffic port works.
fn all_down(policy: &str) -> (tollgate::app::Server, SocketAddr) {
    let closed = reserved_refused_addr().port();
    let pool = format!(
        "    when_all_down: {policy}\n    health_check: {{ type: tcp, interval: 100ms, timeout: 50ms, rise: 1, fall: 1, port: {closed} }}\n"
    );
    let server = start(&yaml(&pool, &[(named(1), false), (named(2), false)]));
    let control = server.control().clone();
    let backends: Vec<SocketAddr> = server
        .snapshot()
        .pool("back")
        .unwrap()
        .backends
        .iter()
        .map(|b| b.address)
        .collect();
    wait_for("every backend is down", Duration::from_secs(5), || {
        backends.iter().all(|a| !control.health_of("back", *a).up)
    });
    let front_addr = front(&server);
    (server, front_addr)
}

#[test]
fn when_all_down_reject_closes_new_connections_at_once() {
    let (server, front_addr) = all_down("reject");
    assert_eq!(who(front_addr), None, "closed without a byte");
    let snapshot = server.snapshot();
    let spec = snapshot.listener("front").unwrap();
    wait_for("counted as no_backend", Duration::from_secs(5), || {
        spec.live.rejected_no_backend.load(Ordering::Relaxed) == 1
    });
    assert!(
        spec.pool
            .as_ref()
            .unwrap()
            .backends
            .iter()
            .all(|b| b.stats.failures() == 0 && b.stats.connections.load(Ordering::Relaxed) == 0),
        "no backend was tried"
    );
    server.shutdown();
}

#[test]
fn when_all_down_use_all_spreads_over_every_backend() {
    let (server, front_addr) = all_down("use_all");
    let ids: Vec<Option<u8>> = (0..6).map(|_| who(front_addr)).collect();
    assert_eq!(ids.iter().filter(|i| **i == Some(1)).count(), 3, "{ids:?}");
    assert_eq!(ids.iter().filter(|i| **i == Some(2)).count(), 3, "{ids:?}");
    server.shutdown();
}

#[test]
fn slow_start_ramps_a_recovered_backend() {
    let steady = named(1);
    let recovering = TcpListener::bind("127.0.0.1:0").unwrap();
    let rec_addr = recovering.local_addr().unwrap();
    drop(recovering); // down at first: connects refused
    let pool = "    slow_start: 2s\n    health_check: { type: tcp, interval: 100ms, timeout: 50ms, rise: 1, fall: 1 }\n";
    let server = start(&yaml(pool, &[(steady, false), (rec_addr, false)]));
    let control = server.control().clone();
    wait_for("the backend is down", Duration::from_secs(5), || {
        !control.health_of("back", rec_addr).up
    });
    let back = TcpListener::bind(rec_addr).unwrap();
    std::thread::spawn(move || for _ in back.incoming() {});
    wait_for("it is back up", Duration::from_secs(5), || {
        control.health_of("back", rec_addr).up
    });
    let weight = || server.snapshot().pool("back").unwrap().backends[1].weight;
    let early = weight();
    assert!(
        early > 0 && early < 100,
        "starts near zero, not at full weight: {early}"
    );
    wait_for("the weight ramps up", Duration::from_secs(5), || {
        weight() > early
    });
    wait_for("and reaches full weight", Duration::from_secs(5), || {
        weight() == 100
    });
    server.shutdown();
}
