//! Reload edge cases found in review: the admin API cannot be moved or removed by a reload
//! (its socket would keep serving under the new rules), a removed listener closes its socket
//! even while it waits at its cap, a lowered cap holds, and a draining instance refuses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::http::request;
use common::*;
use tollgate::reload::ReloadError;

fn yaml(admin: bool, listeners: &[(&str, usize)], backend: SocketAddr) -> String {
    let mut y = String::from("workers: 2\nshutdown: { drain_timeout: 1s }\n");
    if admin {
        y.push_str("admin:\n  bind: \"127.0.0.1:0\"\n");
    }
    y.push_str("listeners:\n");
    for (name, cap) in listeners {
        y.push_str(&format!("  {name}:\n    bind: \"127.0.0.1:0\"\n    pool: back\n    limits: {{ max_connections: {cap} }}\n"));
    }
    y.push_str(&format!(
        "pools:\n  back:\n    backends:\n      - address: \"{backend}\"\n"
    ));
    y
}

fn served(addr: SocketAddr, byte: u8) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[byte]).unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    s
}

#[test]
fn a_reload_cannot_remove_or_move_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    let echo = echo_backend();
    let server = start_file(&path, &yaml(true, &[("front", 10)], echo));
    let admin = server.admin_addr().unwrap();
    std::fs::write(&path, yaml(false, &[("front", 10)], echo)).unwrap();
    let r = request(admin, "POST", "/api/v1/reload", None, "");
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("admin API cannot move"), "{}", r.body);
    assert_eq!(server.control().generation(), 1, "nothing changed");
    server.shutdown();
}

#[test]
fn a_removed_listener_waiting_at_its_cap_closes_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    let echo = echo_backend();
    let server = start_file(&path, &yaml(false, &[("front", 10), ("side", 1)], echo));
    let side = server.addrs("side")[0];
    let _held = served(side, 1);
    let _waiting = not_served(side);
    std::fs::write(&path, yaml(false, &[("front", 10)], echo)).unwrap();
    server.control().reload_blocking().unwrap();
    wait_for(
        "the removed listener refuses connections",
        Duration::from_secs(5),
        || TcpStream::connect(side).is_err(),
    );
    server.shutdown();
}

#[test]
fn a_lowered_cap_holds_once_open_connections_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    let echo = echo_backend();
    let server = start_file(&path, &yaml(false, &[("front", 3)], echo));
    let front_addr = front(&server);
    let held: Vec<TcpStream> = (0..3).map(|i| served(front_addr, i)).collect();
    std::fs::write(&path, yaml(false, &[("front", 1)], echo)).unwrap();
    server.control().reload_blocking().unwrap();
    drop(held);
    let live = server.snapshot().listener("front").unwrap().live.clone();
    wait_for("the open connections end", Duration::from_secs(5), || {
        live.active.load(std::sync::atomic::Ordering::Relaxed) == 0
    });
    let _one = served(front_addr, 9);
    let _two = not_served(front_addr);
    server.shutdown();
}

#[test]
fn a_draining_instance_refuses_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    let server = start_file(&path, &yaml(false, &[("front", 10)], echo_backend()));
    server.begin_shutdown();
    assert!(matches!(
        server.control().reload_blocking(),
        Err(ReloadError::Draining)
    ));
    server.wait();
}
