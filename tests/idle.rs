//! `timeouts.idle`: a connection on which nothing moves for that long is closed on both legs;
//! traffic in either direction keeps it open. The close is orderly (a FIN), as nothing was
//! lost; unless tollgate holds bytes a peer stopped taking, and then both legs are reset, so
//! that the cut stream does not look complete.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{self, Read, Write};
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

/// Nothing was sent: both peers see an orderly end of stream, not a reset.
#[test]
fn an_idle_close_with_nothing_undelivered_is_a_fin() {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let addr = backend(move |mut s| {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let ended = s.read(&mut [0u8; 16]).map_err(|e| e.kind());
        tx.lock().unwrap().send(ended).unwrap();
    });
    let server = start(&config(&[(addr, 1)], "timeouts: { idle: 200ms }", "", ""));
    let mut client = TcpStream::connect(front(&server)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let ended = client.read(&mut [0u8; 16]).map_err(|e| e.kind());
    assert_eq!(ended, Ok(0), "the client leg got a FIN");
    let ended = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(ended, Ok(0), "the backend leg got a FIN");
    server.shutdown();
}

/// The client stops reading while the backend still sends: once the buffers on the way are
/// full nothing moves, and at the idle timeout tollgate holds bytes it never delivered. The
/// client must see a reset after what did arrive, not an end of stream.
fn idle_with_bytes_stranded(mode: &str) {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let addr = backend(move |mut s| {
        let chunk = vec![9u8; 64 * 1024];
        // Writes until tollgate's reset makes a write fail.
        let failed = loop {
            if let Err(e) = s.write_all(&chunk) {
                break e.kind();
            }
        };
        tx.lock().unwrap().send(failed).unwrap();
    });
    let top = format!("forwarding: {mode}");
    let server = start(&config(&[(addr, 1)], "timeouts: { idle: 300ms }", "", &top));
    let mut client = TcpStream::connect(front(&server)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let failed = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        matches!(
            failed,
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        ),
        "{mode}: the backend leg was reset: {failed:?}"
    );
    let mut received = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    let end = loop {
        match client.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => received += n,
            Err(e) => break Err(e.kind()),
        }
    };
    assert!(
        received > 0,
        "{mode}: what arrived before the cut is readable"
    );
    assert_eq!(
        end,
        Err(io::ErrorKind::ConnectionReset),
        "{mode}: the client leg was reset, not closed, after {received} bytes"
    );
    server.shutdown();
}

#[test]
fn an_idle_timeout_with_bytes_stranded_resets_both_legs_splice() {
    idle_with_bytes_stranded("splice");
}

#[test]
fn an_idle_timeout_with_bytes_stranded_resets_both_legs_copy() {
    idle_with_bytes_stranded("copy");
}
