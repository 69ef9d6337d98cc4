//! The `sd_notify` messages of the built binary, received on a fake `NOTIFY_SOCKET` (a Unix
//! datagram socket of the test's): `READY=1` once the listener is bound and the first health
//! round is in; `WATCHDOG=1` from the workers at half the `WATCHDOG_USEC` period, and none
//! while one worker is wedged (stopped alone with `PTRACE_INTERRUPT`, as a worker stuck in a
//! system call would be), again once it runs; `RELOADING=1` with `MONOTONIC_USEC`, then
//! `READY=1`, around a reload; `STOPPING=1` when SIGTERM starts the drain.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Stopping one thread of the child takes ptrace(2), which only libc offers: the test's one
// exception to "unsafe only in src/sys/", each block documented.
#![allow(unsafe_code)]

mod common;

use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::binary::spawn_env;
use common::*;

/// The watchdog period given to the process: pings are due every half of it.
const PERIOD_MS: u64 = 400;

struct Notifications(UnixDatagram);

impl Notifications {
    /// The next message within `within`, or `None`.
    fn next(&self, within: Duration) -> Option<String> {
        self.0.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self.0.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned())
    }

    /// The next message that is not a watchdog ping.
    fn next_event(&self, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no message within {within:?}");
            let msg = self.next(left).expect("a message");
            if msg != "WATCHDOG=1" {
                return msg;
            }
        }
    }

    /// The watchdog pings received during `span` (other messages are not expected then).
    fn pings_during(&self, span: Duration) -> usize {
        let end = Instant::now() + span;
        let mut pings = 0;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.next(left.max(Duration::from_millis(1))) {
                Some(m) if m == "WATCHDOG=1" => pings += 1,
                Some(other) => panic!("unexpected {other:?} among the pings"),
                None => break,
            }
        }
        pings
    }
}

/// One thread of the process, stopped alone (the others keep running) until dropped.
struct Stopped(i32);

impl Stopped {
    fn thread(pid: i32, name: &str) -> Stopped {
        let tid = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .find(|tid| {
                std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                    .is_ok_and(|c| c.trim() == name)
            })
            .unwrap_or_else(|| panic!("no thread {name}"));
        // SAFETY: ptrace on a thread of our own child; the null pointers are the
        // unused address and data arguments of these requests.
        unsafe {
            let null = std::ptr::null_mut::<libc::c_void>();
            assert_eq!(
                libc::ptrace(libc::PTRACE_SEIZE, tid, null, null),
                0,
                "seize"
            );
            assert_eq!(
                libc::ptrace(libc::PTRACE_INTERRUPT, tid, null, null),
                0,
                "interrupt"
            );
            let mut status = 0;
            assert_eq!(libc::waitpid(tid, &mut status, libc::__WALL), tid, "stop");
        }
        Stopped(tid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above; the thread is in a ptrace stop, as PTRACE_DETACH needs.
        unsafe {
            let null = std::ptr::null_mut::<libc::c_void>();
            libc::ptrace(libc::PTRACE_DETACH, self.0, null, null);
        }
    }
}

#[test]
fn ready_watchdog_reload_and_stopping_are_told_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let notes = Notifications(UnixDatagram::bind(&socket_path).unwrap());
    let backend = echo_backend();
    let yaml = format!(
        "workers: 2\nshutdown: {{ drain_timeout: 1s }}\nlisteners:\n  web:\n    bind: \"127.0.0.1:0\"\n    pool: back\npools:\n  back:\n    health_check: {{ type: tcp, interval: 200ms, timeout: 150ms }}\n    backends: [{{ address: \"{backend}\" }}]\n"
    );
    let usec = (PERIOD_MS * 1000).to_string();
    let mut running = spawn_env(
        &yaml,
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", &usec),
        ],
    );

    // READY=1: the listener takes connections, and the first health round is in.
    let ready = notes.next_event(Duration::from_secs(15));
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    assert!(
        ready.contains("STATUS=serving 1 listener(s); 1 of 1 backends up"),
        "{ready:?}"
    );
    let front = running.addr();
    assert!(TcpStream::connect(front).is_ok());
    assert_eq!(round_trip(front, b"up").unwrap(), b"up");

    // WATCHDOG=1 every half period: 6 in 3 periods (fewer when this machine is busy, never
    // many more).
    let pings = notes.pings_during(Duration::from_millis(3 * PERIOD_MS));
    assert!((3..=8).contains(&pings), "{pings} pings in 3 periods");

    // One worker wedged: no ping after the one already due, until it runs again.
    {
        let _wedged = Stopped::thread(running.pid(), "tollgate-w1");
        std::thread::sleep(Duration::from_millis(PERIOD_MS / 2));
        let _ = notes.pings_during(Duration::from_millis(PERIOD_MS / 2));
        let pings = notes.pings_during(Duration::from_millis(3 * PERIOD_MS));
        assert_eq!(pings, 0, "pings while a worker is wedged");
    }
    let pings = notes.pings_during(Duration::from_millis(6 * PERIOD_MS));
    assert!(pings >= 3, "{pings} pings once the worker runs again");

    // A reload: RELOADING=1 with the monotonic clock, then READY=1.
    running.signal(libc::SIGHUP);
    let reloading = notes.next_event(Duration::from_secs(5));
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading:?}"
    );
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(usec > 0);
    let back = notes.next_event(Duration::from_secs(5));
    assert!(back.starts_with("READY=1\n"), "{back:?}");
    assert!(back.contains("the last reload was applied"), "{back:?}");

    // SIGTERM: STOPPING=1 as the drain starts.
    running.signal(libc::SIGTERM);
    let stopping = notes.next_event(Duration::from_secs(5));
    assert!(stopping.starts_with("STOPPING=1"), "{stopping:?}");
    let status = running.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}
