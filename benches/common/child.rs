//! A tollgate child process for the benchmarks (`throughput` and `pipes` include this file
//! with `#[path]`): started from the release binary with a given config, optionally under
//! another user (a command prefix such as `setpriv --reuid=65534 ...`), its bound address
//! read from its JSON log, stopped with `SIGTERM` (a non-zero exit fails the run) and killed
//! on drop so a failed run never leaves it behind.

use std::collections::VecDeque;
use std::fmt::Display;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use std::{fs, thread};
use tempfile::TempDir;

/// The benchmarks' error: a message with its context.
pub type Res<T> = Result<T, String>;

/// Adds context to an error, turning it into the bench's `String` error.
pub trait Ctx<T> {
    fn ctx(self, what: impl Display) -> Res<T>;
}

impl<T, E: Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: impl Display) -> Res<T> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const TAIL_LINES: usize = 20;

type Tail = Arc<Mutex<VecDeque<String>>>;

/// A running tollgate child; killed on drop unless stopped cleanly.
pub(crate) struct Tollgate {
    child: Child,
    tail: Tail,
    _config_dir: TempDir,
}

impl Tollgate {
    /// Starts tollgate with `yaml` (its listener must be named `bench`), behind the command
    /// `prefix` (empty: run it directly); returns it with the listener's address. The config
    /// is world-readable, so that a prefix that switches to another user still reads it.
    pub(crate) fn start(exe: &Path, yaml: &str, prefix: &[&str]) -> Res<(Self, SocketAddr)> {
        let config_dir = tempfile::tempdir().ctx("creating tempdir")?;
        let config = config_dir.path().join("tollgate.yaml");
        fs::write(&config, yaml).ctx("writing config")?;
        for (path, mode) in [(config_dir.path(), 0o755), (config.as_path(), 0o644)] {
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).ctx("chmod")?;
        }
        let (program, args) = match prefix.split_first() {
            Some((program, args)) => (Path::new(program), args),
            None => (exe, &[][..]),
        };
        let mut command = Command::new(program);
        command.args(args);
        if !prefix.is_empty() {
            command.arg(exe);
        }
        let mut child = command
            .args(["run", "-c"])
            .arg(&config)
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .ctx(format!("spawning {}", program.display()))?;
        let (stderr, tail) = (child.stderr.take(), Tail::default());
        let mut tollgate = Tollgate {
            child,
            tail,
            _config_dir: config_dir,
        };
        let stderr = stderr.ok_or("tollgate stderr was not captured")?;
        let (tx, rx) = mpsc::channel();
        let tail = Arc::clone(&tollgate.tail);
        thread::spawn(move || watch_stderr(stderr, tx, tail));
        match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(addr) => Ok((tollgate, addr)),
            Err(RecvTimeoutError::Timeout) => Err(tollgate.failure("no 'listener bound' log")),
            Err(RecvTimeoutError::Disconnected) => {
                let status = tollgate.child.wait().ctx("waiting for tollgate")?;
                Err(tollgate.failure(format!("tollgate exited during startup ({status})")))
            }
        }
    }

    pub(crate) fn pid(&self) -> Res<i32> {
        i32::try_from(self.child.id()).ctx("child pid")
    }

    /// Sends SIGTERM and requires a zero exit status within `STOP_TIMEOUT`.
    pub(crate) fn stop(mut self) -> Res<()> {
        // The pid is our own unreaped child, so it cannot have been recycled.
        tollgate::sys::signals::kill(self.pid()?, libc::SIGTERM).ctx("kill(SIGTERM)")?;
        let give_up = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < give_up {
            match self.child.try_wait().ctx("waiting for tollgate")? {
                Some(status) if status.success() => return Ok(()),
                Some(status) => return Err(self.failure(format!("tollgate exited: {status}"))),
                None => thread::sleep(Duration::from_millis(20)),
            }
        }
        Err(self.failure("tollgate did not exit within 10 s of SIGTERM"))
    }

    fn failure(&self, what: impl Display) -> String {
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        let lines: Vec<&str> = tail.iter().map(String::as_str).collect();
        format!("{what}; last stderr lines:\n{}", lines.join("\n"))
    }
}

impl Drop for Tollgate {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads tollgate's stderr to EOF (so the child never blocks on it), reports
/// the bound address once and keeps the last lines for error messages.
fn watch_stderr(stderr: ChildStderr, tx: Sender<SocketAddr>, tail: Tail) {
    let mut tx = Some(tx);
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if let Some(addr) = bound_addr(&line)
            && let Some(tx) = tx.take()
        {
            let _ = tx.send(addr);
        }
        let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

/// Parses `{"fields":{"message":"listener bound","listener":"bench","addr":"..."}}`.
fn bound_addr(line: &str) -> Option<SocketAddr> {
    let message = json_str(line, "message")?;
    let ours = message == "listener bound" && json_str(line, "listener")? == "bench";
    if !ours {
        return None;
    }
    json_str(line, "addr")?.parse().ok()
}

/// The first string value of `"key": "value"` in a JSON line (no escapes).
fn json_str<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let (_, rest) = line.split_once(&format!("\"{key}\""))?;
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let (value, _) = rest.strip_prefix('"')?.split_once('"')?;
    Some(value)
}
