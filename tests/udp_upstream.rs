//! UDP upstream sockets through the real server on loopback: a session that had every reply
//! `responses` promised leaves its socket for the next session to that backend; one that
//! ended any other way closes it; replies nobody waits for are dropped and counted, never
//! sent on; kept sockets close when unused; a burst from one client reaches the backend in
//! order; and a UDP listener removed by a reload ends its sessions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::udp::*;
use common::*;

/// A backend that answers every datagram with the port it came from (2 bytes, big endian)
/// and the datagram, and once more `late` later when set; it records every source port.
fn port_echo(late: Option<Duration>) -> (SocketAddr, Arc<Mutex<Vec<u16>>>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            record.lock().unwrap().push(from.port());
            if &buf[..n] == b"silent" {
                continue;
            }
            let mut out = from.port().to_be_bytes().to_vec();
            out.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&out, from);
            if let Some(after) = late {
                let again = socket.try_clone().unwrap();
                let mut stray = b"stray:".to_vec();
                stray.extend_from_slice(&out);
                std::thread::spawn(move || {
                    std::thread::sleep(after);
                    let _ = again.send_to(&stray, from);
                });
            }
        }
    });
    (addr, seen)
}

fn nothing_more(c: &UdpSocket, within: Duration) {
    c.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    if let Ok((n, _)) = c.recv_from(&mut buf) {
        panic!(
            "unexpected datagram {:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
}

/// With `responses: 1`, twenty clients one after another (each a new session) are served
/// through at most one upstream socket per worker: the backend sees at most two source
/// ports, and the socket count says so. Unused, the kept sockets close within about 2 s.
#[test]
fn answered_sessions_leave_their_socket_to_the_next_one() {
    let (backend, seen) = port_echo(None);
    let server = start(&udp_config(&[backend], "responses: 1", ""));
    let front = front(&server);
    let spec = udp_live(&server);
    for i in 0..20u8 {
        let c = client("127.0.0.1");
        let reply = exchange(&c, front, &[b'q', i]).0;
        assert_eq!(&reply[2..], &[b'q', i]);
    }
    let ports: BTreeSet<u16> = seen.lock().unwrap().iter().copied().collect();
    assert!(ports.len() <= 2, "one socket per worker at most: {ports:?}");
    let udp = &spec.live.udp;
    assert_eq!(udp.sessions_total.load(Relaxed), 20);
    assert_eq!(udp.upstream_opened.load(Relaxed), ports.len() as u64);
    wait_for("every session gone", Duration::from_secs(2), || {
        udp.sessions_active.load(Relaxed) == 0
    });
    assert_eq!(udp.upstream_idle.load(Relaxed), ports.len() as u64);
    wait_for("kept sockets closed", Duration::from_secs(4), || {
        udp.upstream_idle.load(Relaxed) == 0
    });
    // The next session opens a socket again.
    let c = client("127.0.0.1");
    exchange(&c, front, b"again");
    assert_eq!(udp.upstream_opened.load(Relaxed), ports.len() as u64 + 1);
    server.shutdown();
}

/// Without `responses`, sessions never share a socket; with it, a session that ended
/// unanswered (its idle time ran out) closes its socket rather than keep it, since a reply
/// may still be on its way.
#[test]
fn sockets_of_unanswered_sessions_are_never_reused() {
    let (backend, seen) = port_echo(None);
    let server = start(&udp_config(&[backend], "session_idle: 300ms", ""));
    let addr = front(&server);
    let spec = udp_live(&server);
    let clients: Vec<UdpSocket> = (0..5).map(|_| client("127.0.0.1")).collect();
    let ports: BTreeSet<u16> = clients
        .iter()
        .map(|c| {
            let reply = exchange(c, addr, b"x").0;
            u16::from_be_bytes([reply[0], reply[1]])
        })
        .collect();
    assert_eq!(ports.len(), 5, "a socket per session");
    assert_eq!(spec.live.udp.upstream_opened.load(Relaxed), 5);
    assert_eq!(spec.live.udp.upstream_idle.load(Relaxed), 0);
    server.shutdown();

    let (backend, seen2) = port_echo(None);
    drop(seen);
    let server = start(&udp_config(
        &[backend],
        "responses: 1, session_idle: 300ms",
        "",
    ));
    let front = front(&server);
    let spec = udp_live(&server);
    let udp = &spec.live.udp;
    let a = client("127.0.0.1");
    a.send_to(b"silent", front).unwrap();
    wait_for(
        "the unanswered session expired",
        Duration::from_secs(3),
        || udp.sessions_total.load(Relaxed) == 1 && udp.sessions_active.load(Relaxed) == 0,
    );
    assert_eq!(udp.upstream_idle.load(Relaxed), 0, "not kept");
    let reply = exchange(&client("127.0.0.1"), front, b"x").0;
    let silent = seen2.lock().unwrap()[0];
    assert_ne!(u16::from_be_bytes([reply[0], reply[1]]), silent);
    assert_eq!(udp.upstream_opened.load(Relaxed), 2);
    server.shutdown();
}

/// A backend that answers twice where `responses: 1` promised once: the second datagram
/// reaches a kept socket that no session owns, and is dropped and counted as unclaimed; it
/// never reaches the client it was meant for, nor the next client.
#[test]
fn replies_beyond_responses_are_dropped_and_counted() {
    let (backend, _) = port_echo(Some(Duration::from_millis(100)));
    let server = start(&udp_config(&[backend], "responses: 1", ""));
    let front = front(&server);
    let udp = &udp_live(&server).live.udp;
    let a = client("127.0.0.1");
    assert_eq!(&exchange(&a, front, b"a").0[2..], b"a");
    nothing_more(&a, Duration::from_millis(400));
    wait_for("the stray counted", Duration::from_secs(2), || {
        udp.unclaimed.load(Relaxed) == 1
    });
    let b = client("127.0.0.1");
    assert_eq!(&exchange(&b, front, b"b").0[2..], b"b");
    nothing_more(&b, Duration::from_millis(400));
    wait_for("the second stray counted", Duration::from_secs(2), || {
        udp.unclaimed.load(Relaxed) == 2
    });
    assert_eq!(
        udp.datagrams(tollgate::state::Direction::ToClient)
            .load(Relaxed),
        2
    );
    server.shutdown();
}

/// A burst of equal-sized datagrams and a shorter one from one client, sent without
/// waiting, reach the backend as separate datagrams in order and come back byte-exact.
#[test]
fn a_burst_from_one_client_arrives_in_order() {
    let server = start(&udp_config(&[udp_echo(b"")], "", ""));
    let front = front(&server);
    let udp = &udp_live(&server).live.udp;
    let c = client("127.0.0.1");
    let sent: Vec<Vec<u8>> = (0..40u8)
        .map(|i| vec![i; 1200])
        .chain(std::iter::once(vec![0xee; 300]))
        .collect();
    for d in &sent {
        c.send_to(d, front).unwrap();
    }
    let mut buf = vec![0u8; 2048];
    for (i, want) in sent.iter().enumerate() {
        let (n, _) = c.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &want[..], "datagram {i}");
    }
    use tollgate::state::Direction;
    assert_eq!(udp.datagrams(Direction::ToBackend).load(Relaxed), 41);
    assert_eq!(
        udp.bytes(Direction::ToBackend).load(Relaxed),
        40 * 1200 + 300
    );
    server.shutdown();
}

/// A reload that removes a UDP listener ends its sessions: their backend shows none open,
/// and the address stops answering.
#[test]
fn removing_a_udp_listener_ends_its_sessions() {
    let backend = udp_echo(b"");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    let server = start_file(&path, &udp_config(&[backend], "", ""));
    let front = front(&server);
    let spec = udp_live(&server);
    let stats = spec.pool.as_ref().unwrap().backends[0].stats.clone();
    let clients: Vec<UdpSocket> = (0..3).map(|_| client("127.0.0.1")).collect();
    for c in &clients {
        exchange(c, front, b"hello");
    }
    assert_eq!(stats.active.load(Relaxed), 3);
    let tcp_only = format!(
        "workers: 2\nadmin:\n  bind: \"127.0.0.1:0\"\nlisteners:\n  other:\n    bind: \"127.0.0.1:0\"\n    pool: back\npools:\n  back:\n    backends:\n      - address: \"{backend}\"\n"
    );
    std::fs::write(&path, tcp_only).unwrap();
    server.control().reload_blocking().unwrap();
    wait_for("the sessions ended", Duration::from_secs(3), || {
        stats.active.load(Relaxed) == 0
    });
    clients[0].send_to(b"anyone?", front).unwrap();
    nothing_more(&clients[0], Duration::from_millis(300));
    server.shutdown();
}

/// `proxy_protocol.send: v2` on a UDP listener: the first datagram of each session reaches
/// the backend behind a v2 `UDP4` header naming the client and the address it sent to; the
/// datagrams after it come bare; a new session announces itself again.
#[test]
fn the_first_datagram_of_a_session_names_its_client() {
    use tollgate::proxy_protocol::{self, Decoded, Transport};
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let backend = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let reply = match proxy_protocol::decode(&buf[..n]) {
                Ok(Decoded::Done { header, len }) => {
                    let a = header.addresses.unwrap();
                    assert_eq!(a.transport, Transport::Datagram);
                    let mut r = format!("{} {} ", a.source, a.destination).into_bytes();
                    r.extend_from_slice(&buf[len..n]);
                    r
                }
                _ => [b"bare ", &buf[..n]].concat(),
            };
            let _ = socket.send_to(&reply, from);
        }
    });
    let server = start(&udp_config(&[backend], "", "").replace(
        "    udp: {  }\n",
        "    udp: {  }\n    proxy_protocol: { send: v2 }\n",
    ));
    let front = front(&server);
    for _ in 0..2 {
        let c = client("127.0.0.1");
        let me = c.local_addr().unwrap();
        let first = String::from_utf8(exchange(&c, front, b"one").0).unwrap();
        assert_eq!(first, format!("{me} {front} one"));
        let second = String::from_utf8(exchange(&c, front, b"two").0).unwrap();
        assert_eq!(second, "bare two");
    }
    server.shutdown();
}
