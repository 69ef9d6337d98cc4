//! The old process's side after `Ready`: its established connections, frozen as they stand
//! (`crate::proxy::handoff`), and its UDP sessions go to the new process in batches; each
//! batch is acknowledged before this process closes its copies, and what the new process
//! refuses (or everything, once it fails) is resumed here (UDP sessions end: the next
//! datagram opens one in the new process). Then what the counters grew by, and `Done`.
//!
//! Until the handover settles ([`Settled`]: every connection frozen so far is across and
//! none came for a moment, or a send failed), this process keeps its paused listeners and
//! workers: if the new process has died by then, this one serves again instead of leaving
//! the listeners to nobody.

use std::os::fd::{AsFd, BorrowedFd};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use tracing::warn;

use super::UpgradeError;
use super::channel::Channel;
use super::old::send_parts;
use super::queues::Queues;
use super::wire::{Connection, Message, Sample};
use crate::app::Handover;
use crate::metrics::CounterSample;
use crate::proxy::handoff::Handed;

/// What is still owed to the new process after `Ready`: this process's established
/// connections, and then what its counters grew by since they were sent.
pub struct Rest {
    pub(super) channel: Channel,
    pub(super) sent: Vec<CounterSample>,
    pub(super) handover: Handover,
    /// Descriptors the new process can still take (it says so in `Ready` and `Adopted`).
    pub(super) room: u32,
    /// The new process (this one started it), watched until the handover settles, and
    /// its pid.
    pub(super) child: Option<Child>,
    pub(super) pid: u32,
}

/// How a handover ended for the listeners, decided once after `Ready`.
#[derive(Debug)]
pub enum Settled {
    /// The new process lives and serves: this one drains what it kept.
    Handed,
    /// The new process died before the handover settled (how it ended): this one serves
    /// again. The connections it had taken died with it; the rest are here.
    Died(String),
}

/// No connection frozen for this long: every one there was is across, the handover has
/// settled.
const QUIET: Duration = Duration::from_millis(200);
/// A handover settles within this, however many connections still come.
const SETTLE_WITHIN: Duration = Duration::from_secs(5);
/// The longest the old process waits for the handover to settle (a batch in flight when
/// [`SETTLE_WITHIN`] passes may wait for its acknowledgement): past it, the new process is
/// taken to serve.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(8);
/// After a failed send, how long the new process may take to finish dying.
const DYING: Duration = Duration::from_secs(1);

impl Rest {
    /// Freezes this process's established connections and hands them over, on a thread
    /// of its own, until [`Moving::finish`] (or [`Moving::abandon`]).
    pub fn move_connections(self) -> Moving {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let plane = self.handover.control().plane().clone();
        let frozen = plane.handoff.start();
        let (settle, settled) = oneshot::channel();
        let pid = self.pid;
        let thread = std::thread::Builder::new()
            .name("tollgate-handover".into())
            .spawn(move || {
                let mut rest = self;
                let moved = rest.connections(&frozen, &flag, settle);
                (rest, moved)
            });
        match thread {
            Ok(thread) => Moving {
                stop,
                thread: Some(thread),
                settled: Some(settled),
                pid,
            },
            Err(e) => {
                warn!(error = %e, "cannot start handing connections over; they finish here");
                plane.handoff.stop();
                Moving {
                    stop,
                    thread: None,
                    settled: None,
                    pid,
                }
            }
        }
    }

    /// Sends frozen connections and UDP sessions in batches as they come, until `stop` and
    /// none is left. Connections moving data go first ([`Queues`]): an idle one does not
    /// mind waiting, a transfer stalls until it is across. A batch is of one kind, holds
    /// at most 32 connections or 96 sessions (`queues.rs`) and no more descriptors than
    /// the new process has room for; once one does not fit, it and the rest are kept.
    fn connections(
        &mut self,
        frozen: &Receiver<Handed>,
        stop: &AtomicBool,
        settle: oneshot::Sender<Settled>,
    ) -> Moved {
        let mut moved = Moved::default();
        let mut failed = false;
        let mut queues = Queues::default();
        let (started, mut last) = (Instant::now(), Instant::now());
        let mut settle = Some(settle);
        loop {
            if settle.is_some()
                && (last.elapsed() >= QUIET && queues.is_empty()
                    || started.elapsed() >= SETTLE_WITHIN)
            {
                failed |= self.settle(&mut settle, Duration::ZERO);
            }
            if queues.is_empty() {
                match frozen.recv_timeout(Duration::from_millis(50)) {
                    Ok(first) => {
                        last = Instant::now();
                        queues.push(first);
                    }
                    Err(RecvTimeoutError::Timeout) if !stop.load(Ordering::Acquire) => continue,
                    Err(_) => return moved,
                }
            }
            while let Ok(more) = frozen.try_recv() {
                last = Instant::now();
                queues.push(more);
            }
            if failed {
                self.keep(queues.take_all(), &mut moved);
                continue;
            }
            let Some(batch) = queues.batch(self.room as usize) else {
                warn!(
                    room = self.room,
                    "the new process's open-file limit leaves no room for more connections; the rest finish here"
                );
                failed = true;
                self.handover.control().plane().handoff.stop();
                continue;
            };
            match self.send(&batch) {
                Ok(refused) => {
                    // The quiet that settles the handover counts from here too: a long
                    // batch is not a quiet moment.
                    last = Instant::now();
                    self.handover.control().plane().handoff.progressed();
                    let mut kept = Vec::new();
                    for (i, handed) in batch.into_iter().enumerate() {
                        if refused.contains(&(i as u32)) {
                            kept.push(handed);
                        } else {
                            // The new process holds it: this copy closes.
                            match handed {
                                Handed::Tcp(_) => moved.handed += 1,
                                Handed::Udp(_) => moved.sessions += 1,
                            }
                        }
                    }
                    self.keep(kept, &mut moved);
                }
                Err(e) => {
                    warn!(error = %e, "handing connections over failed; the rest finish here");
                    failed = true;
                    self.handover.control().plane().handoff.stop();
                    self.keep(batch, &mut moved);
                    self.settle(&mut settle, DYING);
                }
            }
        }
    }

    /// Decides, once, whether the new process lives on ([`Settled`]), waiting at most
    /// `dying` for it to end (a failed send may come just before it has). True when it
    /// died: nothing more is frozen, and what is queued stays here.
    fn settle(&mut self, settle: &mut Option<oneshot::Sender<Settled>>, dying: Duration) -> bool {
        let Some(tx) = settle.take() else {
            return false;
        };
        // Dropped unsent when it lives: the receiver takes that as `Handed`.
        let Some(status) = self.died_within(dying) else {
            return false;
        };
        self.handover.control().plane().handoff.stop();
        let _ = tx.send(Settled::Died(status));
        true
    }

    /// How the new process ended, if it died (killed, or exited with an error) by now or
    /// within `dying`. A clean exit is a process that handed over in turn, or was stopped:
    /// it did serve, and no one is to serve in its place.
    fn died_within(&mut self, dying: Duration) -> Option<String> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + dying;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return (!status.success()).then(|| status.to_string()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => return None,
                Err(e) => {
                    warn!(error = %e, "cannot tell whether the new process still runs; taking it that it does");
                    return None;
                }
            }
        }
    }

    /// One batch: sent, and the positions the new process refused (its room is updated).
    fn send(&mut self, batch: &[Handed]) -> Result<Vec<u32>, UpgradeError> {
        let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
        let mut conns = Vec::new();
        let mut sessions = Vec::new();
        for handed in batch {
            match handed {
                Handed::Tcp(f) => {
                    conns.push(Connection {
                        state: f.state.clone(),
                        up_pipe: f.up.is_some(),
                        down_pipe: f.down.is_some(),
                    });
                    fds.push(f.client.as_fd());
                    fds.push(f.backend.as_fd());
                    for pipe in [&f.up, &f.down].into_iter().flatten() {
                        let (read, write) = pipe.ends();
                        fds.extend([read, write]);
                    }
                }
                Handed::Udp(s) => {
                    sessions.push(s.state.clone());
                    fds.push(s.upstream.as_fd());
                }
            }
        }
        let message = if sessions.is_empty() {
            Message::Connections { conns }
        } else {
            Message::Sessions { sessions }
        };
        self.channel.send(&message, &fds)?;
        match self.channel.recv("adopted")? {
            (Message::Adopted { refused, room }, _) => {
                self.room = room;
                Ok(refused)
            }
            (other, _) => Err(UpgradeError::Protocol(format!(
                "expected adopted, got {}",
                other.name()
            ))),
        }
    }

    /// What stays here: connections are resumed on this process's workers and served to
    /// their end; UDP sessions end (this process no longer reads the listening sockets; the
    /// client's next datagram opens a session in the new process).
    fn keep(&self, handed: Vec<Handed>, moved: &mut Moved) {
        for (i, handed) in handed.into_iter().enumerate() {
            match handed {
                Handed::Tcp(mut conn) => {
                    moved.kept += 1;
                    // Not frozen again by this handover (it would come straight back), but
                    // by the next one when this one has stopped freezing: after a failed
                    // handover this process may serve on and upgrade again.
                    conn.stays = self.handover.control().plane().handoff.freezing();
                    if let Err(lost) = self.handover.resume(i, conn) {
                        warn!(listener = lost.state.listener, client = %lost.state.client, "no worker left to resume a connection; it is closed");
                    }
                }
                Handed::Udp(_) => moved.sessions_ended += 1,
            }
        }
    }

    /// Sends what the counters grew by since the handover (the bytes and ends of the
    /// connections this process finished meanwhile), then `Done`. Blocking.
    fn finish(self, control: &crate::control::Handle) {
        let now = crate::metrics::counter_samples(control);
        let grown: Vec<Sample> = crate::metrics::growth(&self.sent, now)
            .into_iter()
            .map(Sample::from)
            .collect();
        let sent = send_parts(&self.channel, grown, |samples| Message::Counters {
            samples,
        })
        .and_then(|()| self.channel.send(&Message::Done, &[]));
        if let Err(e) = sent {
            warn!(error = %e, "cannot send the new process the last counts of the connections finished here");
        }
    }
}

/// Connections handed over, and kept (refused by the new process, or after a failure);
/// UDP sessions handed over, and ended here.
#[derive(Debug, Default, Clone, Copy)]
pub struct Moved {
    pub handed: usize,
    pub kept: usize,
    pub sessions: usize,
    pub sessions_ended: usize,
}

/// The thread handing connections over.
pub struct Moving {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(Rest, Moved)>>,
    settled: Option<oneshot::Receiver<Settled>>,
    pid: u32,
}

impl Moving {
    /// Resolves once the handover has settled; cancel-safe (a later call waits on). A
    /// batch in flight can hold the decision past [`SETTLE_WITHIN`]: the caller bounds the
    /// wait ([`SETTLE_LIMIT`]).
    pub async fn settled(&mut self) -> Settled {
        let settled = match &mut self.settled {
            Some(rx) => rx.await.unwrap_or(Settled::Handed),
            None => Settled::Handed,
        };
        self.settled = None;
        settled
    }

    /// The pid of the new process.
    pub fn new_pid(&self) -> u32 {
        self.pid
    }

    /// After the new process died: the thread ends once it has given back what was
    /// queued, and nothing more is sent (nobody is there to hear it).
    pub fn abandon(self) -> Moved {
        self.stop.store(true, Ordering::Release);
        match self.thread.map(std::thread::JoinHandle::join) {
            Some(Ok((_, moved))) => moved,
            Some(Err(_)) => {
                warn!("the handover thread panicked");
                Moved::default()
            }
            None => Moved::default(),
        }
    }

    /// Once this process has no connection left of its own (its workers have drained):
    /// the last frozen ones go, then what the counters grew by, and `Done`.
    pub fn finish(self, control: &crate::control::Handle) -> Moved {
        self.stop.store(true, Ordering::Release);
        let Some(thread) = self.thread else {
            return Moved::default();
        };
        match thread.join() {
            Ok((rest, moved)) => {
                rest.finish(control);
                moved
            }
            Err(_) => {
                warn!("the handover thread panicked");
                Moved::default()
            }
        }
    }
}
