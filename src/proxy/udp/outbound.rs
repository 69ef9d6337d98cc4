//! Client datagrams of one receive, on their way to the backends a session at a time. The
//! receive loop first settles which session each datagram belongs to (admitting, picking
//! and moving sessions as it goes), noting it here; [`Outbound::send`] then hands each
//! session's datagrams to its upstream socket in one call, in the order they came. A flow
//! that sends in bursts (a resolver with several queries in flight, QUIC, a tunnel) then
//! costs one system call per burst, and equal-sized datagrams go down the kernel's stack as
//! one `UDP_SEGMENT` run instead of one trip each (`SendBatch::push` joins them).

use std::sync::Arc;

use super::flows::FlowTable;
use super::session::SessionId;
use super::upstream::Handle;
use crate::state::{Backend, ListenerLive};
use crate::sys::udp::{MAX_BATCH, MAX_UDP_PAYLOAD, RecvBatch, SendBatch};

/// One datagram waiting: its session, and where it lies in the receive batch.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    id: SessionId,
    /// Its place among this receive's datagrams: keeps a session's own order when sorted.
    seq: u32,
    message: u32,
    segment: u32,
}

/// The datagrams of one receive, by session. Its buffers are made once per listening socket
/// and reused, so forwarding allocates nothing per datagram.
pub struct Outbound {
    waiting: Vec<Waiting>,
    batch: SendBatch,
}

impl Outbound {
    pub fn new() -> Outbound {
        Outbound {
            waiting: Vec::with_capacity(MAX_BATCH),
            batch: SendBatch::new(MAX_BATCH, MAX_BATCH * MAX_UDP_PAYLOAD),
        }
    }

    /// Notes that segment `segment` of message `message` goes to session `id`.
    pub fn push(&mut self, id: SessionId, message: usize, segment: usize) {
        let seq = u32::try_from(self.waiting.len()).unwrap_or(u32::MAX);
        self.waiting.push(Waiting {
            id,
            seq,
            message: u32::try_from(message).unwrap_or(u32::MAX),
            segment: u32::try_from(segment).unwrap_or(u32::MAX),
        });
    }

    /// Sends what was noted, each session's datagrams in one call on its upstream socket.
    pub fn send(
        &mut self,
        table: &mut FlowTable<Arc<Backend>, Handle>,
        received: &RecvBatch,
        live: &ListenerLive,
    ) {
        // By session, and within one in arrival order; unstable sort, so no allocation.
        self.waiting
            .sort_unstable_by_key(|w| (w.id.slot, w.id.serial, w.seq));
        for run in self.waiting.chunk_by(|a, b| a.id == b.id) {
            // A session ended by a later datagram of this batch (its backend gone) has
            // nothing to send on.
            let Some(session) = table.get_mut(run[0].id) else {
                continue;
            };
            let payloads = run.iter().filter_map(|w| {
                received
                    .get(w.message as usize)?
                    .segments()
                    .nth(w.segment as usize)
            });
            let sent = session.handle.forward(payloads, &mut self.batch, live);
            let counts = &mut session.forwarded;
            counts.to_backend += sent.datagrams as u64;
            counts.to_backend_bytes += sent.bytes as u64;
        }
        self.waiting.clear();
    }
}
