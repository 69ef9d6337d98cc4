//! Binary-upgrade tests' harness: an installed copy of the binary that a test may replace,
//! a process it did not start (the new one), a churn of short connections, paced echo
//! transfers, and the admin API's upgrade and metrics.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::binary::{self, Running};
use super::http::{get, request};
use super::{Pattern, digest_of, round_trip, wait_for};

/// A copy of the tollgate binary in its own directory, and a config file beside it.
pub struct Install {
    dir: tempfile::TempDir,
}

impl Install {
    pub fn new(yaml: &str) -> Install {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(binary::bin(), dir.path().join("tollgate")).unwrap();
        std::fs::write(dir.path().join("tollgate.yaml"), yaml).unwrap();
        Install { dir }
    }

    pub fn exe(&self) -> PathBuf {
        self.dir.path().join("tollgate")
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("tollgate.yaml")
    }

    /// Replaces the installed binary with a shell script, as a broken package would.
    pub fn replace_with_script(&self, script: &str) {
        let tmp = self.dir.path().join("tollgate.new");
        std::fs::write(&tmp, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        std::fs::rename(&tmp, self.exe()).unwrap();
    }

    /// Puts the real binary back (a new file, as a package upgrade writes it).
    pub fn restore(&self) {
        let tmp = self.dir.path().join("tollgate.new");
        std::fs::copy(binary::bin(), &tmp).unwrap();
        std::fs::rename(&tmp, self.exe()).unwrap();
    }

    pub fn start(&self) -> Running {
        binary::spawn_exe(&self.exe(), &self.config())
    }
}

pub fn yaml(backend: SocketAddr) -> String {
    yaml_with(&[backend])
}

pub fn yaml_with(backends: &[SocketAddr]) -> String {
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
pub struct Adopted(pub u32);

impl Adopted {
    pub fn alive(&self) -> bool {
        Path::new(&format!("/proc/{}", self.0)).exists() && !is_zombie(self.0)
    }

    /// SIGTERM, then waits for the process to be gone.
    pub fn stop(&self, within: Duration) {
        kill(self.0, "-TERM");
        wait_for("the new process to exit", within, || !self.alive());
    }
}

impl Adopted {
    /// The new process an upgrade's answer names (`{"pid": N}`).
    pub fn of(answer: &super::http::Answer) -> Adopted {
        Adopted::pid(&answer.json())
    }

    /// The new process `body["pid"]` names.
    pub fn pid(body: &serde_json::Value) -> Adopted {
        let pid = body["pid"].as_u64().expect("the new process's pid");
        Adopted(u32::try_from(pid).unwrap())
    }
}

impl Drop for Adopted {
    fn drop(&mut self) {
        if self.alive() {
            kill(self.0, "-KILL");
        }
    }
}

pub fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

pub fn kill(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status();
}

/// Short connections through `front`, one after another, each echoing a few bytes, until
/// stopped; every failure is kept.
pub struct Churn {
    stop: Arc<AtomicBool>,
    made: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Churn {
    pub fn start(front: SocketAddr) -> Churn {
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

    pub fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }

    pub fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self.thread.take().unwrap().join().unwrap();
        (self.made(), errors)
    }

    /// Stops it, and asserts that not one of its connections failed.
    pub fn finish_clean(self) {
        let (made, errors) = self.finish();
        assert!(
            errors.is_empty(),
            "{} of {made} connections failed: {errors:?}",
            errors.len()
        );
    }
}

pub fn admin_of(lb: &Running) -> SocketAddr {
    lb.logged_addr(&["admin API listening"])
}

/// The value of the sample `series` (name and labels as `/metrics` prints them).
pub fn metric(admin: SocketAddr, series: &str) -> f64 {
    let body = get(admin, "/metrics").body;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{body}"))
}

pub fn upgrade(admin: SocketAddr) -> super::http::Answer {
    request(admin, "POST", "/api/v1/upgrade", None, "")
}

/// A transfer through the balancer to an echo backend: `len` pattern bytes sent in paced
/// chunks, read back in full and hashed; `half_close`: the client ends its side with a FIN
/// once it has sent everything, and reads the echo to the backend's close. Returns a
/// thread that yields (bytes echoed, SHA-256).
pub fn paced_echo(
    front: SocketAddr,
    seed: u64,
    len: u64,
    half_close: bool,
) -> std::thread::JoinHandle<(u64, [u8; 32])> {
    let stream = std::net::TcpStream::connect(front).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = stream;
    let sending = std::thread::spawn(move || {
        let mut pattern = Pattern::new(seed, len);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = pattern.fill(&mut buf);
            if n == 0 {
                break;
            }
            writer.write_all(&buf[..n]).unwrap();
            // About 16 MB/s: the transfer is surely in flight when the upgrade comes.
            std::thread::sleep(Duration::from_millis(4));
        }
        writer
    });
    std::thread::spawn(move || {
        let mut h = <sha2::Sha256 as sha2::Digest>::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        let mut sending = Some(sending);
        let mut writer = None;
        while total < len {
            let n = reader.read(&mut buf).unwrap();
            assert!(n > 0, "the echo ended after {total} of {len} bytes");
            total += n as u64;
            sha2::Digest::update(&mut h, &buf[..n]);
            // Half-closed as soon as everything is sent, while the echo still flows.
            if half_close && sending.as_ref().is_some_and(|s| s.is_finished()) {
                let w = sending.take().unwrap().join().unwrap();
                w.shutdown(std::net::Shutdown::Write).unwrap();
                writer = Some(w);
            }
        }
        if let Some(s) = sending.take() {
            writer = Some(s.join().unwrap());
        }
        if half_close {
            let _ = writer
                .as_ref()
                .map(|w| w.shutdown(std::net::Shutdown::Write));
            // The backend saw the FIN and closed: EOF here.
            assert_eq!(reader.read(&mut buf).unwrap(), 0, "EOF after a half-close");
        }
        drop(writer);
        (total, sha2::Digest::finalize(h).into())
    })
}

/// A [`paced_echo`] transfer in flight: its number and its thread.
pub type Transfer = (u64, std::thread::JoinHandle<(u64, [u8; 32])>);

/// Every [`paced_echo`] transfer (`(i, thread)`, seeded `seed + i`) came back whole and
/// byte-exact.
pub fn assert_transfers_exact(transfers: Vec<Transfer>, seed: u64, len: u64) {
    for (i, t) in transfers {
        let (n, digest) = t.join().unwrap();
        assert_eq!(n, len, "transfer {i}");
        assert_eq!(
            digest,
            digest_of(seed + i, len),
            "transfer {i}: every byte exact"
        );
    }
}

/// Every held connection still echoes (two bytes: its index and `tag`).
pub fn assert_held_echo(held: &mut [std::net::TcpStream], tag: u8) {
    for (i, s) in held.iter_mut().enumerate() {
        s.write_all(&[i as u8, tag]).unwrap();
        let mut b = [0u8; 2];
        s.read_exact(&mut b).unwrap();
        assert_eq!(b, [i as u8, tag], "held connection {i} still echoes");
    }
}
