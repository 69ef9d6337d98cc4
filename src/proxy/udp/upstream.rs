//! One UDP session's share of the shell: what the flow table keeps for it ([`Handle`]: its
//! connected upstream socket, the task that reads the backend's replies, and the counts it
//! holds) and that task ([`replies`]), which forwards each reply to the client from the
//! address the client sent to and ends the session after its `responses`.
//!
//! The worker's receive and send batches are thread-local and used only between awaits, so
//! ten thousand sessions cost ten thousand sockets and small tasks, not ten thousand buffers.

use std::cell::RefCell;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::task::AbortHandle;

use super::flows::{FlowTable, Reply};
use super::session::SessionId;
use crate::admission::Ticket;
use crate::proxy::TrackerGuard;
use crate::state::{Backend, BackendStats, Direction, ListenerLive};
use crate::sys::udp::{self, MAX_BATCH, OffloadState, RecvBatch, Route, SendBatch};

thread_local! {
    /// This worker's batches for replies from upstream sockets.
    static REPLIES: RefCell<Option<(RecvBatch, SendBatch)>> = const { RefCell::new(None) };
}

/// A worker's sessions of one listening socket, and what their tasks share.
pub struct Shared {
    pub table: Mutex<FlowTable<Arc<Backend>, Handle>>,
    /// The listening socket: replies to clients leave from it.
    pub socket: UdpSocket,
    pub offload: OffloadState,
    /// Whether the socket reports each datagram's local address (a wildcard bind): replies
    /// then name it as their source.
    pub pktinfo: bool,
    started: Instant,
}

impl Shared {
    pub fn new(
        table: FlowTable<Arc<Backend>, Handle>,
        socket: UdpSocket,
        offload: OffloadState,
        pktinfo: bool,
    ) -> Shared {
        Shared {
            table: Mutex::new(table),
            socket,
            offload,
            pktinfo,
            started: Instant::now(),
        }
    }

    /// The table's clock: milliseconds since this socket started serving.
    pub fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The table, even if a task panicked while holding it (its state stays consistent:
    /// every change is one call).
    pub fn table(&self) -> std::sync::MutexGuard<'_, FlowTable<Arc<Backend>, Handle>> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What a session holds for as long as it lives, whichever backend serves it: its place
/// under `udp.max_sessions`, its per-source admission ticket, and the worker's drain count.
pub struct Slot {
    live: Arc<ListenerLive>,
    _ticket: Option<Ticket>,
    _open: TrackerGuard,
}

impl Slot {
    /// `live`'s session count must already have been taken (`UdpLive::take_session`).
    pub fn new(live: Arc<ListenerLive>, ticket: Option<Ticket>, open: TrackerGuard) -> Slot {
        live.udp.sessions_total.fetch_add(1, Ordering::Relaxed);
        Slot {
            live,
            _ticket: ticket,
            _open: open,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.live.udp.release_session();
    }
}

/// A session's upstream side: its socket to one backend and the task reading it. Dropping it
/// stops the task and closes the socket; the [`Slot`] moves to the next handle when the
/// session changes backend.
pub struct Handle {
    pub upstream: Arc<UdpSocket>,
    task: Option<AbortHandle>,
    stats: Arc<BackendStats>,
    pub slot: Option<Slot>,
}

impl Handle {
    /// A socket connected to `backend`; [`Handle::start`] it once the session has its id.
    pub fn connect(backend: &Backend, slot: Slot) -> std::io::Result<Handle> {
        // No offloads: replies are forwarded one datagram at a time per session, and turning
        // GRO on costs a `setsockopt` per session (and flips a kernel static key) while
        // probing GSO costs a `getsockopt`, for runs a session's replies rarely form.
        let bound = udp::connect_upstream(backend.address, udp::Offloads::NONE)?;
        let upstream = Arc::new(UdpSocket::from_std(bound.socket)?);
        backend.stats.active.fetch_add(1, Ordering::Relaxed);
        backend.stats.connections.fetch_add(1, Ordering::Relaxed);
        Ok(Handle {
            upstream,
            task: None,
            stats: backend.stats.clone(),
            slot: Some(slot),
        })
    }

    /// Starts reading the backend's replies for session `id`.
    pub fn start(&mut self, id: SessionId, shared: &Arc<Shared>) {
        let task = tokio::spawn(replies(id, self.upstream.clone(), shared.clone()));
        self.task = Some(task.abort_handle());
    }

    /// Sends a client's datagram to the backend; a full socket buffer or an error (the
    /// backend's port answered ICMP unreachable) drops it, counted.
    pub fn forward(&self, payload: &[u8], live: &ListenerLive) {
        // Straight to the socket, not through tokio's `try_send`: that waits for a
        // writability event, which a socket just made has not had yet. A full buffer is
        // `WouldBlock` either way, and UDP drops it.
        match socket2::SockRef::from(self.upstream.as_ref()).send(payload) {
            Ok(n) => {
                live.udp.moved(Direction::ToBackend, 1, n);
                self.stats.sent_bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(_) => {
                live.udp.dropped[Direction::ToBackend as usize].fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Reads session `id`'s replies from `upstream` until the session ends (its handle aborts
/// this task) and forwards each one to the client, from the address the client sent to.
async fn replies(id: SessionId, upstream: Arc<UdpSocket>, shared: Arc<Shared>) {
    loop {
        if upstream.readable().await.is_err() {
            return;
        }
        let mut ended = false;
        let _ = upstream.try_io(Interest::READABLE, || {
            REPLIES.with(|cell| {
                let mut cell = cell.borrow_mut();
                let (recv, send) = cell.get_or_insert_with(|| {
                    (
                        RecvBatch::new(MAX_BATCH),
                        SendBatch::new(MAX_BATCH, MAX_BATCH * udp::MAX_UDP_PAYLOAD),
                    )
                });
                let got = udp::recv_batch(upstream.as_fd(), recv)?;
                ended = forward(id, recv, send, &shared);
                // A short batch clears the readiness at once (see `serve::drained`).
                super::serve::drained(got, recv.capacity())
            })
        });
        // Otherwise nothing was queued after all, or the backend answered ICMP unreachable
        // (nothing listens there), or another socket error: the session stays, and its
        // idle time ends it if nothing more comes.
        if ended {
            return;
        }
    }
}

/// What one receive's replies came to.
#[derive(Default)]
struct Outcome {
    live: Option<Arc<ListenerLive>>,
    stats: Option<Arc<BackendStats>>,
    datagrams: usize,
    bytes: usize,
    dropped: usize,
}

/// Forwards what `recv` holds for session `id`; true when the session has ended.
fn forward(id: SessionId, recv: &RecvBatch, send: &mut SendBatch, shared: &Shared) -> bool {
    let now = shared.now();
    let mut out = Outcome::default();
    let mut ended = None;
    let mut gone = false;
    {
        let mut table = shared.table();
        'all: for d in recv.iter() {
            for segment in d.segments() {
                let (key, last) = match table.reply(id, now) {
                    Reply::Forward(s) => {
                        note(&mut out, &s.handle);
                        (s.key(), None)
                    }
                    Reply::Last(s) => {
                        note(&mut out, &s.handle);
                        (s.key(), Some(s))
                    }
                    Reply::Gone => {
                        gone = true;
                        break 'all;
                    }
                };
                let route = Route {
                    dst: Some(key.client),
                    src: shared.pktinfo.then(|| key.local.ip()),
                };
                if !send.push(segment, route) {
                    flush(send, shared, &mut out);
                    if !send.push(segment, route) {
                        out.dropped += 1;
                    }
                }
                if last.is_some() {
                    ended = last;
                    break 'all;
                }
            }
        }
    }
    flush(send, shared, &mut out);
    if let Some(live) = &out.live {
        live.udp
            .moved(Direction::ToClient, out.datagrams, out.bytes);
        live.udp.dropped[Direction::ToClient as usize]
            .fetch_add(out.dropped as u64, Ordering::Relaxed);
    }
    if let Some(stats) = &out.stats {
        stats
            .received_bytes
            .fetch_add(out.bytes as u64, Ordering::Relaxed);
    }
    // Dropping the ended session aborts this very task at its next await; it returns
    // before that.
    let done = ended.is_some() || gone;
    drop(ended);
    done
}

fn note(out: &mut Outcome, handle: &Handle) {
    if out.stats.is_none() {
        out.stats = Some(handle.stats.clone());
        out.live = handle.slot.as_ref().map(|slot| slot.live.clone());
    }
}

/// Sends what `send` holds from the listening socket. UDP has no back-pressure: what the
/// socket will not take now is dropped, and counted.
fn flush(send: &mut SendBatch, shared: &Shared, out: &mut Outcome) {
    if send.is_empty() {
        return;
    }
    // Straight to the socket (see `Handle::forward`): what it will not take now is lost.
    let sent = udp::send_batch(shared.socket.as_fd(), send, &shared.offload).unwrap_or_default();
    out.datagrams += sent.datagrams;
    out.bytes += sent.bytes;
    out.dropped += send.pending();
    send.clear();
}
