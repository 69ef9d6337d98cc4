//! The files tollgate reads — its config and `admin.token_file` — must be regular files of a
//! bounded size (config 4 MiB, token 4 KiB). A device that never ends (`/dev/zero`), a FIFO
//! that blocks whoever opens it, a directory or an oversized file is refused with one clear
//! line within a second, by `check`, by `run` and by a reload, which then changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::binary::{self, bin};
use common::http::request;

const GOOD: &str = "listeners:\n  web:\n    bind: \"127.0.0.1:0\"\n    pool: web\npools:\n  web:\n    backends:\n      - address: \"127.0.0.1:9001\"\n";

/// A FIFO at `path`, made by coreutils' `mkfifo` (the tests use no unsafe code).
fn fifo(path: &Path) -> PathBuf {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
    path.to_owned()
}

/// A file of `len` bytes of YAML comment: valid text, too large.
fn oversized(path: &Path, len: usize) -> PathBuf {
    let mut text = String::from("# ");
    text.push_str(&"x".repeat(len));
    std::fs::write(path, text).unwrap();
    path.to_owned()
}

/// The bad inputs, by name: each must be refused with its own reason.
fn bad_inputs(dir: &Path, oversize: usize) -> Vec<(&'static str, PathBuf, &'static str)> {
    let big = oversized(&dir.join("big"), oversize);
    vec![
        ("/dev/zero", PathBuf::from("/dev/zero"), "character device"),
        ("a FIFO", fifo(&dir.join("fifo")), "FIFO"),
        ("a directory", dir.join("."), "directory"),
        ("an oversized file", big, "larger than the limit"),
    ]
}

/// Runs `tollgate ARGS`, killing it after 5 s; returns (exit code, stderr, time taken).
fn timed(args: &[&str], config: &Path) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(bin())
        .args(args)
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if started.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = started.elapsed();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (code, stderr, took)
}

fn assert_refused(what: &str, (code, stderr, took): (Option<i32>, String, Duration), words: &str) {
    assert_eq!(
        code,
        Some(78),
        "{what}: exit {code:?} after {took:?}: {stderr}"
    );
    assert!(took < Duration::from_secs(1), "{what}: took {took:?}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: one line, got: {stderr}");
    assert!(lines[0].contains(words), "{what}: no {words:?} in {stderr}");
}

#[test]
fn check_refuses_a_config_that_is_not_a_bounded_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    for (what, path, words) in bad_inputs(dir.path(), 5 * 1024 * 1024) {
        let got = timed(&["check"], &path);
        assert_refused(what, got, words);
    }
}

#[test]
fn run_refuses_a_config_that_is_not_a_bounded_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    for (what, path, words) in bad_inputs(dir.path(), 5 * 1024 * 1024) {
        let got = timed(&["run"], &path);
        assert_refused(what, got, words);
    }
}

#[test]
fn check_refuses_a_token_file_that_is_not_a_bounded_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("t.yaml");
    for (what, token, words) in bad_inputs(dir.path(), 5 * 1024) {
        let yaml = format!(
            "admin:\n  bind: \"127.0.0.1:0\"\n  token_file: \"{}\"\n{GOOD}",
            token.display()
        );
        std::fs::write(&config, yaml).unwrap();
        let (code, stderr, took) = timed(&["check"], &config);
        let stderr = stderr.replace(&config.display().to_string(), "t.yaml");
        assert!(
            stderr.starts_with("t.yaml:3:15: admin.token_file: "),
            "{what}: {stderr}"
        );
        assert_refused(what, (code, stderr, took), words);
    }
}

/// A reload that meets such a file answers 400 at once with the reason and changes nothing;
/// the instance keeps serving.
#[test]
fn a_reload_refuses_them_at_once_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("t.yaml");
    let token = dir.path().join("admin.token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let with_token = |token: &Path| {
        format!(
            "admin:\n  bind: \"127.0.0.1:0\"\n  token_file: \"{}\"\n{GOOD}",
            token.display()
        )
    };
    std::fs::write(&config, with_token(&token)).unwrap();
    let lb = binary::spawn_file(&config);
    let admin = lb.logged_addr(&["admin API listening"]);
    for (what, bad, words) in bad_inputs(dir.path(), 5 * 1024) {
        std::fs::write(&config, with_token(&bad)).unwrap();
        let started = Instant::now();
        let r = request(admin, "POST", "/api/v1/reload", Some("s3cret"), "");
        assert!(started.elapsed() < Duration::from_secs(1), "{what}: slow");
        assert_eq!(r.status, 400, "{what}: {}", r.body);
        assert!(r.body.contains(words), "{what}: {}", r.body);
    }
    // The config file itself replaced by a FIFO.
    std::fs::remove_file(&config).unwrap();
    fifo(&config);
    let started = Instant::now();
    let r = request(admin, "POST", "/api/v1/reload", Some("s3cret"), "");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "FIFO config: slow"
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("FIFO"), "{}", r.body);
    let status = common::http::get(admin, "/api/v1/status").json();
    assert_eq!(status["generation"], 1, "nothing changed");
}
