//! A FIN is passed on only after every byte before it, and the other direction keeps flowing
//! after one side stops sending.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

const MIB: u64 = 1 << 20;

/// The client sends 1 MiB and shuts down writing; only then does the backend (having seen the
/// whole request and its EOF) send a 10 MiB reply, which the client must receive in full.
fn client_half_close(forwarding: &str) {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let addr = backend(move |mut s| {
        let request = read_digest(&mut s).unwrap();
        tx.lock().unwrap().send(request).unwrap();
        send_pattern(&mut s, 20, 10 * MIB).unwrap();
    });
    let server = start(&config(
        &[(addr, 1)],
        "",
        "",
        &format!("forwarding: {forwarding}"),
    ));
    let mut client = TcpStream::connect(front(&server)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    send_pattern(&mut client, 10, MIB).unwrap();
    let (n, digest) = read_digest(&mut client).unwrap();
    assert_eq!(n, 10 * MIB, "{forwarding}: reply length");
    assert_eq!(
        digest,
        digest_of(20, 10 * MIB),
        "{forwarding}: reply digest"
    );
    let (n, digest) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(
        (n, digest),
        (MIB, digest_of(10, MIB)),
        "{forwarding}: request"
    );
    server.shutdown();
}

/// The backend says something short and shuts down writing at once, then keeps reading while
/// the client goes on sending 8 MiB: the client sees the short reply and EOF, and every one
/// of its bytes still reaches the backend.
fn backend_half_close(forwarding: &str) {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let addr = backend(move |mut s| {
        s.write_all(b"bye early").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        tx.lock()
            .unwrap()
            .send(read_digest(&mut s).unwrap())
            .unwrap();
    });
    let server = start(&config(
        &[(addr, 1)],
        "",
        "",
        &format!("forwarding: {forwarding}"),
    ));
    let mut client = TcpStream::connect(front(&server)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut early = Vec::new();
    client.read_to_end(&mut early).unwrap();
    assert_eq!(
        early, b"bye early",
        "{forwarding}: the backend's bytes and its FIN arrive first"
    );
    send_pattern(&mut client, 30, 8 * MIB).unwrap();
    let (n, digest) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(n, 8 * MIB, "{forwarding}: bytes after the backend's FIN");
    assert_eq!(
        digest,
        digest_of(30, 8 * MIB),
        "{forwarding}: digest after the backend's FIN"
    );
    server.shutdown();
}

#[test]
fn client_half_close_still_gets_the_reply_splice() {
    client_half_close("splice");
}

#[test]
fn client_half_close_still_gets_the_reply_copy() {
    client_half_close("copy");
}

#[test]
fn backend_half_close_still_receives_everything_splice() {
    backend_half_close("splice");
}

#[test]
fn backend_half_close_still_receives_everything_copy() {
    backend_half_close("copy");
}
