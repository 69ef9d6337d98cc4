//! The running process's side of an upgrade: start the new binary, hand it the sockets and
//! counters, and give up serving only once it says it serves. Runs on a blocking thread;
//! every wait is bounded by the channel's timeout.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::channel::Channel;
pub use super::connections::{Moved, Moving, Rest, SETTLE_LIMIT, Settled};
use super::wire::{self, ListenerSocket, Message, Sample, SocketKind};
use super::{ENV_FD, INHERITED_FD, Launch, STEP, UpgradeError};
use crate::app::Handover;
use crate::control::Carried;
use crate::metrics::CounterSample;
use crate::proxy::listener::BindKey;
use crate::state::Transport;
use crate::sys::fdpass;

/// A new process that serves everything the old one handed over.
pub struct Handed {
    pub pid: u32,
    pub listeners: usize,
    pub took: Duration,
    /// The handover socket, kept until this process has finished its own connections, and
    /// the new process, watched until the handover settles.
    pub rest: Rest,
}

/// Starts `launch` and hands everything over to it. On success the caller stops serving
/// (`Server::handed_over`), hands its connections over, and drains once the handover has
/// settled, or serves again if the new process died before then ([`Settled`]); on failure
/// the listeners are serving again and the new process is gone.
pub fn hand_over(server: &Handover, launch: &Launch) -> Result<Handed, UpgradeError> {
    let started = Instant::now();
    let (ours, theirs) = fdpass::seqpacket_pair()
        .map_err(|e| UpgradeError::Local(format!("cannot create the handover socket: {e}")))?;
    let mut cmd = Command::new(&launch.exe);
    cmd.args(&launch.args)
        .env(ENV_FD, INHERITED_FD.to_string())
        // systemd's watchdog names the process it watches; the new one pings as it serves
        // (`NotifyAccess=all` takes pings from any process of the service) and is the main
        // process once the handover settles, so it must not think the watchdog is
        // someone else's.
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null());
    let child =
        fdpass::spawn_inheriting(&mut cmd, theirs.as_fd(), INHERITED_FD).map_err(|source| {
            UpgradeError::Spawn {
                path: launch.exe.clone(),
                source,
            }
        })?;
    drop(theirs);
    let mut child = Reaper(Some(child));
    let channel = Channel::new(ours, STEP).map_err(|source| UpgradeError::Io {
        step: "setting up the handover socket",
        source,
    })?;
    let pid = match channel.recv("hello") {
        Ok((Message::Hello { pid, version }, _)) => {
            info!(
                pid,
                version, "the new process loaded its config; handing over"
            );
            pid
        }
        Ok((Message::Refused { reason }, _)) => return Err(UpgradeError::Refused(reason)),
        Ok((other, _)) => {
            return Err(UpgradeError::Protocol(format!(
                "expected hello, got {}",
                other.name()
            )));
        }
        Err(UpgradeError::Closed(_)) => return Err(UpgradeError::Exited(child.status())),
        Err(e) => return Err(e),
    };
    server.pause_accepting(true);
    match send_everything(server, &channel).and_then(|sent| match channel.recv("ready")? {
        (Message::Ready { pid: ready, room }, _) if ready == pid => Ok((sent, room)),
        (Message::Abort { reason }, _) => Err(UpgradeError::Aborted(reason)),
        (other, _) => Err(UpgradeError::Protocol(format!(
            "expected ready from {pid}, got {}",
            other.name()
        ))),
    }) {
        Ok(((listeners, sent), room)) => {
            // Kept, not killed: watched until the handover settles (`Rest`).
            let child = child.release();
            Ok(Handed {
                pid,
                listeners,
                took: started.elapsed(),
                rest: Rest {
                    channel,
                    sent,
                    room,
                    handover: server.clone(),
                    child,
                    pid,
                },
            })
        }
        Err(e) => {
            let _ = channel.send(
                &Message::Abort {
                    reason: e.to_string(),
                },
                &[],
            );
            // The new process is killed before the listeners resume: from here on only
            // this process takes from them.
            // A process that died mid-way shows as a closed or reset socket: say how it ended.
            let e = match e {
                UpgradeError::Closed(_) => UpgradeError::Exited(child.status()),
                UpgradeError::Io { step, source } => match child.ended() {
                    Some(status) => UpgradeError::Exited(format!(
                        "{status}, while handing over: {step}: {source}"
                    )),
                    None => UpgradeError::Io { step, source },
                },
                e => e,
            };
            drop(child);
            server.pause_accepting(false);
            Err(e)
        }
    }
}

/// Sends the listening sockets, the admin socket, the counters and the control state, then
/// `Done`; returns how many listening sockets went, and the counters as sent.
fn send_everything(
    server: &Handover,
    channel: &Channel,
) -> Result<(usize, Vec<CounterSample>), UpgradeError> {
    let sockets = server
        .listening_sockets()
        .map_err(|e| UpgradeError::Local(format!("cannot hand the listeners over: {e}")))?;
    let count = sockets.len();
    for batch in sockets.chunks(usize::from(wire::MAX_FDS)) {
        let meta = batch.iter().map(|(key, _)| listener_socket(key)).collect();
        let fds: Vec<BorrowedFd<'_>> = batch.iter().map(|(_, fd)| fd.as_fd()).collect();
        channel.send(&Message::Listeners { sockets: meta }, &fds)?;
    }
    if let Some(admin) = server.admin_socket() {
        let (addr, fd): (_, OwnedFd) = admin
            .map_err(|e| UpgradeError::Local(format!("cannot hand the admin API over: {e}")))?;
        channel.send(&Message::Admin { addr }, &[fd.as_fd()])?;
    }
    let counted = crate::metrics::counter_samples(server.control());
    let samples: Vec<Sample> = counted.iter().cloned().map(Sample::from).collect();
    send_parts(channel, samples, |samples| Message::Counters { samples })?;
    let state = server
        .control()
        .carry_blocking()
        .ok_or_else(|| UpgradeError::Local("the control plane has stopped".into()))?;
    send_parts(channel, state.split(1), |parts| Message::State {
        state: parts.into_iter().fold(Carried::default(), |mut all, part| {
            all.extend(part);
            all
        }),
    })?;
    channel.send(&Message::Done, &[])?;
    Ok((count, counted))
}

/// Sends `items` in as few messages as fit: halves a part whose message would be over the
/// payload limit, and leaves out (with a warning) a single item that is too long alone.
pub(super) fn send_parts<T: Clone>(
    channel: &Channel,
    items: Vec<T>,
    make: impl Fn(Vec<T>) -> Message,
) -> Result<(), UpgradeError> {
    let mut parts = vec![items];
    while let Some(part) = parts.pop() {
        if part.is_empty() {
            continue;
        }
        let message = make(part.clone());
        match wire::encode(&message) {
            Ok(_) => channel.send(&message, &[])?,
            Err(wire::WireError::TooLong(_)) if part.len() > 1 => {
                let (a, b) = part.split_at(part.len() / 2);
                parts.push(b.to_vec());
                parts.push(a.to_vec());
            }
            Err(e) => {
                warn!(what = message.name(), error = %e, "an entry too long to hand over is left out")
            }
        }
    }
    Ok(())
}

fn listener_socket(key: &BindKey) -> ListenerSocket {
    let (kind, listener) = match key {
        BindKey::Fixed(t, _) => (t, String::new()),
        BindKey::Fresh(t, name, _) => (t, name.to_string()),
    };
    ListenerSocket {
        listener,
        kind: match kind {
            Transport::Tcp => SocketKind::Tcp,
            Transport::Udp => SocketKind::Udp,
        },
        configured: key.configured(),
    }
}

/// The new process until it serves: killed and reaped if the upgrade fails.
struct Reaper(Option<Child>);

impl Reaper {
    /// How the process ended, waiting a moment for it (it may be exiting on its own).
    fn status(&mut self) -> String {
        let Some(child) = &mut self.0 else {
            return "gone".into();
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.to_string(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => return "still running; killed".into(),
                Err(e) => return format!("cannot tell: {e}"),
            }
        }
    }

    /// How the process ended, if it has (within a moment: a crash takes a little while
    /// to be reaped); `None` while it runs.
    fn ended(&mut self) -> Option<String> {
        let child = self.0.as_mut()?;
        let deadline = Instant::now() + Duration::from_millis(500);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status.to_string()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => return None,
            }
        }
    }

    /// The new process serves now: it is no longer killed when this drops.
    fn release(&mut self) -> Option<Child> {
        self.0.take()
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            if let Err(e) = child.kill() {
                warn!(pid = child.id(), error = %e, "cannot kill the new process of a failed upgrade");
            }
            let _ = child.wait();
        }
    }
}
