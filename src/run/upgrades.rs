//! Binary upgrades of a running `tollgate run`: at most one at a time, carried out on a
//! blocking thread (`crate::upgrade::old`) while the process keeps serving, asked for by
//! SIGUSR2 or through the admin API (whose caller waits for the outcome). Each outcome is
//! logged once here and counted; a new process that dies after it said it serves, before
//! the handover settled, is a second outcome ([`serve_again`]).

use std::future::pending;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::app::{Handover, Server};
use crate::control::{Handle, UpgradeAsk, UpgradeFailure};
use crate::upgrade::UpgradeError;
use crate::upgrade::old::{self, Handed, Moving, Rest};

type Reply = oneshot::Sender<Result<u32, UpgradeFailure>>;
/// The thread carrying out an upgrade, and who waits to hear how it ended.
type Running = (JoinHandle<Result<Handed, UpgradeError>>, Option<Reply>);

pub(super) struct Upgrades {
    handover: Handover,
    running: Option<Running>,
}

/// The next upgrade asked for through the admin API (never, when this process does not
/// take the asks).
pub(super) async fn next_ask(
    asks: &mut Option<tokio::sync::mpsc::Receiver<UpgradeAsk>>,
) -> Option<UpgradeAsk> {
    match asks {
        Some(asks) => asks.recv().await,
        None => pending().await,
    }
}

impl Upgrades {
    pub fn new(server: &Server) -> Upgrades {
        Upgrades {
            handover: server.handover(),
            running: None,
        }
    }

    /// Starts an upgrade, unless one is running or the process is draining; `reply` hears
    /// the outcome.
    pub fn begin(&mut self, control: &Handle, reply: Option<Reply>) {
        let refuse = |e: UpgradeError, reply: Option<Reply>| {
            warn!(error = %e, "binary upgrade refused; this process keeps serving");
            control.count_upgrade(e.result());
            answer(reply, Err(e));
        };
        if self.running.is_some() {
            return refuse(UpgradeError::Busy, reply);
        }
        if crate::upgrade::new::still_taking() {
            return refuse(UpgradeError::StillTaking, reply);
        }
        if control.draining() {
            return refuse(UpgradeError::Draining, reply);
        }
        let Some(launch) = crate::upgrade::launch().cloned() else {
            let why = "the path of the running binary is unknown".to_owned();
            return refuse(UpgradeError::Unavailable(why), reply);
        };
        info!(binary = %launch.exe.display(), "binary upgrade: starting the new binary");
        let handover = self.handover.clone();
        let task = tokio::task::spawn_blocking(move || old::hand_over(&handover, &launch));
        self.running = Some((task, reply));
    }

    /// Resolves when the running upgrade has ended (never while none runs).
    pub async fn finished(&mut self) -> Result<Handed, UpgradeError> {
        match &mut self.running {
            Some((task, _)) => task.await.unwrap_or_else(|e| {
                Err(UpgradeError::Local(format!(
                    "the upgrade thread failed: {e}"
                )))
            }),
            None => pending().await,
        }
    }

    /// Logs, counts and answers the outcome of the upgrade that ended; when the new process
    /// serves everything now, what this one still owes it once its connections are done.
    pub fn settle(&mut self, control: &Handle, done: Result<Handed, UpgradeError>) -> Option<Rest> {
        let reply = self.running.take().and_then(|(_, reply)| reply);
        match done {
            Ok(handed) => {
                let (open_connections, open_udp_sessions) = open_now(control);
                info!(
                    pid = handed.pid,
                    listening_sockets = handed.listeners,
                    took_ms = handed.took.as_millis() as u64,
                    open_connections,
                    open_udp_sessions,
                    "binary upgrade: the new process serves every listener and the admin API; this one hands its open connections over, then exits (unless the new process dies before the handover settles)"
                );
                answer(reply, Ok(handed.pid));
                Some(handed.rest)
            }
            Err(e) => {
                warn!(error = %e, result = e.result(), "binary upgrade failed; this process keeps serving");
                control.count_upgrade(e.result());
                answer(reply, Err(e));
                None
            }
        }
    }
}

/// The new process died after it said it serves, before the handover settled: this one
/// serves again (its listeners and admin API are back, [`crate::app::Server::handover_settled`]),
/// and systemd hears that it is the main process once more. The connections the new one had
/// taken died with it; those still here carry on.
pub fn serve_again(control: &Handle, moving: Moving, status: &str) {
    control.count_upgrade("failed");
    crate::notify::main_pid();
    crate::notify::ready("serving again: the new process of a binary upgrade died");
    let (new_pid, status) = (moving.new_pid(), status.to_owned());
    drop(tokio::task::spawn_blocking(move || {
        let moved = moving.abandon();
        warn!(
            new_pid,
            status,
            lost_with_it = moved.handed,
            kept = moved.kept,
            udp_sessions_lost_with_it = moved.sessions,
            "binary upgrade failed: the new process died after it took over; this process serves again"
        );
    }));
}

/// TCP connections and UDP sessions open on every listener now: what this process still
/// has to hand over or finish.
fn open_now(control: &Handle) -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    let snapshot = control.snapshot();
    let live = || snapshot.listeners.values().map(|l| &l.live);
    (
        live().map(|l| l.active.load(Relaxed)).sum(),
        live().map(|l| l.udp.sessions_active.load(Relaxed)).sum(),
    )
}

fn answer(reply: Option<Reply>, outcome: Result<u32, UpgradeError>) {
    if let Some(reply) = reply {
        let _ = reply.send(outcome.map_err(|e| UpgradeFailure {
            result: e.result(),
            reason: e.to_string(),
        }));
    }
}
