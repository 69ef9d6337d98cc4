//! Bytes arrive exactly as sent, in both directions at once, for sizes around the pipe and
//! buffer boundaries, on the splice path and on the forced copy path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use common::*;

const SIZES: [u64; 7] = [0, 1, 65_535, 65_536, 65_537, (1 << 20) + 7, 64 << 20];

/// For each size: the client sends `size` bytes of one pattern while the backend sends `size`
/// bytes of another; both ends check length and SHA-256 of what they received.
fn exact_both_ways(forwarding: &str) {
    let reply_len = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel::<(u64, [u8; 32])>();
    let len = reply_len.clone();
    let tx = std::sync::Mutex::new(tx);
    let addr = backend(move |mut s| {
        let n = len.load(Ordering::SeqCst);
        let mut writer = s.try_clone().unwrap();
        let sending = std::thread::spawn(move || send_pattern(&mut writer, 2, n));
        let got = read_digest(&mut s).unwrap();
        sending.join().unwrap().unwrap();
        tx.lock().unwrap().send(got).unwrap();
    });
    let server = start(&config(
        &[(addr, 1)],
        "",
        "",
        &format!("forwarding: {forwarding}"),
    ));
    for size in SIZES {
        reply_len.store(size, Ordering::SeqCst);
        let mut client = TcpStream::connect(front(&server)).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut writer = client.try_clone().unwrap();
        let sending = std::thread::spawn(move || send_pattern(&mut writer, 1, size));
        let (n, digest) = read_digest(&mut client).unwrap();
        sending.join().unwrap().unwrap();
        assert_eq!(n, size, "{forwarding}: client received {n} of {size} bytes");
        assert_eq!(
            digest,
            digest_of(2, size),
            "{forwarding}: client-side digest differs at size {size}"
        );
        let (n, digest) = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(
            n, size,
            "{forwarding}: backend received {n} of {size} bytes"
        );
        assert_eq!(
            digest,
            digest_of(1, size),
            "{forwarding}: backend-side digest differs at size {size}"
        );
    }
    let snapshot = server.snapshot();
    let stats = &snapshot.pool("back").unwrap().backends[0].stats;
    let total: u64 = SIZES.iter().sum();
    wait_for("byte counters settle", Duration::from_secs(5), || {
        stats.sent_bytes.load(Ordering::Relaxed) == total
            && stats.received_bytes.load(Ordering::Relaxed) == total
    });
    let pipes = server.pipes_open();
    match forwarding {
        "splice" => assert!(pipes > 0, "the splice path used no pipe"),
        _ => assert_eq!(pipes, 0, "the copy path must not create pipes"),
    }
    server.shutdown();
}

#[test]
fn splice_path_is_byte_exact_both_ways() {
    exact_both_ways("splice");
}

#[test]
fn copy_path_is_byte_exact_both_ways() {
    exact_both_ways("copy");
}

/// tollgate in splice mode in front of one echo backend.
fn splice_echo() -> tollgate::app::Server {
    start(&config(
        &[(echo_backend(), 1)],
        "",
        "",
        "forwarding: splice",
    ))
}

/// A client connection through `server`, with a read timeout so a stall fails the test.
fn client(server: &tollgate::app::Server) -> TcpStream {
    let s = TcpStream::connect(front(server)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Sends `chunks` × 64 KiB of `byte` and reads each chunk's echo back.
fn exchange(s: &mut TcpStream, byte: u8, chunks: usize) {
    let chunk = vec![byte; 64 * 1024];
    let mut back = vec![0u8; chunk.len()];
    for _ in 0..chunks {
        std::io::Write::write_all(s, &chunk).unwrap();
        std::io::Read::read_exact(s, &mut back).unwrap();
        assert!(back.iter().all(|b| *b == byte));
    }
}

/// Pipes are borrowed per burst of data, not per connection: many connections that have
/// exchanged bulk data and then gone quiet hold no pipes (the pool keeps a few for reuse).
#[test]
fn quiet_connections_hold_no_pipes() {
    let server = splice_echo();
    let mut quiet = Vec::new();
    for i in 0..50u8 {
        let mut s = client(&server);
        exchange(&mut s, i, 4);
        quiet.push(s);
    }
    let pipes = server.pipes_open();
    assert!(pipes > 0, "the exchanges were spliced");
    assert!(
        pipes <= 4,
        "{pipes} pipes for 50 quiet connections: they are not given back"
    );
    drop(quiet);
    server.shutdown();
}

/// Splicing is decided per connection and direction: small requests and replies go through
/// a buffer (a pipe would cost more syscalls than it saves), while a direction that carries
/// bulk data switches to splicing.
#[test]
fn small_exchanges_copy_and_bulk_ones_splice() {
    let server = splice_echo();
    let mut s = client(&server);
    for i in 0..200u32 {
        let msg = [(i % 251) as u8; 600];
        std::io::Write::write_all(&mut s, &msg).unwrap();
        let mut back = [0u8; 600];
        std::io::Read::read_exact(&mut s, &mut back).unwrap();
        assert_eq!(back, msg);
    }
    assert_eq!(server.pipes_open(), 0, "small exchanges were spliced");
    exchange(&mut s, 7, 16);
    assert!(server.pipes_open() > 0, "bulk data was not spliced");
    server.shutdown();
}
