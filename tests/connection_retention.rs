//! What an open connection keeps alive: after its backend answers, only its own counters and
//! names, never the snapshot it was accepted under. A reload (or a DNS change) that replaces
//! a pool frees the old one, and every backend of its generation, while connections accepted
//! under it carry on for as long as they like.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use common::http::request;
use common::*;
use tollgate::state::{ListenerSpec, Pool};

/// Listener `front` over a Maglev pool `back` (the kind whose table is worth freeing).
fn yaml(backends: &[SocketAddr]) -> String {
    let mut y = String::from(
        "workers: 2\nadmin:\n  bind: \"127.0.0.1:0\"\nlisteners:\n  front:\n    bind: \"127.0.0.1:0\"\n    pool: back\npools:\n  back:\n    balance: maglev\n    backends:\n",
    );
    for b in backends {
        y.push_str(&format!("      - address: \"{b}\"\n"));
    }
    y
}

#[test]
fn an_open_connection_does_not_keep_the_replaced_pool_alive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    let (a, b) = (echo_backend(), echo_backend());
    let server = start_file(&path, &yaml(&[a]));
    let admin = server.admin_addr().unwrap();
    let mut open = held_echo(front(&server), b'1');
    let (old_pool, old_spec): (Weak<Pool>, Weak<ListenerSpec>) = {
        let snapshot = server.snapshot();
        (
            Arc::downgrade(snapshot.pool("back").unwrap()),
            Arc::downgrade(snapshot.listener("front").unwrap()),
        )
    };
    // A new backend set: a new pool, whatever the control plane reuses for unchanged ones.
    std::fs::write(&path, yaml(&[a, b])).unwrap();
    let r = request(admin, "POST", "/api/v1/reload", None, "");
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for(
        "the old pool and listener spec are freed",
        Duration::from_secs(5),
        || old_pool.upgrade().is_none() && old_spec.upgrade().is_none(),
    );
    open.write_all(b"2").unwrap();
    let mut echoed = [0u8; 1];
    open.read_exact(&mut echoed).unwrap();
    assert_eq!(
        &echoed, b"2",
        "the connection accepted under it still works"
    );
    drop(open);
    server.shutdown();
}
