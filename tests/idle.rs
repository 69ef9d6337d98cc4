//! `timeouts.idle`: a connection on which nothing moves for that long is closed on both legs;
//! traffic in either direction keeps it open.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn an_idle_connection_is_closed_on_both_legs() {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let addr = backend(move |mut s| {
        let started = Instant::now();
        let closed = closed_within(&mut s, Duration::from_secs(10));
        tx.lock()
            .unwrap()
            .send((closed, started.elapsed()))
            .unwrap();
    });
    let server = start(&config(&[(addr, 1)], "timeouts: { idle: 300ms }", "", ""));
    let started = Instant::now();
    let mut client = TcpStream::connect(front(&server)).unwrap();
    assert!(
        closed_within(&mut client, Duration::from_secs(10)),
        "client leg closed"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "closed after {waited:?}, before the idle timeout"
    );
    let (backend_closed, backend_waited) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(backend_closed, "backend leg closed");
    assert!(backend_waited < Duration::from_secs(5));
    server.shutdown();
}

#[test]
fn traffic_keeps_a_connection_open_past_the_idle_timeout() {
    let addr = echo_backend();
    let server = start(&config(&[(addr, 1)], "timeouts: { idle: 400ms }", "", ""));
    let mut client = TcpStream::connect(front(&server)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = Instant::now();
    let mut round = 0u8;
    // Exchange a byte every 100 ms for well over twice the idle timeout.
    while started.elapsed() < Duration::from_millis(1000) {
        client.write_all(&[round]).unwrap();
        let mut b = [0u8; 1];
        client.read_exact(&mut b).unwrap();
        assert_eq!(b[0], round);
        round = round.wrapping_add(1);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        closed_within(&mut client, Duration::from_secs(5)),
        "closed once traffic stops"
    );
    server.shutdown();
}

/// Regression: a connection closed by the idle timeout mid-splice used to drop its pipe
/// without returning it, so the pool's count grew until every connection fell back to copy.
#[test]
fn idle_closed_spliced_connections_return_their_pipes() {
    let addr = echo_backend();
    let server = start(&config(
        &[(addr, 1)],
        "timeouts: { idle: 100ms }",
        "",
        "forwarding: splice",
    ));
    for i in 0..20u8 {
        let mut client = TcpStream::connect(front(&server)).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        // Bulk data, so that the connection splices.
        let chunk = vec![i; 256 * 1024];
        client.write_all(&chunk).unwrap();
        let mut back = vec![0u8; chunk.len()];
        client.read_exact(&mut back).unwrap();
        assert!(
            closed_within(&mut client, Duration::from_secs(5)),
            "idle close {i}"
        );
    }
    wait_for(
        "pipes are reused, not leaked",
        Duration::from_secs(5),
        || server.pipes_open() <= 4,
    );
    assert!(server.pipes_open() > 0, "these connections were spliced");
    server.shutdown();
}
