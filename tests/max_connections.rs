//! `limits.max_connections`: at the cap the listener stops accepting (the kernel queues new
//! clients); when a connection ends, the queued client is served. The cap and the time spent
//! at it are metrics, and reaching and leaving it are logged (one pair per 10 s at most).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::http::get;
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
    let mut held: Vec<TcpStream> = (0..2).map(|i| held_echo(front(&server), i)).collect();
    let third = not_served(front(&server));
    let live = server.snapshot().listener("front").unwrap().live.clone();
    assert_eq!(live.accepted.load(std::sync::atomic::Ordering::Relaxed), 2);
    drop(held.pop());
    served(third);
    drop(held);
    server.shutdown();
}

/// The waiting client is served once a slot frees: its byte comes back.
fn served(mut s: TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"?");
}

/// One series of `/metrics`, by name and listener.
fn listener_metric(admin: SocketAddr, name: &str) -> f64 {
    let body = get(admin, "/metrics").body;
    let prefix = format!("{name}{{listener=\"front\"}} ");
    let line = body
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in:\n{body}"));
    line.parse().unwrap()
}

/// `tollgate_listener_connections_limit` is the cap; `tollgate_listener_full_seconds_total`
/// grows while a client waits at the cap (a scrape sees it during the wait, not only after)
/// and stops when the client is served.
#[test]
fn the_cap_and_the_time_spent_at_it_are_metrics() {
    let top = "admin:\n  bind: \"127.0.0.1:0\"";
    let server = start(&config(
        &[(echo_backend(), 1)],
        "limits: { max_connections: 2 }",
        "",
        top,
    ));
    let admin = server.admin_addr().unwrap();
    let full = || listener_metric(admin, "tollgate_listener_full_seconds_total");
    assert_eq!(
        listener_metric(admin, "tollgate_listener_connections_limit"),
        2.0
    );
    let held: Vec<TcpStream> = (0..2).map(|i| held_echo(front(&server), i)).collect();
    assert_eq!(full(), 0.0, "at the cap with no one waiting is not full");
    let third = not_served(front(&server));
    wait_for(
        "a scrape during the wait sees it",
        Duration::from_secs(5),
        || full() > 0.0,
    );
    let first = full();
    wait_for("the time at the cap grows", Duration::from_secs(5), || {
        full() > first
    });
    drop(held);
    served(third);
    let ended = full();
    assert_eq!(
        full(),
        ended,
        "the clock stopped when the client was served"
    );
    server.shutdown();
}

/// One line when the listener reaches its cap and one when it leaves it, naming the listener,
/// the cap and how long it was full; a second trip within 10 s adds no line.
#[test]
fn reaching_and_leaving_the_cap_is_logged_once_per_interval() {
    let capped = "limits: { max_connections: 2 }";
    let yaml = config(&[(echo_backend(), 1)], capped, "", "");
    let lb = binary::spawn(&yaml, None);
    let front = lb.addr();
    let mut held: Vec<TcpStream> = (0..2).map(|i| held_echo(front, i)).collect();
    for _trip in 0..2 {
        let waiting = not_served(front);
        drop(held.remove(0));
        served(waiting);
        held.push(held_echo(front, 9));
    }
    for (line, field) in [
        ("listener at its connection cap", "unlogged_trips"),
        ("below its connection cap again", "full_for"),
    ] {
        let logged = lb.wait_log(line, Duration::from_secs(5));
        for field in ["\"listener\":\"front\"", "\"max_connections\":2", field] {
            assert!(logged.contains(field), "{field} in {logged}");
        }
    }
    // A later line marks where the log stands: everything before it has been read.
    lb.signal(libc::SIGHUP);
    lb.wait_log("config reloaded", Duration::from_secs(10));
    let logs = lb.logs.lock().unwrap().clone();
    let count = |needle: &str| logs.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(count("listener at its connection cap"), 1, "{logs:#?}");
    assert_eq!(count("below its connection cap again"), 1, "{logs:#?}");
}
