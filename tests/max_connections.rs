//! `limits.max_connections`: at the cap the listener stops accepting (the kernel queues new
//! clients); when a connection ends, the queued client is served.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

#[test]
fn at_the_cap_new_clients_wait_until_a_slot_frees() {
    let addr = echo_backend();
    let server = start(&config(
        &[(addr, 1)],
        "limits: { max_connections: 2 }",
        "",
        "",
    ));
    let mut held: Vec<TcpStream> = (0..2)
        .map(|i| {
            let mut s = TcpStream::connect(front(&server)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(&[i]).unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            s
        })
        .collect();
    let mut third = TcpStream::connect(front(&server)).unwrap();
    third.write_all(b"x").unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 1];
    let err = third.read_exact(&mut b).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "the third client is not served: {err}"
    );
    let live = server.snapshot().listener("front").unwrap().live.clone();
    assert_eq!(live.accepted.load(std::sync::atomic::Ordering::Relaxed), 2);
    drop(held.pop());
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    third.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"x", "served once a slot freed");
    drop((held, third));
    server.shutdown();
}
