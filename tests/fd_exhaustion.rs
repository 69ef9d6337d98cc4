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
         \x20   limits: {{ max_connections: 1000 }}\n\
         pools:\n  back:\n    backends:\n      - address: \"{echo}\"\n"
    );
    // The cap is written out: a cap left unset would be sized to fit 64 descriptors, and
    // the listener would stop at it before running out.
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
         \x20   limits: {{ max_connections: 1000 }}\n\
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
    let logs = lb.logs().join("\n");
    assert!(
        !logs.contains("backend is down"),
        "a local failure took the backend down:\n{logs}"
    );
    lb.signal(libc::SIGTERM);
    assert!(lb.wait_exit(Duration::from_secs(10)).success());
}

fn one_listener(limits: &str) -> String {
    let echo = echo_backend();
    format!(
        "workers: 1\nshutdown: {{ drain_timeout: 1s }}\nlisteners:\n  front:\n    bind: \"127.0.0.1:0\"\n    pool: back\n{limits}\
         pools:\n  back:\n    backends:\n      - address: \"{echo}\"\n"
    )
}

/// A default must not warn: with 1024 descriptors and no `max_connections` in the file the
/// cap is sized to fit ((1024 - 256 - 96) / 2 = 336) and said once at info; a cap written
/// out that cannot fit is still warned about.
#[test]
fn an_unset_cap_is_sized_to_the_fd_limit_and_only_written_caps_warn() {
    let mut lb = binary::spawn(&one_listener(""), Some(1024));
    let _ = lb.addr();
    let sized = lb.wait_log("max_connections not set", Duration::from_secs(10));
    assert!(sized.contains("\"max_connections\":336"), "{sized}");
    lb.signal(libc::SIGTERM);
    assert!(lb.wait_exit(Duration::from_secs(10)).success());
    assert!(
        !lb.logs().iter().any(|l| l.contains("cannot fit")),
        "a default warned:\n{}",
        lb.logs().join("\n")
    );

    let mut lb = binary::spawn(
        &one_listener("    limits: { max_connections: 100000 }\n"),
        Some(1024),
    );
    let _ = lb.addr();
    lb.wait_log("cannot fit", Duration::from_secs(10));
    lb.signal(libc::SIGTERM);
    assert!(lb.wait_exit(Duration::from_secs(10)).success());
}
