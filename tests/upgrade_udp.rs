//! Binary upgrade, UDP: open sessions move to the new process on the upstream sockets they
//! had (the backend keeps seeing the same source port), a reply in flight during the
//! handover still reaches its client, and the old process exits at once instead of waiting
//! for its sessions to go idle.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::udp::client;
use common::upgrade::*;

/// A UDP backend that answers every datagram with the address it came from (the
/// balancer's upstream socket for that session); a datagram starting with `slow` is
/// answered after 400 ms.
fn port_reporter() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let answer = format!("{}|{from}", String::from_utf8_lossy(&buf[..n]));
            if buf[..n].starts_with(b"slow") {
                let socket = socket.try_clone().unwrap();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(400));
                    let _ = socket.send_to(answer.as_bytes(), from);
                });
            } else {
                let _ = socket.send_to(answer.as_bytes(), from);
            }
        }
    });
    addr
}

/// One UDP listener over `backend`, sessions idle for 30 s, a 5 s drain.
fn udp_yaml(backend: SocketAddr) -> String {
    format!(
        "workers: 2\nshutdown: {{ drain_timeout: 5s }}\nadmin: {{ bind: \"127.0.0.1:0\" }}\n\
         listeners:\n  front:\n    protocol: udp\n    bind: \"127.0.0.1:0\"\n    pool: back\n\
         \x20   udp: {{ session_idle: 30s }}\n\
         pools:\n  back:\n    backends:\n      - address: \"{backend}\"\n"
    )
}

fn ask(s: &UdpSocket, to: SocketAddr, what: &str) -> (String, String) {
    s.send_to(what.as_bytes(), to).unwrap();
    answer(s)
}

/// The next answer: (what was sent, the upstream address the backend saw).
fn answer(s: &UdpSocket) -> (String, String) {
    let mut buf = vec![0u8; 2048];
    let n = s.recv(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    let (said, from) = text.split_once('|').unwrap();
    (said.to_owned(), from.to_owned())
}

#[test]
fn udp_sessions_move_to_the_new_process_on_their_own_upstream_sockets() {
    let backend = port_reporter();
    let install = Install::new(&udp_yaml(backend));
    let mut old = install.start();
    let front = old.addr();
    let admin = admin_of(&old);
    let clients: Vec<UdpSocket> = (0..20).map(|_| client("127.0.0.1")).collect();
    let before: Vec<String> = clients
        .iter()
        .enumerate()
        .map(|(i, c)| ask(c, front, &format!("hello {i}")).1)
        .collect();
    // A reply that the backend sends while the handover is under way.
    clients[0].send_to(b"slow", front).unwrap();
    let started = Instant::now();
    let answer_ = upgrade(admin);
    assert_eq!(answer_.status, 200, "{}", answer_.body);
    let new = Adopted::of(&answer_);
    // The old process owns nothing once the sessions are over: it exits long before the
    // 5 s drain (or their 30 s idle time) would have ended them.
    assert_eq!(old.wait_exit(Duration::from_secs(5)).code(), Some(0));
    let exited = started.elapsed();
    assert!(
        exited < Duration::from_secs(4),
        "old exited after {exited:?}, not at once"
    );
    let (said, from) = answer(&clients[0]);
    assert_eq!(said, "slow", "the reply in flight reached its client");
    assert_eq!(from, before[0]);
    for (i, c) in clients.iter().enumerate() {
        let (said, from) = ask(c, front, &format!("again {i}"));
        assert_eq!(said, format!("again {i}"));
        assert_eq!(
            from, before[i],
            "session {i} goes on through the upstream socket it had"
        );
    }
    let moved = metric(admin, "tollgate_upgrade_udp_sessions_handed_over_total");
    assert_eq!(moved, 20.0, "every session handed over");
    let logs = old.logs().join("\n");
    assert!(
        logs.contains("\"udp_sessions_handed_over\":20"),
        "the old process says what it handed over:\n{logs}"
    );
    // A client new to both processes gets a session in the new one.
    let fresh = client("127.0.0.1");
    assert_eq!(ask(&fresh, front, "fresh").0, "fresh");
    new.stop(Duration::from_secs(10));
}

/// A new process that dies as the UDP sessions come (a send fails, or it is found gone
/// once nothing more comes): the old process reads its UDP socket again. Sessions it had
/// handed over died with the new process; a client's next datagram opens a new one here.
#[test]
fn a_udp_listener_is_served_again_when_the_new_process_dies_after_it_took_over() {
    let backend = port_reporter();
    let install = Install::new(&udp_yaml(backend));
    let mut old = common::binary::spawn_exe_env(
        &install.exe(),
        &install.config(),
        &[(tollgate::upgrade::new::FAILPOINT, "ready")],
    );
    let front = old.addr();
    let admin = admin_of(&old);
    let clients: Vec<UdpSocket> = (0..5).map(|_| client("127.0.0.1")).collect();
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(
            ask(c, front, &format!("before {i}")).0,
            format!("before {i}")
        );
    }
    let answer_ = upgrade(admin);
    assert_eq!(answer_.status, 200, "{}", answer_.body);
    old.wait_log(
        "the new process died after it took over; this process serves again",
        Duration::from_secs(10),
    );
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(ask(c, front, &format!("after {i}")).0, format!("after {i}"));
    }
    let fresh = client("127.0.0.1");
    assert_eq!(ask(&fresh, front, "fresh").0, "fresh");
    old.signal(libc::SIGTERM);
    assert_eq!(old.wait_exit(Duration::from_secs(10)).code(), Some(0));
}
