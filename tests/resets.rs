//! A failed leg is passed on as a reset, never as an orderly close: when a backend resets,
//! its client sees a reset (ECONNRESET) after every byte the backend sent, not an end of
//! stream that would make a cut transfer look complete; the same for a client that resets
//! mid-upload, seen by the backend. In both forwarding modes, counted by side and reason.
//! An orderly close still passes on as a FIN (see also `half_close.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::http::get;
use common::*;
use prometheus_parse::{Scrape, Value};
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
/// Long enough that a wrong ending (a hang instead of a reset) fails instead of blocking.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// tollgate with the admin API, forwarding in `mode`, in front of a backend the test
/// accepts from by hand.
fn server(mode: &str) -> (tollgate::app::Server, TcpListener) {
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = backend.local_addr().unwrap();
    let top = format!("forwarding: {mode}\nadmin:\n  bind: \"127.0.0.1:0\"");
    (start(&config(&[(addr, 1)], "", "", &top)), backend)
}

/// A client through tollgate and the backend's end of the same connection.
fn connect(server: &tollgate::app::Server, backend: &TcpListener) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(front(server)).unwrap();
    let (upstream, _) = backend.accept().unwrap();
    for s in [&client, &upstream] {
        s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    }
    (client, upstream)
}

/// Writes `len` pattern bytes from `seed` without ending the stream.
fn write_pattern(s: &mut TcpStream, seed: u64, len: u64) {
    let mut p = Pattern::new(seed, len);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = p.fill(&mut buf);
        if n == 0 {
            return;
        }
        s.write_all(&buf[..n]).unwrap();
    }
}

/// Reads exactly `len` bytes and checks they are pattern `seed`.
fn read_pattern(s: &mut TcpStream, seed: u64, len: u64) {
    let mut got = vec![0u8; usize::try_from(len).unwrap()];
    s.read_exact(&mut got).unwrap();
    let digest: [u8; 32] = Sha256::digest(&got).into();
    assert_eq!(digest, digest_of(seed, len), "the bytes before the reset");
}

/// Waits until the peer (tollgate) has acknowledged every byte written to `s`, so that
/// resetting `s` now cannot throw any of them away on this side.
fn wait_acked(s: &TcpStream) {
    wait_for("the peer acknowledged every byte", READ_TIMEOUT, || {
        tollgate::sys::socket::outstanding(s.as_fd()).unwrap() == 0
    });
}

/// Resets `s`: `SO_LINGER` 0, then close.
fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

/// Reads until the stream ends; returns the bytes, their digest, and how it ended.
fn read_to_end_or_error(s: &mut TcpStream) -> (u64, [u8; 32], io::Result<()>) {
    let (mut n, mut h) = (0u64, Sha256::new());
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (n, h.finalize().into(), Ok(())),
            Ok(got) => {
                n += got as u64;
                h.update(&buf[..got]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (n, h.finalize().into(), Err(e)),
        }
    }
}

/// Asserts that the stream delivered `len` bytes of pattern `seed` and then a reset.
fn assert_reset_after(s: &mut TcpStream, seed: u64, len: u64, what: &str) {
    let (n, digest, end) = read_to_end_or_error(s);
    assert_eq!(n, len, "{what}: bytes before the end");
    assert_eq!(digest, digest_of(seed, len), "{what}: digest");
    match end {
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Ok(()) => panic!("{what}: an orderly end of stream (FIN) instead of a reset"),
        Err(e) => panic!("{what}: ended by {e} instead of a reset"),
    }
}

/// `tollgate_listener_connections_aborted_total` of listener `front`, by (side, reason).
fn aborted(admin: SocketAddr) -> Vec<((String, String), f64)> {
    let body = get(admin, "/metrics").body;
    let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let mut found: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "tollgate_listener_connections_aborted_total")
        .filter(|s| s.labels.get("listener") == Some("front"))
        .map(|s| {
            let key = (
                s.labels.get("side").unwrap(),
                s.labels.get("reason").unwrap(),
            );
            let Value::Counter(v) = s.value else {
                panic!("not a counter")
            };
            ((key.0.to_owned(), key.1.to_owned()), v)
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// Waits until exactly one connection is counted aborted, by `side` and `reason`.
fn assert_counted_once(server: &tollgate::app::Server, side: &str, reason: &str) {
    let admin = server.admin_addr().unwrap();
    let want: Vec<_> = [("backend", "error"), ("backend", "reset")]
        .into_iter()
        .chain([("client", "error"), ("client", "reset")])
        .map(|(s, r)| {
            let n = if (s, r) == (side, reason) { 1.0 } else { 0.0 };
            ((s.to_owned(), r.to_owned()), n)
        })
        .collect();
    wait_for("the abort is counted", READ_TIMEOUT, || {
        aborted(admin) == want
    });
    let status = get(admin, "/api/v1/status").json();
    assert_eq!(status["listeners"][0]["aborted"][side][reason], 1);
}

/// The backend sends 1 MiB, which the client reads, then resets: the client's next read is
/// a reset, not an end of stream.
fn backend_reset_after_1_mib(mode: &str) {
    let (server, backend) = server(mode);
    let (mut client, mut upstream) = connect(&server, &backend);
    let (read_all, go) = mpsc::channel();
    let backend = thread::spawn(move || {
        write_pattern(&mut upstream, 1, MIB);
        go.recv_timeout(READ_TIMEOUT).unwrap();
        reset(upstream);
    });
    read_pattern(&mut client, 1, MIB);
    read_all.send(()).unwrap();
    assert_reset_after(&mut client, 1, 0, mode);
    backend.join().unwrap();
    assert_counted_once(&server, "backend", "reset");
    server.shutdown();
}

/// The backend sends 512 KiB and resets while none of it has reached the client yet (the
/// client is not reading): tollgate delivers all of it, then the reset.
fn backend_reset_with_bytes_in_flight(mode: &str) {
    let (server, backend) = server(mode);
    let (mut client, mut upstream) = connect(&server, &backend);
    write_pattern(&mut upstream, 2, MIB / 2);
    wait_acked(&upstream);
    reset(upstream);
    assert_reset_after(&mut client, 2, MIB / 2, mode);
    assert_counted_once(&server, "backend", "reset");
    server.shutdown();
}

/// The client uploads 1 MiB, which the backend reads, then resets: the backend's next read
/// is a reset, not an end of stream.
fn client_reset_mid_upload(mode: &str) {
    let (server, backend) = server(mode);
    let (mut client, mut upstream) = connect(&server, &backend);
    let (read_all, go) = mpsc::channel();
    let uploader = thread::spawn(move || {
        write_pattern(&mut client, 3, MIB);
        go.recv_timeout(READ_TIMEOUT).unwrap();
        reset(client);
    });
    read_pattern(&mut upstream, 3, MIB);
    read_all.send(()).unwrap();
    assert_reset_after(&mut upstream, 3, 0, mode);
    uploader.join().unwrap();
    assert_counted_once(&server, "client", "reset");
    server.shutdown();
}

/// The client sends 512 KiB and resets before the backend read any of it: the backend gets
/// all of it, then the reset.
fn client_reset_with_bytes_in_flight(mode: &str) {
    let (server, backend) = server(mode);
    let (mut client, mut upstream) = connect(&server, &backend);
    write_pattern(&mut client, 4, MIB / 2);
    wait_acked(&client);
    reset(client);
    assert_reset_after(&mut upstream, 4, MIB / 2, mode);
    assert_counted_once(&server, "client", "reset");
    server.shutdown();
}

/// Control: both peers end their streams in order; both see an end of stream, nothing is
/// counted aborted.
fn orderly_close_is_not_a_reset(mode: &str) {
    let (server, backend) = server(mode);
    let (mut client, mut upstream) = connect(&server, &backend);
    write_pattern(&mut upstream, 5, MIB);
    upstream.shutdown(std::net::Shutdown::Write).unwrap();
    let (n, _, end) = read_to_end_or_error(&mut client);
    assert_eq!(
        (n, end.is_ok()),
        (MIB, true),
        "{mode}: the client saw a FIN"
    );
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let (n, _, end) = read_to_end_or_error(&mut upstream);
    assert_eq!((n, end.is_ok()), (0, true), "{mode}: the backend saw a FIN");
    let admin = server.admin_addr().unwrap();
    wait_for("the connection ends", READ_TIMEOUT, || {
        server
            .snapshot()
            .listener("front")
            .unwrap()
            .live
            .active
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
    });
    assert!(
        aborted(admin).iter().all(|(_, n)| *n == 0.0),
        "{mode}: nothing aborted"
    );
    server.shutdown();
}

#[test]
fn a_backend_reset_after_1_mib_reaches_the_client_as_a_reset_splice() {
    backend_reset_after_1_mib("splice");
}

#[test]
fn a_backend_reset_after_1_mib_reaches_the_client_as_a_reset_copy() {
    backend_reset_after_1_mib("copy");
}

#[test]
fn bytes_in_flight_when_the_backend_resets_are_delivered_first_splice() {
    backend_reset_with_bytes_in_flight("splice");
}

#[test]
fn bytes_in_flight_when_the_backend_resets_are_delivered_first_copy() {
    backend_reset_with_bytes_in_flight("copy");
}

#[test]
fn a_client_reset_mid_upload_reaches_the_backend_as_a_reset_splice() {
    client_reset_mid_upload("splice");
}

#[test]
fn a_client_reset_mid_upload_reaches_the_backend_as_a_reset_copy() {
    client_reset_mid_upload("copy");
}

#[test]
fn bytes_in_flight_when_the_client_resets_are_delivered_first_splice() {
    client_reset_with_bytes_in_flight("splice");
}

#[test]
fn bytes_in_flight_when_the_client_resets_are_delivered_first_copy() {
    client_reset_with_bytes_in_flight("copy");
}

#[test]
fn an_orderly_close_is_passed_on_as_a_fin_splice() {
    orderly_close_is_not_a_reset("splice");
}

#[test]
fn an_orderly_close_is_passed_on_as_a_fin_copy() {
    orderly_close_is_not_a_reset("copy");
}
