//! Signals that arrive while the binary starts are held, never fatal: tollgate blocks
//! SIGHUP, SIGTERM, SIGINT and SIGUSR2 from the C runtime's initialisers (before `main`) until
//! its handlers are installed, then acts on what arrived. And its text logs carry no colour
//! codes when stderr is not a terminal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::binary;
use common::*;
use tollgate::sys::signals::kill;

fn yaml(backend: std::net::SocketAddr) -> String {
    format!(
        "workers: 2\nshutdown: {{ drain_timeout: 1s }}\nlisteners:\n  front:\n    bind: \"127.0.0.1:0\"\n    pool: back\n\
         pools:\n  back:\n    health_check: {{ type: tcp, interval: 1s }}\n    backends:\n      - address: \"{backend}\"\n"
    )
}

/// Whether some thread of `pid` blocks SIGHUP: tollgate's own code has started (the few
/// hundred microseconds before, the dynamic loader runs with the inherited dispositions).
fn holding(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).any(|t| {
        std::fs::read_to_string(t.path().join("status")).is_ok_and(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("SigBlk:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
                .is_some_and(|mask| mask & (1 << (libc::SIGHUP - 1)) != 0)
        })
    })
}

fn wait_holding(lb: &binary::Running) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !holding(lb.pid()) {
        assert!(Instant::now() < deadline, "the signals were never held");
        std::hint::spin_loop();
    }
}

#[test]
fn sighup_bursts_during_start_up_never_kill_and_reload_once_up() {
    let echo = echo_backend();
    let mut early = 0;
    for _ in 0..8 {
        let mut lb = binary::spawn(&yaml(echo), None);
        wait_holding(&lb);
        let bound_before = lb
            .logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("listener bound"));
        // A burst at once, then one every millisecond while start-up goes on.
        for _ in 0..20 {
            kill(lb.pid(), libc::SIGHUP).unwrap();
        }
        for _ in 0..30 {
            kill(lb.pid(), libc::SIGHUP).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        early += usize::from(!bound_before);
        lb.wait_log("config reloaded", Duration::from_secs(10));
        assert!(
            lb.child.try_wait().unwrap().is_none(),
            "alive after the SIGHUPs"
        );
        assert_eq!(
            round_trip(lb.addr(), b"still serving").unwrap(),
            b"still serving"
        );
        lb.signal(libc::SIGTERM);
        assert_eq!(lb.wait_exit(Duration::from_secs(10)).code(), Some(0));
    }
    println!("{early} of 8 bursts began before the listeners were bound");
    assert!(early > 0, "no burst reached the process during start-up");
}

#[test]
fn sigterm_during_start_up_is_a_clean_drain_once_up() {
    let echo = echo_backend();
    let mut lb = binary::spawn(&yaml(echo), None);
    wait_holding(&lb);
    kill(lb.pid(), libc::SIGTERM).unwrap();
    let status = lb.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(0),
        "held, then a normal stop: {status:?}"
    );
    lb.wait_log("stop signal received", Duration::from_secs(5));
}

#[test]
fn text_logs_carry_no_colour_codes_off_a_terminal() {
    let echo = echo_backend();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    std::fs::write(&path, yaml(echo)).unwrap();
    let child = Command::new(binary::bin())
        .args(["run", "--log-format", "text", "-c"])
        .arg(&path)
        .env("TOLLGATE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(logs.contains("listener bound"), "{logs}");
    assert!(!logs.contains('\u{1b}'), "escape codes in a pipe:\n{logs}");
}
