//! SIGTERM and SIGINT drain: new connections are refused at once, open transfers finish
//! within `shutdown.drain_timeout`, the rest are closed at the deadline, and the exit is 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::binary;
use common::*;

const CHUNK: usize = 64 * 1024;

/// A backend that, once it has read the client's `go`, sends `chunks` chunks of 64 KiB 50 ms
/// apart. It reads all of `go`: closing with a byte unread would reset the connection, and
/// tollgate passes a reset on as one.
fn slow_sender(chunks: u64) -> std::net::SocketAddr {
    backend(move |mut s| {
        let mut b = [0u8; 2];
        if s.read_exact(&mut b).is_err() {
            return;
        }
        let mut p = Pattern::new(5, chunks * CHUNK as u64);
        let mut buf = vec![0u8; CHUNK];
        while p.fill(&mut buf) > 0 {
            if s.write_all(&buf).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

/// Opens a transfer through `lb` and waits for its first byte, so it is surely in flight.
fn start_transfer(lb: &binary::Running) -> TcpStream {
    let mut client = TcpStream::connect(lb.addr()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    client.write_all(b"go").unwrap();
    let mut first = [0u8; 1];
    client.read_exact(&mut first).unwrap();
    client
}

fn lb_config(backend: std::net::SocketAddr, drain: &str) -> String {
    format!(
        "workers: 2\nshutdown: {{ drain_timeout: {drain} }}\nlisteners:\n  front:\n    bind: \"127.0.0.1:0\"\n    pool: back\n\
         pools:\n  back:\n    backends:\n      - address: \"{backend}\"\n"
    )
}

#[test]
fn sigterm_lets_an_open_transfer_finish_and_refuses_new_connections() {
    let chunks = 20; // ~1 s of transfer
    let mut lb = binary::spawn(&lb_config(slow_sender(chunks), "10s"), None);
    let front = lb.addr();
    let mut client = start_transfer(&lb);
    lb.signal(libc::SIGTERM);
    lb.wait_log("stop signal received", Duration::from_secs(10));
    wait_for(
        "new connections are refused",
        Duration::from_secs(5),
        || TcpStream::connect(front).is_err(),
    );
    let (n, _) = read_digest(&mut client).unwrap();
    assert_eq!(
        n + 1,
        chunks * CHUNK as u64,
        "the open transfer finished in full"
    );
    // The backend's FIN reached the client; closing ours ends the connection, and with it
    // the drain, long before its 10 s deadline.
    drop(client);
    let status = lb.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn at_the_drain_timeout_remaining_connections_are_closed_and_the_exit_is_clean() {
    let mut lb = binary::spawn(&lb_config(slow_sender(1000), "500ms"), None);
    let mut client = start_transfer(&lb);
    let started = Instant::now();
    lb.signal(libc::SIGINT);
    let status = lb.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "logs:\n{}", lb.logs().join("\n"));
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "exited before the drain timeout"
    );
    assert!(
        closed_within(&mut client, Duration::from_secs(5)),
        "the unfinished connection was closed"
    );
}

#[test]
fn a_second_signal_during_the_drain_closes_everything_at_once() {
    let mut lb = binary::spawn(&lb_config(slow_sender(1000), "60s"), None);
    let mut client = start_transfer(&lb);
    lb.signal(libc::SIGTERM);
    lb.wait_log("draining connections", Duration::from_secs(10));
    lb.signal(libc::SIGTERM);
    let status = lb.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(
        closed_within(&mut client, Duration::from_secs(5)),
        "the connection was closed"
    );
}
