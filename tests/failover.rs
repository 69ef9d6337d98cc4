//! Backends that refuse or never answer: the next backend is tried, the connect timeout is
//! honoured, and a client that no backend can take is closed promptly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use socket2::{Domain, Socket, Type};

/// An address whose accept queue is full, so further SYNs are dropped and a connect hangs
/// until its timeout. Keep the returned sockets alive while the address is in use.
fn blackhole() -> (SocketAddr, Vec<Socket>) {
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut held = vec![listener];
    for _ in 0..16 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        match s.connect_timeout(&addr.into(), Duration::from_millis(200)) {
            Ok(()) => held.push(s),
            Err(_) => return (addr, held),
        }
    }
    panic!("could not fill the accept queue of {addr}");
}

fn failures(server: &tollgate::app::Server, index: usize) -> u64 {
    server.snapshot().pool("back").unwrap().backends[index]
        .stats
        .failures()
}

#[test]
fn a_refused_backend_is_skipped_for_the_next() {
    let refused = refused_addr();
    let good = echo_backend();
    let server = start(&config(&[(refused, 1), (good, 1)], "", "", ""));
    for i in 0..6u8 {
        assert_eq!(
            round_trip(front(&server), &[i; 100]).unwrap(),
            vec![i; 100],
            "connection {i}"
        );
    }
    assert_eq!(
        failures(&server, 0),
        3,
        "every other pick lands on the refused backend first"
    );
    assert_eq!(failures(&server, 1), 0);
    // The refusal is recognised from the connect's error event, and counted as such.
    let snapshot = server.snapshot();
    let stats = &snapshot.pool("back").unwrap().backends[0].stats;
    let refused = stats.connect_failures[tollgate::state::ConnectFailure::Refused as usize]
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(refused, 3);
    server.shutdown();
}

#[test]
fn when_every_backend_refuses_the_client_is_closed_within_tries_times_timeout() {
    let (a, b) = (refused_addr(), refused_addr());
    let server = start(&config(
        &[(a, 1), (b, 1)],
        "timeouts: { connect: 1s }",
        "connect_retries: 1",
        "",
    ));
    let started = Instant::now();
    let mut client = TcpStream::connect(front(&server)).unwrap();
    assert!(
        closed_within(&mut client, Duration::from_secs(10)),
        "the client is closed"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed after {:?}, beyond 2 tries x 1s",
        started.elapsed()
    );
    assert_eq!(
        failures(&server, 0) + failures(&server, 1),
        2,
        "both backends were tried once"
    );
    let live = server.snapshot().listener("front").unwrap().live.clone();
    assert_eq!(live.rejected_no_backend.load(Ordering::Relaxed), 1);
    server.shutdown();
}

#[test]
fn a_backend_that_never_completes_the_handshake_hits_the_connect_timeout() {
    let (hole, _held) = blackhole();
    let server = start(&config(
        &[(hole, 1)],
        "timeouts: { connect: 400ms }",
        "connect_retries: 0",
        "",
    ));
    let started = Instant::now();
    let mut client = TcpStream::connect(front(&server)).unwrap();
    assert!(
        closed_within(&mut client, Duration::from_secs(10)),
        "the client is closed"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400),
        "closed after {waited:?}, before the connect timeout"
    );
    assert!(
        waited < Duration::from_secs(3),
        "closed after {waited:?}, long after the connect timeout"
    );
    assert_eq!(failures(&server, 0), 1);
    server.shutdown();
}

#[test]
fn after_a_connect_timeout_the_next_backend_serves() {
    let (hole, _held) = blackhole();
    let good = echo_backend();
    let server = start(&config(
        &[(hole, 1), (good, 1)],
        "timeouts: { connect: 300ms }",
        "",
        "",
    ));
    // The first pick is the black hole: the client is served by the second after a timeout.
    assert_eq!(
        round_trip(front(&server), b"still served").unwrap(),
        b"still served"
    );
    assert_eq!(failures(&server, 0), 1);
    server.shutdown();
}
