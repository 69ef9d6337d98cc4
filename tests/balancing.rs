//! Every `balance:` algorithm against real backends: round_robin gives exact shares over whole
//! periods across every worker (a weight of 0 takes nothing); least_connections and random_two
//! follow open connections per unit of weight and keep the weights when loads are equal
//! (idle included); maglev keeps each client on one backend.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::*;

#[test]
fn weighted_round_robin_gives_exact_shares() {
    let backends = [
        (named_backend(0), 3),
        (named_backend(1), 2),
        (named_backend(2), 1),
        (named_backend(3), 0),
    ];
    let server = start(&config(&backends, "", "balance: round_robin", ""));
    let mut counts = [0u32; 4];
    let mut order = Vec::new();
    for _ in 0..60 {
        let id = who_answers(front(&server));
        counts[id as usize] += 1;
        order.push(id);
    }
    assert_eq!(counts, [30, 20, 10, 0], "shares for weights 3:2:1:0");
    // Smooth: no backend answers more than its weight in a row.
    let longest = order
        .chunk_by(|a, b| a == b)
        .map(<[u8]>::len)
        .max()
        .unwrap();
    assert!(
        longest <= 3,
        "a run of {longest} picks of one backend: {order:?}"
    );
    server.shutdown();
}

/// A backend that says its id, then holds the connection open until the client closes.
fn holding_backend(id: u8) -> SocketAddr {
    backend(move |mut s| {
        let _ = s.write_all(&[id]);
        let mut sink = [0u8; 64];
        while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
    })
}

/// Opens a connection that stays open, and returns it with the id of the backend it reached.
fn open_held(front: SocketAddr) -> (TcpStream, u8) {
    let mut s = TcpStream::connect(front).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut id = [0u8; 1];
    s.read_exact(&mut id).unwrap();
    (s, id[0])
}

#[test]
fn least_connections_follows_open_connections() {
    let backends = [
        (holding_backend(0), 1),
        (holding_backend(1), 1),
        (holding_backend(2), 2),
    ];
    let server = start(&config(&backends, "", "balance: least_connections", ""));
    let mut held: Vec<(TcpStream, u8)> = (0..8).map(|_| open_held(front(&server))).collect();
    let mut per = [0u32; 3];
    for (_, id) in &held {
        per[*id as usize] += 1;
    }
    assert_eq!(
        per,
        [2, 2, 4],
        "open connections per unit of weight stay equal"
    );
    // Close both connections of backend 0: the next two go there.
    held.retain(|(_, id)| *id != 0);
    let snapshot = server.snapshot();
    let stats = &snapshot.pool("back").unwrap().backends[0].stats;
    wait_for(
        "backend 0 is idle",
        std::time::Duration::from_secs(5),
        || stats.active.load(std::sync::atomic::Ordering::Relaxed) == 0,
    );
    let next: Vec<u8> = (0..2)
        .map(|_| open_held(front(&server)))
        .map(|(s, id)| {
            held.push((s, id));
            id
        })
        .collect();
    assert_eq!(next, vec![0, 0]);
    drop(held);
    server.shutdown();
}

/// One connection at a time through a 5:2 pool: each is closed, and seen closed by tollgate,
/// before the next, so every pick sees both backends idle. Returns the picks per backend.
fn sequential_split(balance: &str, connections: u32) -> [u32; 2] {
    let backends = [(named_backend(0), 5), (named_backend(1), 2)];
    let server = start(&config(&backends, "", balance, ""));
    let front = front(&server);
    let snapshot = server.snapshot();
    let pool = snapshot.pool("back").unwrap();
    let mut per = [0u32; 2];
    for _ in 0..connections {
        per[who_answers(front) as usize] += 1;
        wait_for(
            "both backends idle",
            std::time::Duration::from_secs(5),
            || {
                pool.backends
                    .iter()
                    .all(|b| b.stats.active.load(std::sync::atomic::Ordering::Relaxed) == 0)
            },
        );
    }
    server.shutdown();
    per
}

/// Weights hold when loads are equal: 280 connections one at a time over weights 5:2
/// expect 200:80 (standard deviation 7.6). Uniform tie-breaking gave 140:140.
#[test]
fn weights_hold_at_equal_load_one_connection_at_a_time() {
    for balance in ["balance: least_connections", "balance: random_two"] {
        let per = sequential_split(balance, 280);
        eprintln!("{balance}: 5:2 idle split {per:?}");
        assert!((175..=225).contains(&per[0]), "{balance}: {per:?}");
    }
}

/// Under load, 70 connections held open over weights 5:2: least connections keeps open
/// connections per unit of weight equal, so exactly 50:20; random_two comes close.
#[test]
fn weights_hold_under_load() {
    for balance in ["balance: least_connections", "balance: random_two"] {
        let backends = [(holding_backend(0), 5), (holding_backend(1), 2)];
        let server = start(&config(&backends, "", balance, ""));
        let held: Vec<(TcpStream, u8)> = (0..70).map(|_| open_held(front(&server))).collect();
        let mut per = [0u32; 2];
        for (_, id) in &held {
            per[*id as usize] += 1;
        }
        eprintln!("{balance}: 5:2 with 70 held open {per:?}");
        if balance.ends_with("least_connections") {
            assert_eq!(per, [50, 20], "{balance}");
        } else {
            assert!((44..=56).contains(&per[0]), "{balance}: {per:?}");
        }
        drop(held);
        server.shutdown();
    }
}

#[test]
fn random_two_spreads_open_connections_evenly() {
    let backends = [
        (holding_backend(0), 1),
        (holding_backend(1), 1),
        (holding_backend(2), 1),
    ];
    let server = start(&config(&backends, "", "balance: random_two", ""));
    let held: Vec<(TcpStream, u8)> = (0..30).map(|_| open_held(front(&server))).collect();
    let mut per = [0u32; 3];
    for (_, id) in &held {
        per[*id as usize] += 1;
    }
    // Ideal power-of-two choices falls outside 7..=13 in ~4 runs in 100 000 (a unit test in
    // src/state/pool.rs checks the tighter 8..=12 over thousands of runs).
    assert!(per.iter().all(|n| (7..=13).contains(n)), "{per:?}");
    drop(held);
    server.shutdown();
}

#[test]
fn maglev_sends_each_client_address_to_one_backend() {
    let backends = [
        (named_backend(0), 1),
        (named_backend(1), 1),
        (named_backend(2), 1),
    ];
    let server = start(&config(
        &backends,
        "",
        "balance: maglev\nhash: source_ip",
        "",
    ));
    let front_addr = front(&server);
    let mut seen = [0u32; 3];
    for host in 1..=60u8 {
        let from: SocketAddr = format!("127.0.0.{host}:0").parse().unwrap();
        let ids: Vec<u8> = (0..3).map(|_| who_answers_from(front_addr, from)).collect();
        assert!(
            ids.iter().all(|i| *i == ids[0]),
            "client 127.0.0.{host} moved: {ids:?}"
        );
        seen[ids[0] as usize] += 1;
    }
    assert!(
        seen.iter().all(|n| *n >= 8),
        "every backend owns some clients: {seen:?}"
    );
    server.shutdown();
}

/// Like `who_answers`, from a chosen local address.
fn who_answers_from(front: SocketAddr, from: SocketAddr) -> u8 {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&from.into()).unwrap();
    socket.connect(&front.into()).unwrap();
    let mut s: TcpStream = socket.into();
    let mut id = Vec::new();
    s.read_to_end(&mut id).unwrap();
    id[0]
}
