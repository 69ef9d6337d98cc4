//! Byte counters (`tollgate_backend_sent_bytes_total`, `tollgate_backend_received_bytes_total`)
//! move while a connection lives, about once a second, not only when it ends; and a
//! connection cut at the drain deadline still has every byte it delivered counted, both ways.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::http::get;
use common::*;
use prometheus_parse::{Scrape, Value};
use tollgate::state::BackendStats;

/// The counters are at most about a second late; this leaves room for a slow machine
/// without asserting anything about timing.
const COUNTED_WITHIN: Duration = Duration::from_secs(5);

/// A backend the test drives by hand: its listening socket, accepted from the test thread.
fn manual_backend() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// A client through `front` and the backend's end of the same connection.
fn connect_through(front: SocketAddr, backend: &TcpListener) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(front).unwrap();
    let (upstream, _) = backend.accept().unwrap();
    for s in [&client, &upstream] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    (client, upstream)
}

fn backend_stats(server: &tollgate::app::Server) -> Arc<BackendStats> {
    server.snapshot().pool("back").unwrap().backends[0]
        .stats
        .clone()
}

/// (sent to the backend, received from it).
fn counted(stats: &BackendStats) -> (u64, u64) {
    (
        stats.sent_bytes.load(Ordering::Relaxed),
        stats.received_bytes.load(Ordering::Relaxed),
    )
}

/// A counter of the backend at `backend`, as `/metrics` shows it.
fn scraped(admin: SocketAddr, metric: &str, backend: SocketAddr) -> f64 {
    let body = get(admin, "/metrics").body;
    let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let backend = backend.to_string();
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && s.labels.get("backend") == Some(backend.as_str()))
        .unwrap_or_else(|| panic!("no {metric} for {backend}"));
    match sample.value {
        Value::Counter(v) | Value::Untyped(v) => v,
        ref other => panic!("{metric} is not a counter: {other:?}"),
    }
}

#[test]
fn counters_follow_a_long_transfer_while_it_runs() {
    let (backend, backend_addr) = manual_backend();
    let yaml = config(
        &[(backend_addr, 1)],
        "",
        "",
        "admin:\n  bind: \"127.0.0.1:0\"",
    );
    let server = start(&yaml);
    let admin = server.admin_addr().unwrap();
    let stats = backend_stats(&server);
    let (mut client, mut upstream) = connect_through(front(&server), &backend);
    const CHUNK: usize = 64 * 1024;
    const REQUEST: usize = 1000;
    let mut buf = vec![0u8; CHUNK];
    // The backend sends a chunk, the client asks for the next: several seconds of one open
    // connection, each step waiting for the counters to show exactly what was delivered.
    for step in 1..=3u64 {
        client.write_all(&[b'q'; REQUEST]).unwrap();
        upstream.read_exact(&mut buf[..REQUEST]).unwrap();
        upstream.write_all(&vec![b'r'; CHUNK]).unwrap();
        client.read_exact(&mut buf).unwrap();
        let want = (step * REQUEST as u64, step * CHUNK as u64);
        wait_for(
            &format!("step {step}: counted {want:?} while open"),
            COUNTED_WITHIN,
            || counted(&stats) == want,
        );
    }
    let (sent, received) = counted(&stats);
    let metric = |name| scraped(admin, name, backend_addr) as u64;
    assert_eq!(metric("tollgate_backend_sent_bytes_total"), sent);
    assert_eq!(metric("tollgate_backend_received_bytes_total"), received);
    // Closing adds only what the flushes did not count yet: nothing here.
    drop(client);
    let mut rest = Vec::new();
    upstream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    drop(upstream);
    wait_for("the connection ends", COUNTED_WITHIN, || {
        stats.active.load(Ordering::Relaxed) == 0
    });
    assert_eq!(counted(&stats), (sent, received), "counted once, not twice");
    server.shutdown();
}

#[test]
fn a_connection_cut_at_the_drain_deadline_is_counted_both_ways() {
    let (backend, backend_addr) = manual_backend();
    let top = "shutdown: { drain_timeout: 300ms }";
    let server = start(&config(&[(backend_addr, 1)], "", "", top));
    // The snapshot's backend counters outlive the server: read them after it stopped.
    let stats = backend_stats(&server);
    let (mut client, mut upstream) = connect_through(front(&server), &backend);
    const REQUEST: usize = 5000;
    client.write_all(&[b'q'; REQUEST]).unwrap();
    let mut request = vec![0u8; REQUEST];
    upstream.read_exact(&mut request).unwrap();
    // The backend then streams until the connection is cut, and the client reads to the end:
    // bytes move right up to the cut, so some are delivered after any flush.
    let cut = Arc::new(AtomicBool::new(false));
    let streamer = {
        let cut = cut.clone();
        std::thread::spawn(move || {
            while upstream.write_all(&[b'r'; 1000]).is_ok() && !cut.load(Ordering::Relaxed) {
                // Pacing the load, not waiting for anything.
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let received = Arc::new(AtomicU64::new(0));
    let reader = {
        let received = received.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            // EOF (or a reset) once tollgate is gone; every byte before it counts.
            while let Ok(n @ 1..) = client.read(&mut buf) {
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
        })
    };
    wait_for("the client receives", COUNTED_WITHIN, || {
        received.load(Ordering::Relaxed) > 0
    });
    server.shutdown();
    reader.join().unwrap();
    cut.store(true, Ordering::Relaxed);
    streamer.join().unwrap();
    let to_client = received.load(Ordering::Relaxed);
    assert_eq!(counted(&stats), (REQUEST as u64, to_client));
}
