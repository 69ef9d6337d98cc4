//! A process the harness did not spawn itself but that descends from one it did: the new
//! process of a binary upgrade (tollgate's, nginx's new master), started by the old one and
//! re-parented away when that one exits, so that nothing here reaps it.
//!
//! Owns knowing such a process by pid and start time (a pid reused after it ended is never
//! signalled), whether it still runs, stopping it (SIGTERM, then waiting for it to vanish
//! from /proc or turn zombie: its exit status is its new parent's to see), and killing it
//! and its descendants on drop, so that an error anywhere cannot leave it running. The
//! bench's own children stay `procs::Proc`'s.

use std::fmt::Display;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::procfs::stat_fields;
use crate::procs::{Proc, STOP_GRACE, check_interrupt, descendants, signal, tail_of};

/// A process that descends from one this harness started but is not its child (the new
/// process of a binary upgrade, started by the old one and re-parented away when that one
/// exits), so nothing reaps it here. Known by its pid and its start time, so a pid reused
/// after it ended is never signalled; dropping it kills it and its descendants, so an error
/// anywhere cannot leave it running.
pub struct Adopted {
    name: String,
    pid: i32,
    /// Field 22 of /proc/PID/stat: with the pid, the process's identity.
    started: String,
    log: PathBuf,
}

impl Adopted {
    /// `pid`, which must descend from `parent`, or run `exe` once `parent` is gone (it
    /// exits when the upgrade is done, and the new process is re-parented): proof it is ours
    /// to signal.
    pub fn new(name: &str, pid: i32, parent: &Proc, exe: &Path) -> Result<Adopted> {
        let started = start_time(pid).with_context(|| format!("{name}: pid {pid} is gone"))?;
        let exe = fs::canonicalize(exe).unwrap_or_else(|_| exe.to_path_buf());
        let runs_exe = fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == exe);
        let parent_gone = !is_running(parent.pid());
        let ours = parent.tree().contains(&pid) || (parent_gone && runs_exe);
        if !ours {
            bail!(
                "{name}: pid {pid} does not descend from {} (pid {}), nor runs {} after it",
                parent.name(),
                parent.pid(),
                exe.display()
            );
        }
        Ok(Adopted {
            name: name.to_owned(),
            pid,
            started,
            log: parent.log().to_path_buf(),
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Still the same process, and not a zombie waiting for a parent to reap it.
    pub fn alive(&self) -> bool {
        start_time(self.pid).is_ok_and(|s| s == self.started) && is_running(self.pid)
    }

    /// An error naming the process, with the last lines of the log it writes to.
    pub fn failure(&self, what: impl Display) -> anyhow::Error {
        let (name, pid, log) = (&self.name, self.pid, self.log.display());
        anyhow!(
            "{name} (pid {pid}): {what}\n--- last lines of {log} ---\n{}",
            tail_of(&self.log)
        )
    }

    /// SIGTERM, then up to 5 s for it to be gone; SIGKILL to its tree after that. Its exit
    /// status is its new parent's to see, not ours: only dying before being asked is an error.
    pub fn stop(self) -> Result<()> {
        if !self.alive() {
            return Err(self.failure("exited before it was stopped"));
        }
        signal(self.pid, libc::SIGTERM);
        let give_up = Instant::now() + STOP_GRACE;
        while self.alive() {
            if Instant::now() >= give_up {
                return Err(self.failure(format!("still running {STOP_GRACE:?} after SIGTERM")));
            }
            check_interrupt()?;
            thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}

impl Drop for Adopted {
    fn drop(&mut self) {
        if self.alive() {
            for pid in descendants(self.pid) {
                signal(pid, libc::SIGKILL);
            }
        }
    }
}

/// Field 22 of /proc/PID/stat, the start time in clock ticks since boot.
fn start_time(pid: i32) -> Result<String> {
    let fields = stat_fields(pid)?;
    fields
        .get(19)
        .cloned()
        .with_context(|| format!("/proc/{pid}/stat has no start time"))
}

/// Whether `pid` exists and is not a zombie.
pub fn is_running(pid: i32) -> bool {
    stat_fields(pid).is_ok_and(|f| f.first().is_some_and(|state| state != "Z"))
}
