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
