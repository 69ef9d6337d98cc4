//! The balancer the upgrade workload upgrades, and how each contender does it: tollgate's
//! `POST /api/v1/upgrade` (answered by the old process once the new one serves; the old
//! one then hands its connections over and exits; the new one, which the old one started,
//! is adopted from the answer and stopped at the end), and HAProxy's master-worker reload
//! (SIGUSR2 to the master, which re-executes itself; the new worker takes the listening
//! sockets over with `-x`, the old one keeps its connections until `hard-stop-after`).
//!
//! Owns starting each one, timing the request to the old process's exit (tollgate's is the
//! bench's child; HAProxy's old worker is the master's, watched through /proc), and
//! stopping whatever serves at the end. It measures; the figures are `upgrade`'s.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};
use std::{env, fs};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::Ctx;
use crate::adopted::{self, Adopted};
use crate::contenders::{self, Contender};
use crate::procs::{self, Proc, check_interrupt, free_port};
use crate::report::Results;

/// How long HAProxy's old worker may keep its connections after a reload: without a bound
/// it never exits while a held connection stays open.
pub const HARD_STOP: Duration = Duration::from_secs(2);
/// Past this the old process is taken to be stuck: the run fails.
const EXIT_BOUND: Duration = Duration::from_secs(30);
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A balancer being upgraded: the process the bench started (tollgate's first process,
/// HAProxy's master) and, once upgraded, tollgate's new process.
pub struct Balancer {
    c: Contender,
    pub port: u16,
    admin: Option<u16>,
    proc: Proc,
    successor: Option<Adopted>,
    /// What the upgrade reported for the summary line (tollgate: connections handed over).
    said: String,
}

impl Balancer {
    pub fn start(ctx: &Ctx, c: Contender, backend: u16) -> Result<Balancer> {
        let (port, admin, proc) = match c {
            Contender::Tollgate => {
                let mut running = contenders::start(ctx, c, backend)?;
                let proc = running.proc.take().context("tollgate without a process")?;
                (running.port, running.admin, proc)
            }
            Contender::Haproxy => {
                let (port, proc) = start_haproxy(ctx, backend)?;
                (port, None, proc)
            }
            _ => bail!("{c}: the upgrade workload runs tollgate and haproxy"),
        };
        Ok(Balancer {
            c,
            port,
            admin,
            proc,
            successor: None,
            said: String::new(),
        })
    }

    /// Upgrades (reloads) and waits for the old process to be gone: the time that took.
    pub fn upgrade(&mut self, ctx: &Ctx, res: &mut Results) -> Result<Duration> {
        match self.c {
            Contender::Tollgate => self.upgrade_tollgate(ctx),
            _ => self.reload_haproxy(res),
        }
    }

    /// `POST /api/v1/upgrade`: answered by the old process once the new one serves; the old
    /// one then hands its connections over and exits 0.
    fn upgrade_tollgate(&mut self, ctx: &Ctx) -> Result<Duration> {
        let admin = self.admin.context("tollgate without an admin port")?;
        let asked = Instant::now();
        let (status, body, answered) = contenders::admin_request(admin, "POST", "/api/v1/upgrade")?;
        let reply: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let pid = reply["pid"].as_i64().and_then(|p| i32::try_from(p).ok());
        let (Some(pid), true) = (pid, status == 200) else {
            return Err(self.failure(format!("upgrade answered {status}: {body}")));
        };
        // Adopted first, so that it is stopped whatever goes wrong from here on.
        let new = Adopted::new("tollgate (new)", pid, &self.proc, &ctx.tollgate)?;
        self.successor = Some(new);
        if reply["previous_pid"].as_i64() != Some(self.proc.pid().into()) {
            bail!(
                "tollgate: the upgrade's answer {body} does not name the bench's process as previous_pid"
            );
        }
        let (status, took) = wait_exit(&mut self.proc, asked)?;
        if !status.success() {
            return Err(self.failure(format!("the old process exited with {status}")));
        }
        let moved = handed_over(admin).unwrap_or_else(|e| format!("? ({e:#})"));
        self.said = format!(
            "; answered after {:.0} ms, {moved} connections handed over",
            answered.as_secs_f64() * 1000.0
        );
        Ok(took)
    }

    /// SIGUSR2 to HAProxy's master: it re-executes itself, starts a new worker that takes
    /// the listeners with `-x`, and tells the old worker to stop; the old worker finishes
    /// (or, at `hard-stop-after`, cuts) its connections and exits.
    fn reload_haproxy(&mut self, res: &mut Results) -> Result<Duration> {
        let master = self.proc.pid();
        let workers: Vec<i32> = self.proc.tree().into_iter().skip(1).collect();
        let [old] = workers[..] else {
            bail!("haproxy: the master has workers {workers:?}, want one");
        };
        let exe = fs::read_link(format!("/proc/{old}/exe")).context("haproxy worker's exe")?;
        let old = Adopted::new("haproxy (old worker)", old, &self.proc, &exe)?;
        let asked = Instant::now();
        procs::signal(master, libc::SIGUSR2);
        let give_up = asked + HARD_STOP + EXIT_BOUND;
        let (mut new, mut checked) = (None, asked);
        let took = loop {
            self.proc.check_running()?;
            check_interrupt()?;
            let now = Instant::now();
            // The whole process tree is read only every 50 ms; the old worker every 1 ms.
            if new.is_none() && now - checked >= Duration::from_millis(50) {
                checked = now;
                let tree = self.proc.tree();
                new = tree.into_iter().skip(1).find(|&p| p != old.pid());
            }
            if !old.alive() {
                break asked.elapsed();
            }
            if now >= give_up {
                return Err(self.failure(format!(
                    "the old worker still runs after {:?}",
                    give_up - asked
                )));
            }
            thread::sleep(Duration::from_millis(1));
        };
        let new = match new {
            Some(p) => p,
            None => self.wait_new_worker()?,
        };
        // The new worker's arguments show how it got the listeners: `-x` and where from.
        let args = fs::read(format!("/proc/{new}/cmdline")).unwrap_or_default();
        let args: Vec<String> = (args.split(|&b| b == 0))
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let Some(from) = args
            .iter()
            .position(|a| a == "-x")
            .and_then(|i| args.get(i + 1))
        else {
            bail!(
                "haproxy: the new worker runs `{}`: no -x, the listeners were not taken over",
                args.join(" ")
            );
        };
        res.note(format!(
            "upgrade / haproxy: `hard-stop-after {}s`; the reloaded worker took the listeners \
             with `-x {from}`",
            HARD_STOP.as_secs()
        ));
        Ok(took)
    }

    /// The new worker, when the old one was gone before the tree was read.
    fn wait_new_worker(&mut self) -> Result<i32> {
        let give_up = Instant::now() + READY_TIMEOUT;
        while Instant::now() < give_up {
            self.proc.check_running()?;
            if let Some(&p) = self.proc.tree().get(1) {
                return Ok(p);
            }
            thread::sleep(Duration::from_millis(10));
        }
        Err(self.failure("no new worker after the reload"))
    }

    pub fn said(&self) -> &str {
        &self.said
    }

    pub fn failure(&self, what: impl std::fmt::Display) -> anyhow::Error {
        match &self.successor {
            Some(new) if !self.proc_running() => new.failure(what),
            _ => self.proc.failure(what),
        }
    }

    fn proc_running(&self) -> bool {
        adopted::is_running(self.proc.pid())
    }

    /// Stops what serves now: tollgate's new process, or HAProxy's master and its worker.
    pub fn stop(self) -> Result<()> {
        match self.successor {
            Some(new) => new.stop(),
            None => self.proc.stop(),
        }
    }
}

/// Waits for the bench's own child to exit; returns its status and the time since `asked`.
fn wait_exit(proc: &mut Proc, asked: Instant) -> Result<(ExitStatus, Duration)> {
    loop {
        if let Some(status) = proc.poll()? {
            return Ok((status, asked.elapsed()));
        }
        if asked.elapsed() >= EXIT_BOUND {
            return Err(proc.failure(format!("the old process still runs after {EXIT_BOUND:?}")));
        }
        check_interrupt()?;
        thread::sleep(Duration::from_millis(1));
    }
}

/// `tollgate_upgrade_connections_handed_over_total` from the new process's admin API.
fn handed_over(admin: u16) -> Result<String> {
    let (_, body, _) = contenders::admin_request(admin, "GET", "/metrics")?;
    let name = "tollgate_upgrade_connections_handed_over_total ";
    let line = body.lines().find_map(|l| l.strip_prefix(name));
    Ok(line.context("no such metric")?.trim().to_owned())
}

/// HAProxy in master-worker mode (`-W`), otherwise configured as the `haproxy` contender.
fn start_haproxy(ctx: &Ctx, backend: u16) -> Result<(u16, Proc)> {
    let exe = which("haproxy")?;
    for _ in 0..3 {
        let dir = ctx.run_dir("haproxy-upgrade")?;
        let port = free_port()?;
        let cfg = dir.join("haproxy.cfg");
        let text = haproxy_cfg(&dir, port, backend, ctx.max_conns());
        fs::write(&cfg, text).with_context(|| format!("writing {}", cfg.display()))?;
        let mut cmd = Command::new(&exe);
        cmd.args(["-W", "-db", "-f"]).arg(&cfg);
        let mut proc = Proc::spawn("haproxy", &mut cmd, &dir.join("haproxy.log"))?;
        match proc.wait_listening(port, READY_TIMEOUT) {
            Ok(()) => return Ok((port, proc)),
            Err(_) if contenders::port_clash(&mut proc) => continue,
            Err(e) => return Err(e),
        }
    }
    bail!("haproxy: could not bind a free port in 3 attempts")
}

/// The `haproxy` contender's TCP proxy, plus `hard-stop-after`, and a stats socket that
/// exposes the listeners (2.6's master passes them on through the worker's socket pair,
/// `-x sockpair@`, either way).
fn haproxy_cfg(dir: &Path, port: u16, backend: u16, maxconn: u64) -> String {
    format!(
        "global\n    nbthread 2\n    maxconn {maxconn}\n    maxpipes 256\n\
         \x20   hard-stop-after {}s\n\
         \x20   stats socket {} mode 600 level admin expose-fd listeners\n\
         defaults\n    mode tcp\n    maxconn {maxconn}\n    timeout connect 5s\n\
         \x20   timeout client 10m\n    timeout server 10m\n\
         frontend bench\n    bind 127.0.0.1:{port}\n    default_backend backend\n\
         backend backend\n    server b1 127.0.0.1:{backend}\n",
        HARD_STOP.as_secs(),
        dir.join("haproxy.sock").display()
    )
}

/// A tool's full path from `PATH`: a master re-executes itself by the name it was given.
fn which(tool: &str) -> Result<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .with_context(|| format!("`{tool}` is not on PATH"))
}
