//! Binary upgrade (`POST /api/v1/upgrade`, SIGUSR2, `tollgate upgrade`) with the built
//! binary, run from a copy that a test may replace: the listening sockets and the admin API
//! move to the new process with no client refused, counters continue, open connections
//! finish in the old process, which then exits; a new binary that refuses the config,
//! crashes at start, never answers or is missing leaves the old one serving as before.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::binary::{self, Running};
use common::http::{get, request};
use common::*;

/// A copy of the tollgate binary in its own directory, and a config file beside it.
struct Install {
    dir: tempfile::TempDir,
}

impl Install {
    fn new(yaml: &str) -> Install {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(binary::bin(), dir.path().join("tollgate")).unwrap();
        std::fs::write(dir.path().join("tollgate.yaml"), yaml).unwrap();
        Install { dir }
    }

    fn exe(&self) -> PathBuf {
        self.dir.path().join("tollgate")
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("tollgate.yaml")
    }

    /// Replaces the installed binary with a shell script, as a broken package would.
    fn replace_with_script(&self, script: &str) {
        let tmp = self.dir.path().join("tollgate.new");
        std::fs::write(&tmp, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        std::fs::rename(&tmp, self.exe()).unwrap();
    }

    /// Puts the real binary back (a new file, as a package upgrade writes it).
    fn restore(&self) {
        let tmp = self.dir.path().join("tollgate.new");
        std::fs::copy(binary::bin(), &tmp).unwrap();
        std::fs::rename(&tmp, self.exe()).unwrap();
    }

    fn start(&self) -> Running {
        binary::spawn_exe(&self.exe(), &self.config())
    }
}

fn yaml(backend: SocketAddr) -> String {
    yaml_with(&[backend])
}

fn yaml_with(backends: &[SocketAddr]) -> String {
    let mut yaml =
        "workers: 2\nshutdown: { drain_timeout: 20s }\nadmin: { bind: \"127.0.0.1:0\" }\n\
         listeners:\n  front:\n    bind: \"127.0.0.1:0\"\n    pool: back\n\
         pools:\n  back:\n    backends:\n"
            .to_owned();
    for b in backends {
        yaml.push_str(&format!("      - address: \"{b}\"\n"));
    }
    yaml
}

/// A process this test did not start itself (the new one of an upgrade): stopped with
/// SIGKILL when dropped, should the test fail before it stops it.
struct Adopted(u32);

impl Adopted {
    fn alive(&self) -> bool {
        Path::new(&format!("/proc/{}", self.0)).exists() && !is_zombie(self.0)
    }

    /// SIGTERM, then waits for the process to be gone.
    fn stop(&self, within: Duration) {
        kill(self.0, "-TERM");
        wait_for("the new process to exit", within, || !self.alive());
    }
}

impl Drop for Adopted {
    fn drop(&mut self) {
        if self.alive() {
            kill(self.0, "-KILL");
        }
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

fn kill(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status();
}

/// Short connections through `front`, one after another, each echoing a few bytes, until
/// stopped; every failure is kept.
struct Churn {
    stop: Arc<AtomicBool>,
    made: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Churn {
    fn start(front: SocketAddr) -> Churn {
        let (stop, made): (Arc<AtomicBool>, Arc<AtomicU64>) = (Arc::default(), Arc::default());
        let (s, m) = (Arc::clone(&stop), Arc::clone(&made));
        let thread = std::thread::spawn(move || {
            let mut errors = Vec::new();
            let mut i = 0u64;
            // About 300 connections a second, bounded in count.
            while !s.load(Ordering::Relaxed) && i < 20_000 {
                i += 1;
                let msg = format!("churn {i}\n");
                match round_trip(front, msg.as_bytes()) {
                    Ok(got) if got == msg.as_bytes() => {}
                    Ok(got) => errors.push(format!("{i}: echoed {got:?}")),
                    Err(e) => errors.push(format!("{i}: {e}")),
                }
                m.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(3));
            }
            errors
        });
        Churn {
            stop,
            made,
            thread: Some(thread),
        }
    }

    fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }

    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self.thread.take().unwrap().join().unwrap();
        (self.made(), errors)
    }
}

fn admin_of(lb: &Running) -> SocketAddr {
    lb.logged_addr(&["admin API listening"])
}

/// The value of the sample `series` (name and labels as `/metrics` prints them).
fn metric(admin: SocketAddr, series: &str) -> f64 {
    let body = get(admin, "/metrics").body;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{body}"))
}

fn upgrade(admin: SocketAddr) -> common::http::Answer {
    request(admin, "POST", "/api/v1/upgrade", None, "")
}

const ACCEPTED: &str = "tollgate_listener_connections_accepted_total{listener=\"front\"}";

#[test]
fn an_upgrade_moves_the_listeners_and_admin_api_without_refusing_anyone() {
    let (a, b) = (echo_backend(), echo_backend());
    let install = Install::new(&yaml_with(&[a, b]));
    let mut old = install.start();
    let front = old.addr();
    let admin = admin_of(&old);
    // What the operator set through the API moves with the upgrade.
    let drain = format!(
        "/api/v1/pools/back/backends/{}/drain",
        b.to_string().replace(':', "%3A")
    );
    assert_eq!(request(admin, "POST", &drain, None, "").status, 200);
    let deny = "/api/v1/listeners/front/deny/10.9.0.0%2F16";
    assert_eq!(request(admin, "POST", deny, None, "").status, 200);
    // A connection open before the upgrade stays with the old process until it ends.
    let mut held = held_echo(front, 7);
    let churn = Churn::start(front);
    wait_for("some churn", Duration::from_secs(10), || churn.made() > 100);
    let before = metric(admin, ACCEPTED);
    let answer = upgrade(admin);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let body = answer.json();
    let new = Adopted(u32::try_from(body["pid"].as_u64().unwrap()).unwrap());
    assert_ne!(new.0, old.child.id());
    assert_eq!(
        body["previous_pid"].as_u64(),
        Some(u64::from(old.child.id()))
    );
    // Keep the churn going through the new process for a while.
    let made = churn.made();
    wait_for("churn after the upgrade", Duration::from_secs(10), || {
        churn.made() > made + 200
    });
    // The admin API is the new process's now, and its counters went on from the old ones.
    let status = get(admin, "/api/v1/status").json();
    assert_eq!(status["pid"].as_u64(), Some(u64::from(new.0)));
    let backends = status["pools"][0]["backends"].as_array().unwrap();
    let state_of = |addr: SocketAddr| {
        backends
            .iter()
            .find(|x| x["address"] == addr.to_string())
            .map(|x| x["state"].clone())
    };
    assert_eq!(state_of(b), Some("draining".into()), "{status}");
    assert_eq!(state_of(a), Some("up".into()), "{status}");
    assert_eq!(
        status["listeners"][0]["deny"],
        serde_json::json!(["10.9.0.0/16"])
    );
    let after = metric(admin, ACCEPTED);
    assert!(
        after >= before + 200.0,
        "accepted {before} before, {after} after"
    );
    assert_eq!(
        metric(admin, "tollgate_upgrades_total{result=\"success\"}"),
        1.0
    );
    let (made, errors) = churn.finish();
    assert!(
        errors.is_empty(),
        "{} of {made} connections failed: {errors:?}",
        errors.len()
    );
    // The held connection still echoes (the old process serves it), then ends the old one,
    // which tells the new one what that connection added to the counters.
    let sent_bytes = || -> f64 {
        let body = get(admin, "/metrics").body;
        body.lines()
            .filter(|l| l.starts_with("tollgate_backend_sent_bytes_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let before = sent_bytes();
    let chunk = vec![b'y'; 50_000];
    held.write_all(&chunk).unwrap();
    let mut back = vec![0u8; chunk.len()];
    held.read_exact(&mut back).unwrap();
    assert_eq!(back, chunk);
    assert!(
        old.child.try_wait().unwrap().is_none(),
        "the old process waits for its connection"
    );
    drop(held);
    let exited = Instant::now();
    let code = old.wait_exit(Duration::from_secs(5));
    assert_eq!(code.code(), Some(0));
    wait_for(
        "the old process's last counts",
        Duration::from_secs(5),
        || sent_bytes() >= before + 50_000.0,
    );
    old.wait_log(
        "binary upgrade: the new process serves",
        Duration::from_secs(1),
    );
    assert!(exited.elapsed() < Duration::from_secs(5));
    // The new process serves on alone, and stops cleanly.
    assert_eq!(round_trip(front, b"after").unwrap(), b"after");
    new.stop(Duration::from_secs(10));
}

#[test]
fn upgrades_can_follow_one_another_and_sigusr2_and_the_cli_ask_for_one() {
    let install = Install::new(&yaml(echo_backend()));
    let mut first = install.start();
    let front = first.addr();
    let admin = admin_of(&first);
    let churn = Churn::start(front);
    // SIGUSR2 upgrades the process that got it.
    first.signal(libc::SIGUSR2);
    first.wait_log(
        "binary upgrade: the new process serves",
        Duration::from_secs(20),
    );
    assert_eq!(first.wait_exit(Duration::from_secs(5)).code(), Some(0));
    let mut pids = vec![get(admin, "/api/v1/status").json()["pid"].as_u64().unwrap()];
    // Then `tollgate upgrade`, three times in a row, each to a process of its own.
    for _ in 0..3 {
        let out = std::process::Command::new(install.exe())
            .arg("upgrade")
            .arg("-c")
            .arg(install.config())
            // The file binds the admin API to port 0: name the port it got.
            .arg("--admin")
            .arg(admin.to_string())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(said.starts_with("upgraded: process "), "{said}");
        let pid = get(admin, "/api/v1/status").json()["pid"].as_u64().unwrap();
        assert!(said.contains(&format!("process {pid} serves")), "{said}");
        let previous = Adopted(u32::try_from(*pids.last().unwrap()).unwrap());
        wait_for(
            "the previous process to exit",
            Duration::from_secs(5),
            || !previous.alive(),
        );
        pids.push(pid);
    }
    assert_eq!(
        metric(admin, "tollgate_upgrades_total{result=\"success\"}"),
        4.0
    );
    let (made, errors) = churn.finish();
    assert!(
        errors.is_empty(),
        "{} of {made} connections failed: {errors:?}",
        errors.len()
    );
    Adopted(u32::try_from(*pids.last().unwrap()).unwrap()).stop(Duration::from_secs(10));
}

#[test]
fn a_new_binary_that_refuses_the_config_or_crashes_leaves_the_old_one_serving() {
    let backend = echo_backend();
    let install = Install::new(&yaml(backend));
    let mut lb = install.start();
    let front = lb.addr();
    let admin = admin_of(&lb);
    let churn = Churn::start(front);
    let pid = u64::from(lb.child.id());
    // The config on disk is now invalid: the new process says why and exits.
    std::fs::write(
        install.config(),
        yaml(backend).replace("pool: back", "pool: nowhere"),
    )
    .unwrap();
    let answer = upgrade(admin);
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(answer.body.contains("nowhere"), "{}", answer.body);
    assert_eq!(answer.json()["result"], "refused");
    std::fs::write(install.config(), yaml(backend)).unwrap();
    // A binary that crashes at start.
    install.replace_with_script("echo 'cannot start' >&2; exit 3");
    let answer = upgrade(admin);
    assert_eq!(answer.status, 500, "{}", answer.body);
    assert!(answer.body.contains("exit status: 3"), "{}", answer.body);
    // A binary that starts and never answers: given up after 10 s, and killed.
    install.replace_with_script("exec sleep 60");
    let asked = Instant::now();
    let answer = upgrade(admin);
    assert_eq!(answer.status, 500, "{}", answer.body);
    assert!(answer.body.contains("timed out"), "{}", answer.body);
    assert!(asked.elapsed() < Duration::from_secs(15));
    // A binary that is not there at all.
    std::fs::remove_file(install.exe()).unwrap();
    let answer = upgrade(admin);
    assert_eq!(answer.status, 500, "{}", answer.body);
    assert!(
        answer.body.contains("cannot start the new binary"),
        "{}",
        answer.body
    );
    // Through all of it the old process served, and counted every attempt.
    assert_eq!(
        get(admin, "/api/v1/status").json()["pid"].as_u64(),
        Some(pid)
    );
    assert_eq!(
        metric(admin, "tollgate_upgrades_total{result=\"refused\"}"),
        1.0
    );
    assert_eq!(
        metric(admin, "tollgate_upgrades_total{result=\"failed\"}"),
        3.0
    );
    // Fixed, the same instance upgrades after all.
    install.restore();
    let answer = upgrade(admin);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let new = Adopted(u32::try_from(answer.json()["pid"].as_u64().unwrap()).unwrap());
    assert_eq!(lb.wait_exit(Duration::from_secs(5)).code(), Some(0));
    let (made, errors) = churn.finish();
    assert!(
        errors.is_empty(),
        "{} of {made} connections failed: {errors:?}",
        errors.len()
    );
    new.stop(Duration::from_secs(10));
}

/// A new process that crashes in the middle of the handover: after saying hello (the old
/// one has paused its listeners and is sending them), or once it holds every socket (the
/// old one waits for it to serve). Either way the old process resumes its listeners, no
/// client fails, and the old process upgrades once the new binary behaves.
#[test]
fn a_new_process_killed_halfway_leaves_every_connection_with_the_old_one() {
    for step in ["hello", "sockets"] {
        let (a, b) = (echo_backend(), echo_backend());
        let install = Install::new(&yaml_with(&[a, b]));
        let mut lb = binary::spawn_exe_env(
            &install.exe(),
            &install.config(),
            &[(tollgate::upgrade::new::FAILPOINT, step)],
        );
        let front = lb.addr();
        let admin = admin_of(&lb);
        let mut held = held_echo(front, 3);
        let churn = Churn::start(front);
        wait_for("some churn", Duration::from_secs(10), || churn.made() > 50);
        let answer = upgrade(admin);
        assert_eq!(answer.status, 500, "{step}: {}", answer.body);
        assert!(answer.body.contains("signal: 6"), "{step}: {}", answer.body);
        let made = churn.made();
        wait_for(
            "churn after the failed upgrade",
            Duration::from_secs(10),
            || churn.made() > made + 50,
        );
        let (made, errors) = churn.finish();
        assert!(
            errors.is_empty(),
            "{step}: {} of {made} connections failed: {errors:?}",
            errors.len()
        );
        held.write_all(b"z").unwrap();
        let mut x = [0u8; 1];
        held.read_exact(&mut x).unwrap();
        assert_eq!(&x, b"z", "{step}: the held connection still echoes");
        assert_eq!(
            get(admin, "/api/v1/status").json()["pid"].as_u64(),
            Some(u64::from(lb.child.id()))
        );
        lb.signal(libc::SIGTERM);
        drop(held);
        assert_eq!(lb.wait_exit(Duration::from_secs(10)).code(), Some(0));
    }
}
