//! Running the built `tollgate` binary as a child process: config in a temp dir, JSON logs on
//! stderr collected by a thread, bound addresses read from the "listener bound" log lines.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Running {
    pub child: Child,
    pub logs: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tollgate")
}

/// Starts `tollgate run` on `yaml`, optionally under `prlimit` with an open-file limit, and
/// returns at once (`Running::addr` waits for the bound address).
pub fn spawn(yaml: &str, nofile: Option<u64>) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    std::fs::write(&path, yaml).unwrap();
    let cmd = match nofile {
        Some(n) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg(bin());
            c
        }
        None => Command::new(bin()),
    };
    launch(cmd, &path, dir, "json")
}

/// [`spawn`] with environment variables set for the process (`NOTIFY_SOCKET`, say).
pub fn spawn_env(yaml: &str, env: &[(&str, &str)]) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut cmd = Command::new(bin());
    cmd.envs(env.iter().copied());
    launch(cmd, &path, dir, "json")
}

/// Starts `tollgate run` on the config file at `path` (which the test may rewrite and reload).
pub fn spawn_file(path: &std::path::Path) -> Running {
    launch(
        Command::new(bin()),
        path,
        tempfile::tempdir().unwrap(),
        "json",
    )
}

/// Starts the binary at `exe` (a copy of tollgate, which an upgrade test may replace) with
/// `run` on the config file at `path`.
pub fn spawn_exe(exe: &std::path::Path, path: &std::path::Path) -> Running {
    launch(
        Command::new(exe),
        path,
        tempfile::tempdir().unwrap(),
        "json",
    )
}

/// [`spawn_exe`] under `prlimit` with the open-file limit `nofile` (soft and hard).
pub fn spawn_exe_nofile(exe: &std::path::Path, path: &std::path::Path, nofile: u64) -> Running {
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={nofile}:{nofile}")).arg(exe);
    launch(cmd, path, tempfile::tempdir().unwrap(), "json")
}

/// [`spawn_exe`] with environment variables set for the process.
pub fn spawn_exe_env(
    exe: &std::path::Path,
    path: &std::path::Path,
    env: &[(&str, &str)],
) -> Running {
    let mut cmd = Command::new(exe);
    cmd.envs(env.iter().copied());
    launch(cmd, path, tempfile::tempdir().unwrap(), "json")
}

/// [`spawn_file`] with the log lines an operator reads on a terminal (`--log-format text`).
pub fn spawn_file_text(path: &std::path::Path) -> Running {
    launch(
        Command::new(bin()),
        path,
        tempfile::tempdir().unwrap(),
        "text",
    )
}

fn launch(
    mut cmd: Command,
    path: &std::path::Path,
    dir: tempfile::TempDir,
    log_format: &str,
) -> Running {
    cmd.args(["run", "--log-format", log_format, "-c"])
        .arg(path);
    cmd.env("TOLLGATE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // A binary copied just now may be open for writing in a child another test thread
    // forked meanwhile (until it execs): ETXTBSY for a moment.
    let mut tries = 0;
    let mut child = loop {
        match cmd.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            spawned => break spawned.expect("tollgate binary starts"),
        }
    };
    let logs = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            sink.lock().unwrap().push(line);
        }
    });
    Running {
        child,
        logs,
        _dir: dir,
    }
}

impl Running {
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self
                .logs
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?} within {within:?}; logs:\n{}",
                self.logs.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// The address from the first "listener bound" line.
    pub fn addr(&self) -> SocketAddr {
        addr_field(&self.wait_log("listener bound", Duration::from_secs(20)))
    }

    /// The address of the most recent log line containing every one of `needles`.
    pub fn logged_addr(&self, needles: &[&str]) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self
                .logs
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .cloned();
            if let Some(line) = found {
                return addr_field(&line);
            }
            assert!(Instant::now() < deadline, "no log line with {needles:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Open descriptors of the process that are sockets.
    pub fn sockets(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter(|e| {
                        std::fs::read_link(e.path())
                            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    pub fn signal(&self, sig: libc::c_int) {
        // Through the `kill` command, so the tests need no unsafe code.
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for exit within `within`; kills and panics on timeout.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                if std::env::var_os("TOLLGATE_TEST_STACKS").is_some() {
                    let _ = Command::new("gdb")
                        .args(["-batch", "-ex", "thread apply all bt", "-p"])
                        .arg(self.child.id().to_string())
                        .status();
                }
                let _ = self.child.kill();
                panic!(
                    "tollgate did not exit within {within:?}; logs:\n{}",
                    self.logs.lock().unwrap().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// User + system CPU time of the process so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        let hz = 100; // USER_HZ is 100 on every Linux ABI tollgate supports
        Duration::from_millis(ticks * 1000 / hz)
    }
}

fn addr_field(line: &str) -> SocketAddr {
    let start = line.find("\"addr\":\"").expect("addr field") + 8;
    let end = line[start..].find('"').unwrap() + start;
    line[start..end].parse().unwrap()
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
