//! Binary upgrade with handover (DESIGN.md §1, `tollgate upgrade`, `SIGUSR2`, `POST
//! /api/v1/upgrade`). The running process starts the binary at the path it was started
//! from (read from disk again, so a package upgrade takes effect), with the same arguments
//! and one inherited Unix socket (`TOLLGATE_UPGRADE_FD`). The steps, each bounded in time:
//!
//! 1. The new process loads its config. Invalid: it says `Refused` with every error and
//!    exits 78; the old one keeps serving and reports the upgrade refused.
//! 2. It says `Hello` (its pid and version; another protocol version is refused by name).
//! 3. The old process pauses its listeners (they stay open, so clients queue in the kernel
//!    rather than being refused) and sends every listening socket, the admin socket, its
//!    counters and its control state (overrides, health, deny lists, DNS answers, what
//!    limited sources owe their rates), then `Done`.
//! 4. The new process serves those sockets (binding whatever its config adds), adds the
//!    old counters to its own, and says `Ready` with the descriptors its open-file limit
//!    leaves room for (`room.rs`); it tells systemd `READY=1`.
//! 5. The old process stops its admin API and freezes its established TCP connections
//!    (`crate::proxy::handoff`): in batches, each with its two sockets, a pipe per
//!    direction that holds bytes, and its state (`Connections`); the new one resumes them
//!    at once and acknowledges the batch (`Adopted`, naming those it cannot serve: their
//!    listener or backend is gone, and its room left), and only then does the old one
//!    close its copies. No batch is sent that does not fit the new process's room: from
//!    the first connection that does not, the old process keeps the rest.
//!    UDP sessions follow, each with its upstream socket (`Sessions`).
//! 6. The handover settles once every connection frozen so far is across and none came
//!    for a moment (or a send failed): the old process then tells systemd `MAINPID=` (the
//!    new process) and drains. Once it owns nothing, it sends what the connections it
//!    finished itself added to the counters, and `Done`, and exits.
//!
//! Until `Ready`, the old process owns everything: if the new one fails at any step (a
//! refused config, a crash, a timeout, a protocol mismatch), it is killed if still running,
//! the old process's listeners resume, and nothing queued is lost. After it, a connection
//! is owned by exactly one process at any instant: one the new process has not
//! acknowledged (it refused it, or died) is resumed by the old one. Until the handover
//! settles, the old process keeps its paused listeners, workers and admin socket: a new
//! process that dies by then leaves it serving again (`connections.rs`, [`old::Settled`]).
//! The new process starts no upgrade of its own until the old one has finished
//! ([`new::still_taking`]).
//!
//! `wire.rs` is the messages, `channel.rs` one end of the socket, `old.rs` and `new.rs`
//! the two sides (`connections.rs`: the old side's established connections; `room.rs`: the
//! new side's descriptor room). The descriptors themselves move through
//! `crate::sys::fdpass`.

mod channel;
mod connections;
pub mod new;
pub mod old;
mod queues;
mod room;
pub mod wire;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use wire::WireError;

/// The environment variable that tells a new process which descriptor is its handover
/// socket.
pub const ENV_FD: &str = "TOLLGATE_UPGRADE_FD";
/// The descriptor number the new process inherits the socket at.
const INHERITED_FD: i32 = 3;
/// The longest any one step may take: a message to arrive or to be taken.
const STEP: Duration = Duration::from_secs(10);

/// How this process was started: what an upgrade starts again.
#[derive(Debug, Clone)]
pub struct Launch {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
}

static LAUNCH: OnceLock<Launch> = OnceLock::new();

/// Notes the binary's path and arguments. Called first thing in `main`: later, a package
/// upgrade may have replaced the file, and `/proc/self/exe` would then name the old,
/// deleted one.
pub fn remember_launch() {
    if let Ok(exe) = std::env::current_exe() {
        let args = std::env::args_os().skip(1).collect();
        let _ = LAUNCH.set(Launch { exe, args });
    }
}

/// How this process was started, when `main` noted it.
pub fn launch() -> Option<&'static Launch> {
    LAUNCH.get()
}

/// Why an upgrade did not happen. The old process keeps serving in every case.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("an upgrade is already in progress")]
    Busy,
    #[error(
        "the previous process is still handing its connections over to this one; upgrade again once it has exited"
    )]
    StillTaking,
    #[error("tollgate is draining for shutdown; upgrades are refused")]
    Draining,
    #[error("this instance cannot upgrade: {0}")]
    Unavailable(String),
    #[error("cannot start the new binary {}: {source}", path.display())]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the new process refused the config:\n{0}")]
    Refused(String),
    #[error("the new process ended before it was ready ({0})")]
    Exited(String),
    #[error("the new process did not answer: the handover socket closed while waiting for {0}")]
    Closed(&'static str),
    #[error("handover ({step}): {source}")]
    Io {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Wire(WireError),
    #[error("handover protocol: {0}")]
    Protocol(String),
    #[error("the other process stopped the upgrade: {0}")]
    Aborted(String),
    #[error("{0}")]
    Local(String),
}

impl UpgradeError {
    /// The `result` label of `tollgate_upgrades_total`: `refused` when the new process
    /// refused its config, `rejected` when no new process was started (one already running,
    /// a drain, no binary path), `failed` for anything else.
    pub fn result(&self) -> &'static str {
        match self {
            UpgradeError::Refused(_) => "refused",
            UpgradeError::Busy
            | UpgradeError::StillTaking
            | UpgradeError::Draining
            | UpgradeError::Unavailable(_) => "rejected",
            _ => "failed",
        }
    }
}
