//! No signal tollgate handles is ever fatal, and none is ever ignored when it means stop:
//! SIGHUP, SIGTERM, SIGINT and SIGUSR2 are held from the C runtime's initialisers (before
//! `main`) until their handlers are installed, then acted on. A FIFO handed as a file can no
//! longer stick a start-up or a reload (it is refused at once, never opened), so SIGTERM
//! always finds the process able to end. And text logs carry no colour codes when stderr is
//! not a terminal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::binary;
use common::*;
use tollgate::sys::signals::kill;

fn yaml(backend: std::net::SocketAddr, token_file: Option<&Path>) -> String {
    let admin = token_file.map_or(String::new(), |t| {
        format!(
            "admin:\n  bind: \"127.0.0.1:0\"\n  token_file: \"{}\"\n",
            t.display()
        )
    });
    format!(
        "workers: 2\n{admin}shutdown: {{ drain_timeout: 1s }}\nlisteners:\n  front:\n    bind: \"127.0.0.1:0\"\n    pool: back\n\
         pools:\n  back:\n    health_check: {{ type: tcp, interval: 1s }}\n    backends:\n      - address: \"{backend}\"\n"
    )
}

/// Where tollgate's main thread is with SIGHUP: `None` while the dynamic loader still runs
/// (the inherited dispositions; no program can act before its own first instruction),
/// `Some(true)` while it holds it (from the C runtime's initialisers), `Some(false)` once a
/// handler catches it.
fn sighup_phase(pid: i32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mask = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .is_some_and(|mask| mask & (1 << (libc::SIGHUP - 1)) != 0)
    };
    if mask("SigBlk:") {
        Some(true)
    } else if mask("SigCgt:") {
        Some(false)
    } else {
        None
    }
}

/// Waits until tollgate's own code runs; true if it was caught still holding the signals.
fn wait_started(lb: &binary::Running) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(holding) = sighup_phase(lb.pid()) {
            return holding;
        }
        assert!(Instant::now() < deadline, "tollgate never started");
        std::hint::spin_loop();
    }
}

/// A FIFO at `path` that nobody writes: opened, it would block its reader for good.
fn fifo(path: &Path) {
    let made = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(made.success(), "mkfifo (coreutils) is needed");
}

#[test]
fn sighup_bursts_during_start_up_never_kill_and_reload_once_up() {
    let echo = echo_backend();
    let mut held = 0;
    for _ in 0..8 {
        let mut lb = binary::spawn(&yaml(echo, None), None);
        held += usize::from(wait_started(&lb));
        // A burst at once, then one every millisecond while start-up goes on.
        for _ in 0..20 {
            kill(lb.pid(), libc::SIGHUP).unwrap();
        }
        for _ in 0..30 {
            kill(lb.pid(), libc::SIGHUP).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
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
    println!("{held} of 8 bursts began while the signals were still held");
    assert!(
        held > 0,
        "never caught holding: is the hold before main linked in?"
    );
}

#[test]
fn sigterm_during_start_up_is_a_clean_exit() {
    let echo = echo_backend();
    let mut lb = binary::spawn(&yaml(echo, None), None);
    wait_started(&lb);
    kill(lb.pid(), libc::SIGTERM).unwrap();
    let status = lb.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(0),
        "held, then a normal stop: {status:?}"
    );
}

/// SIGUSR2 during start-up, even twice, is held, never fatal, and upgrades once the
/// process is up: the new process serves, and the old one exits 0.
#[test]
fn sigusr2_during_start_up_upgrades_once_up() {
    let echo = echo_backend();
    let mut lb = binary::spawn(&yaml(echo, None), None);
    wait_started(&lb);
    kill(lb.pid(), libc::SIGUSR2).unwrap();
    let front = lb.addr();
    kill(lb.pid(), libc::SIGUSR2).unwrap();
    lb.wait_log(
        "a binary upgrade was asked for during start-up; upgrading now",
        Duration::from_secs(10),
    );
    let serves = lb.wait_log(
        "the new process serves every listener",
        Duration::from_secs(10),
    );
    let serves: serde_json::Value = serde_json::from_str(&serves).unwrap();
    // Stopped (SIGKILL at worst) however this test ends: it is nobody's child here.
    let new = common::upgrade::Adopted::pid(&serves["fields"]);
    assert_eq!(lb.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert_eq!(round_trip(front, b"serving").unwrap(), b"serving");
    new.stop(Duration::from_secs(10));
}

#[test]
fn a_fifo_cannot_stick_a_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token.fifo");
    fifo(&token);
    let started = Instant::now();
    let mut lb = binary::spawn(&yaml(echo_backend(), Some(&token)), None);
    let status = lb.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(78), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    lb.wait_log("not a regular file but a FIFO", Duration::from_secs(5));
}

#[test]
fn a_reload_of_a_fifo_is_refused_at_once_and_sigterm_still_ends_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let (path, token, fifo_token) = (
        dir.path().join("t.yaml"),
        dir.path().join("token"),
        dir.path().join("token.fifo"),
    );
    std::fs::write(&token, "a-token").unwrap();
    let echo = echo_backend();
    std::fs::write(&path, yaml(echo, Some(&token))).unwrap();
    let mut lb = binary::spawn_file(&path);
    let front = lb.addr();
    fifo(&fifo_token);
    std::fs::write(&path, yaml(echo, Some(&fifo_token))).unwrap();
    lb.signal(libc::SIGHUP);
    let refused = lb.wait_log("reload refused", Duration::from_secs(5));
    assert!(refused.contains("FIFO"), "{refused}");
    assert_eq!(
        round_trip(front, b"serving meanwhile").unwrap(),
        b"serving meanwhile"
    );
    let asked = Instant::now();
    lb.signal(libc::SIGTERM);
    let status = lb.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{status:?}");
    println!("exited {:?} after SIGTERM", asked.elapsed());
}

#[test]
fn text_logs_carry_no_colour_codes_off_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    std::fs::write(&path, yaml(echo_backend(), None)).unwrap();
    let mut child = Command::new(binary::bin())
        .args(["run", "--log-format", "text", "-c"])
        .arg(&path)
        .env("TOLLGATE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut logs = Vec::new();
    while !logs.iter().any(|l: &String| l.contains("listener bound")) {
        logs.push(lines.next().expect("logs until bound").unwrap());
    }
    kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM).unwrap();
    logs.extend(lines.map_while(Result::ok));
    assert!(child.wait().unwrap().success());
    let logs = logs.join("\n");
    // "stop signal received" or, if start-up had not quite returned, "… during start-up".
    assert!(logs.contains("stop signal"), "{logs}");
    assert!(!logs.contains('\u{1b}'), "escape codes in a pipe:\n{logs}");
}
