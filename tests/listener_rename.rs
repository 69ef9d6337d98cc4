//! Listening sockets belong to their address, not to their listener's name: renaming a
//! listener in place, or moving an address from one listener to another, keeps the sockets
//! and every client queued on them, so a stream of new connections sees no failure at all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use common::http::get;
use common::*;

/// A port free right now, for a listener that must keep one fixed address across reloads.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn yaml(name: &str, addr: SocketAddr, other: SocketAddr, backend: SocketAddr) -> String {
    format!(
        "workers: 2\nadmin:\n  bind: \"127.0.0.1:0\"\nlisteners:\n  {name}:\n    bind: \"{addr}\"\n    pool: back\n\
         \x20 other:\n    bind: \"{other}\"\n    pool: back\n\
         pools:\n  back:\n    backends:\n      - address: \"{backend}\"\n"
    )
}

#[test]
fn a_listener_renamed_ten_times_under_load_drops_nothing() {
    let echo = echo_backend();
    let (addr, other): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    let server = start_file(&path, &yaml("web0", addr, other, echo));
    let admin = server.admin_addr().unwrap();
    let (stop, ok, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    // About 300 new connections a second, each one round trip, until told to stop (or 60 s).
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Relaxed) && Instant::now() < deadline {
                let started = Instant::now();
                match round_trip(addr, b"x") {
                    Ok(got) if got == b"x" => ok.fetch_add(1, Relaxed),
                    _ => failed.fetch_add(1, Relaxed),
                };
                std::thread::sleep(Duration::from_micros(3333).saturating_sub(started.elapsed()));
            }
        })
    };
    for i in 1..=10 {
        // Odd rounds rename `addr`'s listener; even rounds also swap the two addresses
        // between the listeners (an address moving to another name).
        let (a, b) = if i % 2 == 0 {
            (other, addr)
        } else {
            (addr, other)
        };
        std::fs::write(&path, yaml(&format!("web{i}"), a, b, echo)).unwrap();
        let before = ok.load(Relaxed);
        assert_eq!(server.control().reload_blocking().unwrap(), i + 1);
        wait_for(
            "connections after the reload",
            Duration::from_secs(10),
            || ok.load(Relaxed) >= before + 30,
        );
    }
    stop.store(true, Relaxed);
    load.join().unwrap();
    let (ok, failed) = (ok.load(Relaxed), failed.load(Relaxed));
    println!("{ok} connections, {failed} failed, over 10 renames");
    assert_eq!(failed, 0, "a rename dropped queued or new clients");
    let status = get(admin, "/api/v1/status").json();
    let names: Vec<&str> = status["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["other", "web10"]);
    assert_eq!(status["listeners"][1]["bind"][0], other.to_string());
    server.shutdown();
}

/// The sharpest case: clients queued in the kernel while the listener is at its cap. A rename
/// that closed the socket would reset every one of them; they must all be served once the
/// cap frees up.
#[test]
fn clients_queued_at_the_cap_survive_a_rename() {
    let echo = echo_backend();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let capped = |name: &str| {
        format!(
            "workers: 1\nlisteners:\n  {name}:\n    bind: \"{addr}\"\n    pool: back\n    limits: {{ max_connections: 1 }}\n\
             pools:\n  back:\n    backends:\n      - address: \"{echo}\"\n"
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    let server = start_file(&path, &capped("before"));
    let held = held_echo(addr, b'h');
    let queued: Vec<std::net::TcpStream> = (0..5u8)
        .map(|i| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            std::io::Write::write_all(&mut s, &[i]).unwrap();
            s
        })
        .collect();
    std::fs::write(&path, capped("after")).unwrap();
    assert_eq!(server.control().reload_blocking().unwrap(), 2);
    drop(held);
    for (i, mut s) in queued.into_iter().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = [0u8; 1];
        std::io::Read::read_exact(&mut s, &mut got)
            .unwrap_or_else(|e| panic!("queued client {i} lost in the rename: {e}"));
        assert_eq!(got[0], i as u8);
        drop(s); // frees the one slot for the next
    }
    server.shutdown();
}
