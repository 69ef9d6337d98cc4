//! `balance: round_robin` with weights: over whole periods each backend gets exactly its share,
//! across every worker, and a weight of 0 takes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::*;

/// A backend that answers every connection with its one-byte id and closes.
fn named_backend(id: u8) -> SocketAddr {
    backend(move |mut s| {
        let _ = s.write_all(&[id]);
    })
}

fn who_answers(front: SocketAddr) -> u8 {
    let mut s = TcpStream::connect(front).unwrap();
    let mut id = Vec::new();
    s.read_to_end(&mut id).unwrap();
    assert_eq!(id.len(), 1, "one byte per connection");
    id[0]
}

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
