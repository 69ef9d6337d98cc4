//! Child processes and what `/proc` says about them.
//!
//! Owns starting a contender, backend or tool with its output in a log file in the run's
//! temp directory, stopping it (SIGTERM, then SIGKILL to its whole process tree), killing it
//! on drop so that nothing outlives the harness, running a tool to completion within a
//! deadline, and the `/proc` readings the workloads need: CPU ticks, PSS, RSS and open
//! descriptors summed over a process tree (nginx's master and workers), listening TCP ports
//! and bound UDP ports (`adopted` keeps the same promises for a process this harness did
//! not spawn itself).
//! Every signal goes to a process this harness started or to one of its descendants.

use std::collections::HashMap;
use std::fmt::Display;
use std::fs::{self, File};
use std::net::{TcpListener, UdpSocket};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::signal::unix::{SignalKind, signal as on_signal};

use crate::procfs::stat_fields;
pub use crate::procfs::{clk_tck, cpu_ticks};

const TAIL_LINES: usize = 25;
pub const STOP_GRACE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(2);

/// Set by SIGINT or SIGTERM to the harness: every wait loop then stops with an error, so
/// that the children are killed on the way out instead of being orphaned.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Catches SIGINT and SIGTERM from now on (a second one exits at once).
pub fn watch_signals() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the signal runtime")?;
    let (mut int, mut term) = rt
        .block_on(async {
            Ok::<_, std::io::Error>((
                on_signal(SignalKind::interrupt())?,
                on_signal(SignalKind::terminate())?,
            ))
        })
        .context("installing signal handlers")?;
    thread::spawn(move || {
        rt.block_on(async move {
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                if INTERRUPTED.swap(true, Ordering::SeqCst) {
                    eprintln!("compare: second signal, exiting at once");
                    std::process::exit(130);
                }
                eprintln!("compare: signal received, stopping every child and exiting");
            }
        });
    });
    Ok(())
}

/// An error once the harness has been asked to stop.
pub fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// A child this harness started. Dropping it kills it and every descendant (unless it was
/// already reaped), so an error anywhere cannot leave a proxy running.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` with stdin from /dev/null, stdout and stderr into `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Proc> {
        Proc::spawn_to(name, cmd, None, log)
    }

    /// Like [`Proc::spawn`], with stdout into its own file `out` when given.
    pub fn spawn_to(name: &str, cmd: &mut Command, out: Option<&Path>, log: &Path) -> Result<Proc> {
        let create =
            |p: &Path| File::create(p).with_context(|| format!("{name}: creating {}", p.display()));
        let err = create(log)?;
        let stdout = match out {
            Some(path) => create(path)?,
            None => err
                .try_clone()
                .with_context(|| format!("{name}: duplicating the log fd"))?,
        };
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(err)
            .spawn()
            .with_context(|| format!("{name}: cannot start `{program}` (is it installed?)"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log: log.to_path_buf(),
            exited: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> i32 {
        // Linux pids are at most 2^22, so they always fit.
        self.child.id() as i32
    }

    /// The exit status once the process has ended (reaping it), `None` while it runs.
    pub fn poll(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            let name = &self.name;
            self.exited = self
                .child
                .try_wait()
                .with_context(|| format!("{name}: waitpid"))?;
        }
        Ok(self.exited)
    }

    /// An error, with the log's tail, if the process has already exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.poll()? {
            Some(status) => Err(self.failure(format!("exited unexpectedly ({status})"))),
            None => Ok(()),
        }
    }

    /// An error naming the process, with the last lines of its log.
    pub fn failure(&self, what: impl Display) -> anyhow::Error {
        let (name, log) = (&self.name, self.log.display());
        anyhow!(
            "{name}: {what}\n--- last lines of {log} ---\n{}",
            self.tail()
        )
    }

    pub fn tail(&self) -> String {
        tail_of(&self.log)
    }

    /// The file its stdout and stderr go to (and those of any process it starts).
    pub fn log(&self) -> &Path {
        &self.log
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        fs::read(&self.log).is_ok_and(|t| String::from_utf8_lossy(&t).contains(needle))
    }

    /// This process and all its descendants, the root first.
    pub fn tree(&self) -> Vec<i32> {
        descendants(self.pid())
    }

    /// utime + stime in clock ticks, summed over the process tree (all threads included).
    pub fn cpu_ticks(&self) -> Result<u64> {
        self.sum_tree(cpu_ticks)
    }

    /// Proportional set size in KiB, summed over the process tree.
    pub fn pss_kib(&self) -> Result<u64> {
        self.sum_tree(pss_kib)
    }

    /// Resident set size in KiB (`VmRSS`), summed over the process tree.
    pub fn rss_kib(&self) -> Result<u64> {
        self.sum_tree(rss_kib)
    }

    /// Open file descriptors, summed over the process tree.
    pub fn open_fds(&self) -> Result<u64> {
        self.sum_tree(|pid| {
            let dir = format!("/proc/{pid}/fd");
            Ok(fs::read_dir(&dir)
                .with_context(|| format!("reading {dir}"))?
                .count() as u64)
        })
    }

    /// The root must be readable; a descendant that vanished meanwhile counts as zero.
    fn sum_tree(&self, read: impl Fn(i32) -> Result<u64>) -> Result<u64> {
        let mut total = 0;
        for (i, pid) in self.tree().into_iter().enumerate() {
            match read(pid) {
                Ok(v) => total += v,
                Err(e) if i == 0 => return Err(e.context(format!("{}: reading /proc", self.name))),
                Err(_) => {}
            }
        }
        Ok(total)
    }

    /// Waits until something listens on 127.0.0.1:`port`, while the process still runs.
    pub fn wait_listening(&mut self, port: u16, timeout: Duration) -> Result<()> {
        let what = format!("nothing listens on port {port}");
        self.wait_for(&what, timeout, || is_listening(port))
    }

    /// Waits until a UDP socket is bound to `port`, while the process still runs.
    pub fn wait_udp_bound(&mut self, port: u16, timeout: Duration) -> Result<()> {
        let what = format!("no UDP socket bound to port {port}");
        self.wait_for(&what, timeout, || is_udp_bound(port))
    }

    /// Polls `ready` until it holds, while the process still runs; `what` names the failure.
    fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut() -> Result<bool>,
    ) -> Result<()> {
        let give_up = Instant::now() + timeout;
        loop {
            self.check_running()?;
            check_interrupt()?;
            if ready()? {
                return Ok(());
            }
            if Instant::now() >= give_up {
                return Err(self.failure(format!("{what} after {timeout:?}")));
            }
            thread::sleep(POLL);
        }
    }

    /// Waits up to `timeout` for the process to end by itself; kills it after that.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let give_up = Instant::now() + timeout;
        loop {
            if let Some(status) = self.poll()? {
                return Ok(status);
            }
            if Instant::now() >= give_up {
                self.kill_tree();
                return Err(self.failure(format!("still running after {timeout:?}; killed")));
            }
            if let Err(e) = check_interrupt() {
                self.kill_tree();
                return Err(e);
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM, up to 5 s to exit, then SIGKILL to the whole tree. An error if it exited
    /// before being asked to, had to be killed, or exited with a failure status.
    pub fn stop(mut self) -> Result<()> {
        let status = self.terminate()?;
        // A clean SIGTERM exit is 0 for every contender; death by the signal is fine too.
        if status.success() || status.signal() == Some(libc::SIGTERM) {
            Ok(())
        } else {
            Err(self.failure(format!("exited with {status} after SIGTERM")))
        }
    }

    /// Like [`Proc::stop`] for a process whose exit status on SIGTERM means nothing
    /// (iperf3 exits 1); dying before being asked is still an error.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        self.check_running()?;
        signal(self.pid(), libc::SIGTERM);
        self.wait_timeout(STOP_GRACE)
    }

    /// SIGKILL to the root first (so that nginx's master cannot respawn a worker), then to
    /// every descendant found before; then reaps the root.
    fn kill_tree(&mut self) {
        if self.exited.is_some() {
            return;
        }
        for pid in self.tree() {
            signal(pid, libc::SIGKILL);
        }
        self.exited = self.child.wait().ok();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.poll() {
            self.kill_tree();
        }
    }
}

/// The last lines of a log file (empty when unreadable).
pub fn tail_of(log: &Path) -> String {
    let text = fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// Runs a tool to completion within `timeout`, stdout and stderr into files in `dir`.
/// Returns stdout; a failure status is an error quoting both.
pub fn run_tool(name: &str, cmd: &mut Command, dir: &Path, timeout: Duration) -> Result<String> {
    let out = dir.join(format!("{name}.out"));
    let mut proc = Proc::spawn_to(name, cmd, Some(&out), &dir.join(format!("{name}.log")))?;
    let status = proc.wait_timeout(timeout)?;
    let stdout =
        fs::read_to_string(&out).with_context(|| format!("{name}: reading {}", out.display()))?;
    if !status.success() {
        let lines: Vec<&str> = stdout.lines().collect();
        let shown = lines[lines.len().saturating_sub(15)..].join("\n");
        return Err(proc.failure(format!(
            "exited with {status}; stdout ends:\n{shown}\n(stderr)"
        )));
    }
    Ok(stdout)
}

/// Every pid passed here is our own unreaped child or one of its descendants (an `Adopted`
/// one checked by its start time); one that has exited meanwhile is not an error worth
/// reporting.
pub fn signal(pid: i32, sig: libc::c_int) {
    let _ = tollgate::sys::signals::kill(pid, sig);
}

/// `pid` and every process descending from it, breadth first.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some(parent) = stat_fields(child).ok().and_then(|f| f.get(1)?.parse().ok()) {
            children.entry(parent).or_default().push(child);
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while let Some(&p) = tree.get(i) {
        tree.extend(children.get(&p).into_iter().flatten());
        i += 1;
    }
    tree
}

fn pss_kib(pid: i32) -> Result<u64> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = text.lines().find_map(|l| l.strip_prefix("Pss:"));
    let kib = line.and_then(|l| l.split_whitespace().next()?.parse().ok());
    kib.with_context(|| format!("no Pss line in {path}"))
}

fn rss_kib(pid: i32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = text.lines().find_map(|l| l.strip_prefix("VmRSS:"));
    let kib = line.and_then(|l| l.split_whitespace().next()?.parse().ok());
    kib.with_context(|| format!("no VmRSS line in {path}"))
}

/// Whether a socket listens on `port` (any local address) per /proc/net/tcp and tcp6.
pub fn is_listening(port: u16) -> Result<bool> {
    socket_in(&["/proc/net/tcp", "/proc/net/tcp6"], port, "0A")
}

/// Whether an unconnected UDP socket (state 07) is bound to `port` per /proc/net/udp and
/// udp6: a listener, not a connected upstream socket that happens to use the port.
pub fn is_udp_bound(port: u16) -> Result<bool> {
    socket_in(&["/proc/net/udp", "/proc/net/udp6"], port, "07")
}

/// Whether one of the `/proc/net` tables lists a socket on local `port` in `state`.
fn socket_in(tables: &[&str], port: u16, state: &str) -> Result<bool> {
    for table in tables {
        let text = fs::read_to_string(table).with_context(|| format!("reading {table}"))?;
        for line in text.lines().skip(1) {
            let mut fields = line.split_whitespace();
            let (Some(local), Some(st)) = (fields.nth(1), fields.nth(1)) else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if st == state && local_port == Some(port) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// A port on 127.0.0.1 that was free a moment ago (the kernel picks it).
pub fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0 to find a free port")?;
    Ok(listener.local_addr().context("local_addr")?.port())
}

/// A port on 127.0.0.1 that was free for UDP and for TCP a moment ago (nsd binds both).
pub fn free_udp_port() -> Result<u16> {
    for _ in 0..20 {
        let socket =
            UdpSocket::bind("127.0.0.1:0").context("binding UDP 127.0.0.1:0 to find a port")?;
        let port = socket.local_addr().context("local_addr")?.port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port free for both UDP and TCP on 127.0.0.1 in 20 tries")
}
