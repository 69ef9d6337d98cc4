//! Binary upgrade, DNS: the answers in force go to the new process with their TTLs, so a
//! pool of names serves from its first connection even when DNS does not answer the new
//! process at all, and a connection held to a backend found through DNS is handed over
//! (the new process knows its backend).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use common::dns::{DnsServer, Mode, dns_config, lo};
use common::upgrade::*;
use common::{echo, wait_for};

#[test]
fn dns_answers_move_with_the_upgrade_and_held_connections_to_dns_backends_too() {
    let dns = DnsServer::start();
    let backend = TcpListener::bind((lo(41), 0)).unwrap();
    let port = backend.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in backend.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || echo(&mut s));
        }
    });
    dns.set_a("app.test", 300, &[lo(41)]);
    let yaml = dns_config(
        dns.addr(),
        "timeout: 200ms",
        "",
        &format!("- {{ host: app.test, port: {port} }}"),
    )
    .replace(
        "workers: 1\n",
        "workers: 1\nshutdown: { drain_timeout: 10s }\n",
    );
    let install = Install::new(&yaml);
    let mut old = install.start();
    let front = old.addr();
    let admin = admin_of(&old);
    wait_for("the name's address serves", Duration::from_secs(10), || {
        common::round_trip(front, b"x").is_ok_and(|b| b == b"x")
    });
    let mut held = common::held_echo(front, 7);
    // From now on DNS answers nobody: the new process has only what it is handed.
    dns.set_mode(Mode::Drop);
    let answer = upgrade(admin);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let new = Adopted::of(&answer);
    // The held connection's backend is known to the new process: it is handed over, and
    // the old process, owning nothing, exits.
    assert_eq!(old.wait_exit(Duration::from_secs(5)).code(), Some(0));
    held.write_all(b"still").unwrap();
    let mut b = [0u8; 5];
    held.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"still");
    assert_eq!(
        metric(admin, "tollgate_upgrade_connections_handed_over_total"),
        1.0
    );
    // New connections reach the name's address at once, DNS silent or not.
    assert_eq!(common::round_trip(front, b"new").unwrap(), b"new");
    let status = common::http::get(admin, "/api/v1/status").json();
    let text = status.to_string();
    assert!(
        text.contains(&format!("{}:{port}", lo(41))),
        "the status shows the carried address: {text}"
    );
    drop(held);
    new.stop(Duration::from_secs(15));
}
