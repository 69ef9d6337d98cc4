//! The old process's side after `Ready`: its established connections, frozen as they stand
//! (`crate::proxy::handoff`), and its UDP sessions go to the new process in batches; each
//! batch is acknowledged before this process closes its copies, and what the new process
//! refuses (or everything, once it fails) is resumed here (UDP sessions end: the next
//! datagram opens one in the new process). Then what the counters grew by, and `Done`.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use tracing::warn;

use super::UpgradeError;
use super::channel::Channel;
use super::old::send_parts;
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
}

/// Connections in at most this many per message: with two pipes each, 6 descriptors, so
/// a batch stays under [`wire::MAX_FDS`].
const BATCH: usize = 32;
/// UDP sessions per message: one descriptor each, and a state of at most ~500 bytes of
/// JSON, so a batch stays under [`wire::MAX_PAYLOAD`].
const SESSIONS: usize = 96;

impl Rest {
    /// Freezes this process's established connections and hands them over, on a thread
    /// of its own, until [`Moving::finish`].
    pub fn move_connections(self) -> Moving {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let plane = self.handover.control().plane().clone();
        let frozen = plane.handoff.start();
        let thread = std::thread::Builder::new()
            .name("tollgate-handover".into())
            .spawn(move || {
                let mut rest = self;
                let moved = rest.connections(&frozen, &flag);
                (rest, moved)
            });
        match thread {
            Ok(thread) => Moving {
                stop,
                thread: Some(thread),
            },
            Err(e) => {
                warn!(error = %e, "cannot start handing connections over; they finish here");
                plane.handoff.stop();
                Moving { stop, thread: None }
            }
        }
    }

    /// Sends frozen connections and UDP sessions in batches as they come, until `stop` and
    /// none is left. Connections moving data go first ([`Queues`]): an idle one does not
    /// mind waiting, a transfer stalls until it is across. A batch is of one kind, holds
    /// at most [`BATCH`] connections or [`SESSIONS`] sessions and no more descriptors than
    /// the new process has room for; once one does not fit, it and the rest are kept.
    fn connections(&mut self, frozen: &Receiver<Handed>, stop: &AtomicBool) -> Moved {
        let mut moved = Moved::default();
        let mut failed = false;
        let mut queues = Queues::default();
        loop {
            if queues.is_empty() {
                match frozen.recv_timeout(Duration::from_millis(50)) {
                    Ok(first) => queues.push(first),
                    Err(RecvTimeoutError::Timeout) if !stop.load(Ordering::Acquire) => continue,
                    Err(_) => return moved,
                }
            }
            while let Ok(more) = frozen.try_recv() {
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
                    conn.stays = true;
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

/// What waits to go over: connections that moved data in the last second (or hold bytes
/// in a pipe) first, then the idle ones, then UDP sessions.
#[derive(Default)]
struct Queues {
    hot: VecDeque<Handed>,
    cold: VecDeque<Handed>,
    sessions: VecDeque<Handed>,
}

/// A connection idle for less than this goes first.
const HOT_MS: u64 = 1_000;

impl Queues {
    fn push(&mut self, handed: Handed) {
        match &handed {
            Handed::Tcp(f)
                if f.up.is_some() || f.down.is_some() || f.state.idle_for_ms < HOT_MS =>
            {
                self.hot.push_back(handed);
            }
            Handed::Tcp(_) => self.cold.push_back(handed),
            Handed::Udp(_) => self.sessions.push_back(handed),
        }
    }

    fn is_empty(&self) -> bool {
        self.hot.is_empty() && self.cold.is_empty() && self.sessions.is_empty()
    }

    fn take_all(&mut self) -> Vec<Handed> {
        let mut all: Vec<Handed> = self.hot.drain(..).collect();
        all.extend(self.cold.drain(..));
        all.extend(self.sessions.drain(..));
        all
    }

    /// The next batch that fits in `room` descriptors, from the first queue that has any;
    /// `None` when its first one does not fit (nothing is taken then).
    fn batch(&mut self, room: usize) -> Option<Vec<Handed>> {
        let (queue, most) = if !self.hot.is_empty() {
            (&mut self.hot, BATCH)
        } else if !self.cold.is_empty() {
            (&mut self.cold, BATCH)
        } else {
            (&mut self.sessions, SESSIONS)
        };
        let mut fds = 0;
        let mut batch = Vec::new();
        while batch.len() < most {
            let Some(next) = queue.front() else { break };
            if fds + descriptors(next) > room {
                break;
            }
            fds += descriptors(next);
            batch.extend(queue.pop_front());
        }
        (!batch.is_empty()).then_some(batch)
    }
}

/// The descriptors a frozen connection brings (two sockets and two per pipe), or a UDP
/// session (its upstream socket).
fn descriptors(handed: &Handed) -> usize {
    match handed {
        Handed::Tcp(f) => 2 + 2 * usize::from(f.up.is_some()) + 2 * usize::from(f.down.is_some()),
        Handed::Udp(_) => 1,
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
}

impl Moving {
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
