//! `/healthz`, `/readyz` and `/metrics` answer whatever else happens on the admin port: a
//! load balancer's health checker that cannot reach them withdraws a healthy instance. Idle
//! and half-sent connections from a few addresses make room for whoever connects next, and
//! when clients hold every file descriptor the process may open, descriptors kept in reserve
//! let the admin API accept anyway. Both with the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::binary;
use common::http::get;
use common::sources::{connect_from, loopback};
use common::*;

/// Connections kept open from one address, each reopened the moment tollgate closes it:
/// half send nothing, half the start of a request head and nothing more.
struct Hogs {
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Hogs {
    fn start(from: &[IpAddr], per_address: usize, admin: SocketAddr) -> Hogs {
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for &ip in from {
            for n in 0..per_address {
                let (stop, opened) = (stop.clone(), opened.clone());
                threads.push(std::thread::spawn(move || {
                    hold(ip, admin, n % 2 == 1, &stop, &opened);
                }));
            }
        }
        Hogs {
            stop,
            opened,
            threads,
        }
    }

    fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn hold(ip: IpAddr, admin: SocketAddr, half_head: bool, stop: &AtomicBool, opened: &AtomicU64) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = connect_from(ip, admin) else {
            return;
        };
        opened.fetch_add(1, Ordering::Relaxed);
        if half_head {
            let _ = s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\n").as_bytes());
        }
        // The timeout only lets the thread see `stop`; any other outcome means closed.
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 512];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
    }
}

fn yaml(admin_extra: &str) -> String {
    let echo = echo_backend();
    format!(
        "workers: 1\nadmin:\n  bind: \"127.0.0.1:0\"\n{admin_extra}shutdown: {{ drain_timeout: 1s }}\n\
         listeners:\n  front:\n    bind: \"127.0.0.1:0\"\n    pool: back\n\
         \x20   limits: {{ max_connections: 1000 }}\n\
         pools:\n  back:\n    backends:\n      - address: \"{echo}\"\n"
    )
}

/// Asserts that `path` answers 200, promptly (within 5 s, for a shared machine's hiccups;
/// starved, it is never answered or closed at once).
fn answers(admin: SocketAddr, path: &str, round: usize) -> String {
    let started = Instant::now();
    let a = get(admin, path);
    let took = started.elapsed();
    assert_eq!(a.status, 200, "{path}, poll {round}: {} {}", a.head, a.body);
    assert!(
        took < Duration::from_secs(5),
        "{path}, poll {round}: {took:?}"
    );
    a.body
}

/// The issue's attack: four addresses hold ten idle or half-sent connections each (more
/// than the 32 slots) and reopen each one the moment it is closed, while a health checker
/// polls `/readyz` from a fifth: every poll is answered, at once.
#[test]
fn idle_connections_from_four_addresses_cannot_starve_readyz() {
    let mut lb = binary::spawn(&yaml(""), None);
    let admin = lb.logged_addr(&["admin API listening"]);
    let attackers: Vec<IpAddr> = (2..=5).map(|b| loopback(0, b)).collect();
    let hogs = Hogs::start(&attackers, 10, admin);
    lb.wait_log("admin: connection cap reached", Duration::from_secs(20));
    wait_for("every hog connected", Duration::from_secs(20), || {
        hogs.opened() >= 40
    });
    for round in 0..30 {
        let body = answers(admin, "/readyz", round);
        assert!(body.contains("\"ready\":true"), "{body}");
    }
    for round in 0..5 {
        let body = answers(admin, "/metrics", round);
        assert!(body.contains("tollgate_build_info"), "{body}");
    }
    assert!(hogs.opened() > 40, "the hogs were made to reconnect");
    drop(hogs);
    lb.signal(libc::SIGTERM);
    assert!(lb.wait_exit(Duration::from_secs(10)).success());
}

/// Changes can wait (on the control plane, or on a slow body), so at most eight are handled
/// at once; a ninth is answered 503 at once, and the connections they hold never keep a
/// health check out.
#[test]
fn changes_in_flight_are_bounded_and_never_hold_readyz() {
    let echo = echo_backend();
    let server = start(&config(
        &[(echo, 1)],
        "",
        "",
        "admin:\n  bind: \"127.0.0.1:0\"",
    ));
    let admin = server.admin_addr().unwrap();
    let weight = format!(
        "/api/v1/pools/back/backends/{}/weight",
        echo.to_string().replace(':', "%3A")
    );
    // Eight changes whose bodies never come.
    let stalled: Vec<std::net::TcpStream> = (0..8)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(admin).unwrap();
            let head = format!(
                "PUT {weight} HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n"
            );
            s.write_all(head.as_bytes()).unwrap();
            s
        })
        .collect();
    let mut ninth = None;
    wait_for("a ninth change is refused", Duration::from_secs(10), || {
        let a = common::http::request(admin, "PUT", &weight, None, r#"{"weight": 3}"#);
        let refused = a.status == 503;
        ninth = Some(a);
        refused
    });
    let ninth = ninth.unwrap();
    assert_eq!(ninth.header("retry-after").as_deref(), Some("1"));
    assert!(
        ninth.json()["error"]
            .as_str()
            .unwrap()
            .contains("changes are being made")
    );
    for round in 0..5 {
        answers(admin, "/readyz", round);
    }
    drop(stalled);
    wait_for("changes are taken again", Duration::from_secs(10), || {
        common::http::request(admin, "PUT", &weight, None, r#"{"weight": 3}"#).status == 200
    });
    server.shutdown();
}

/// Clients hold every descriptor the process may open (64, under prlimit): the data plane
/// pauses its accepts, and the admin API still answers `/metrics` and `/readyz`, again and
/// again (each connection's descriptor goes back to the reserve when it ends).
#[test]
fn metrics_and_readyz_answer_with_every_descriptor_held() {
    let mut lb = binary::spawn(&yaml(""), Some(64));
    let front = lb.addr();
    let admin = lb.logged_addr(&["admin API listening"]);
    let mut held = Vec::new();
    for _ in 0..80 {
        let mut s = std::net::TcpStream::connect(front).unwrap();
        s.write_all(b"x").unwrap();
        held.push(s);
    }
    lb.wait_log("accept failed; pausing listener", Duration::from_secs(20));
    // Without a reserve, an admin accept succeeds only if it happens to catch a descriptor
    // the data plane freed for a moment (one it accepted and could not connect): seconds
    // per answer, or never. With it, every answer comes at once.
    let started = Instant::now();
    for round in 0..20 {
        let body = answers(admin, "/metrics", round);
        assert!(
            body.contains("tollgate_listener_connections_active"),
            "{body}"
        );
        answers(admin, "/readyz", round);
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "40 answers took {took:?}");
    drop(held);
    lb.signal(libc::SIGTERM);
    assert!(lb.wait_exit(Duration::from_secs(10)).success());
}
