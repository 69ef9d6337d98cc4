//! Out of file descriptors: the accept loop pauses instead of spinning or exiting, and serves
//! again as soon as descriptors are released.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::binary;
use common::*;

#[test]
fn exhausted_descriptors_pause_accepts_cheaply_and_recover() {
    let echo = echo_backend();
    let yaml = format!(
        "workers: 1\nshutdown: {{ drain_timeout: 1s }}\nlisteners:\n  front:\n    bind: \"127.0.0.1:0\"\n    pool: back\n\
         pools:\n  back:\n    backends:\n      - address: \"{echo}\"\n"
    );
    let mut lb = binary::spawn(&yaml, Some(64));
    let front = lb.addr();
    // Each client costs tollgate at least one descriptor (two once proxied): 64 cannot fit 80.
    let mut held = Vec::new();
    for _ in 0..80 {
        let mut s = TcpStream::connect(front).unwrap();
        s.write_all(b"x").unwrap();
        held.push(s);
    }
    lb.wait_log("accept failed; pausing listener", Duration::from_secs(20));
    // While exhausted (clients are still queued in the kernel) the loop must not spin.
    let before = lb.cpu_time();
    std::thread::sleep(Duration::from_secs(1));
    let burned = lb.cpu_time() - before;
    assert!(
        burned <= Duration::from_millis(100),
        "{burned:?} of CPU in 1 s while exhausted"
    );
    drop(held);
    wait_for(
        "a new client is served after release",
        Duration::from_secs(20),
        || round_trip(front, b"back again").is_ok_and(|got| got == b"back again"),
    );
    lb.signal(libc::SIGTERM);
    assert!(lb.wait_exit(Duration::from_secs(10)).success());
}

/// Health probes that cannot get a descriptor say nothing about the backend: while clients
/// hold every descriptor, no backend goes down (else `reject` would refuse everything once
/// the flood passed), the probes count as `local_error`, and all serves after the release.
#[test]
fn probes_that_hit_emfile_leave_health_alone() {
    let echo = echo_backend();
    let yaml = format!(
        "workers: 1\nadmin:\n  bind: \"127.0.0.1:0\"\nshutdown: {{ drain_timeout: 1s }}\n\
         listeners:\n  front:\n    bind: \"127.0.0.1:0\"\n    pool: back\n\
         pools:\n  back:\n    health_check: {{ type: tcp, interval: 50ms, timeout: 40ms, rise: 1, fall: 2 }}\n\
         \x20   backends:\n      - address: \"{echo}\"\n"
    );
    let mut lb = binary::spawn(&yaml, Some(64));
    let front = lb.addr();
    let admin = lb.logged_addr(&["admin API listening"]);
    let mut held = Vec::new();
    for _ in 0..80 {
        let mut s = TcpStream::connect(front).unwrap();
        s.write_all(b"x").unwrap();
        held.push(s);
    }
    lb.wait_log(
        "health probe could not be made for a local reason",
        Duration::from_secs(20),
    );
    // Many probe intervals (at least `fall` of them) while exhausted.
    std::thread::sleep(Duration::from_millis(500));
    drop(held);
    wait_for("serving again", Duration::from_secs(20), || {
        round_trip(front, b"again").is_ok_and(|got| got == b"again")
    });
    let metrics = common::http::get(admin, "/metrics").body;
    let sample = |needle: &str| -> f64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("no {needle} in\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let local_errors = metrics
        .lines()
        .filter(|l| {
            l.starts_with("tollgate_health_checks_total") && l.contains("result=\"local_error\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum::<f64>();
    assert!(local_errors > 0.0, "local errors counted:\n{metrics}");
    assert_eq!(sample("tollgate_backend_up{"), 1.0);
    let logs = lb.logs.lock().unwrap().join("\n");
    assert!(
        !logs.contains("backend is down"),
        "a local failure took the backend down:\n{logs}"
    );
    lb.signal(libc::SIGTERM);
    assert!(lb.wait_exit(Duration::from_secs(10)).success());
}
