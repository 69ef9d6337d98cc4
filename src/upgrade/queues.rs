//! The order frozen connections go over in, and the batches they go in: connections that
//! moved data lately first (a transfer stalls until it is across; an idle connection does
//! not mind waiting), then idle ones, then UDP sessions; each batch of one kind, and no
//! larger than the new process has descriptors for.

use std::collections::VecDeque;

use crate::proxy::handoff::Handed;

/// Connections in at most this many per message: with two pipes each, 6 descriptors, so
/// a batch stays under [`super::wire::MAX_FDS`].
const BATCH: usize = 32;
/// UDP sessions per message: one descriptor each, and a state of at most ~500 bytes of
/// JSON, so a batch stays under [`super::wire::MAX_PAYLOAD`].
const SESSIONS: usize = 96;

/// What waits to go over: connections that moved data in the last second (or hold bytes
/// in a pipe) first, then the idle ones, then UDP sessions.
#[derive(Default)]
pub(super) struct Queues {
    hot: VecDeque<Handed>,
    cold: VecDeque<Handed>,
    sessions: VecDeque<Handed>,
}

/// A connection idle for less than this goes first.
const HOT_MS: u64 = 1_000;

impl Queues {
    pub(super) fn push(&mut self, handed: Handed) {
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

    pub(super) fn is_empty(&self) -> bool {
        self.hot.is_empty() && self.cold.is_empty() && self.sessions.is_empty()
    }

    pub(super) fn take_all(&mut self) -> Vec<Handed> {
        let mut all: Vec<Handed> = self.hot.drain(..).collect();
        all.extend(self.cold.drain(..));
        all.extend(self.sessions.drain(..));
        all
    }

    /// The next batch that fits in `room` descriptors, from the first queue that has any;
    /// `None` when its first one does not fit (nothing is taken then).
    pub(super) fn batch(&mut self, room: usize) -> Option<Vec<Handed>> {
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
