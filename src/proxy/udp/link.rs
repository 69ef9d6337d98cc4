//! A connected upstream socket and the task that reads it ([`Link`]). A link serves one
//! session at a time, named by its owner cell; with `udp.responses` set it may serve many in
//! turn (`reuse.rs`), so the task outlives a session and asks the owner cell, under the
//! table's lock, whom each reply is for. A reply with no owner (it came after every reply
//! its session was owed, or after the session ended) is dropped and counted as unclaimed.
//!
//! The worker's receive and send batches are thread-local and used only between awaits, so
//! ten thousand sessions cost ten thousand sockets and small tasks, not ten thousand buffers.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::task::AbortHandle;

use super::flows::Reply;
use super::session::SessionId;
use super::upstream::{Handle, Shared};
use crate::proxy::access_log::UdpEnd;
use crate::state::{BackendStats, Direction, ListenerLive};
use crate::sys::udp::{self, MAX_BATCH, OffloadState, RecvBatch, Route, SendBatch, Sent};

thread_local! {
    /// This worker's batches for replies from upstream sockets.
    static REPLIES: RefCell<Option<(RecvBatch, SendBatch)>> = const { RefCell::new(None) };
}

/// An upstream socket connected to `backend` and its reading task. Dropping it stops the
/// task and closes the socket.
pub struct Link {
    state: Arc<LinkState>,
    task: AbortHandle,
    backend: SocketAddr,
}

struct LinkState {
    socket: UdpSocket,
    /// The session its replies are for. Changed and read only under the table's lock, so a
    /// reply is never matched to a session the table no longer has.
    owner: Mutex<Option<SessionId>>,
    live: Arc<ListenerLive>,
    /// GSO as the listening socket found it: a session's burst may go out as one run.
    offload: OffloadState,
}

impl Link {
    /// A new socket connected to `backend`, read for `shared`'s sessions.
    pub fn connect(
        backend: SocketAddr,
        live: &Arc<ListenerLive>,
        shared: &Arc<Shared>,
    ) -> std::io::Result<Link> {
        // No GRO: turning it on costs a `setsockopt` per socket (and flips a kernel static
        // key) for runs a session's replies rarely form. GSO needs no probe of its own: the
        // listening socket's says whether this kernel takes `UDP_SEGMENT`.
        let bound = udp::connect_upstream(backend, udp::Offloads::NONE)?;
        Link::serve(bound.socket, backend, live, shared)
    }

    /// A socket already connected to `backend` (handed over by the previous process), read
    /// for `shared`'s sessions from now on: what it had queued is read first.
    pub fn adopt(
        socket: std::net::UdpSocket,
        backend: SocketAddr,
        live: &Arc<ListenerLive>,
        shared: &Arc<Shared>,
    ) -> std::io::Result<Link> {
        socket.set_nonblocking(true)?;
        Link::serve(socket, backend, live, shared)
    }

    fn serve(
        socket: std::net::UdpSocket,
        backend: SocketAddr,
        live: &Arc<ListenerLive>,
        shared: &Arc<Shared>,
    ) -> std::io::Result<Link> {
        let state = Arc::new(LinkState {
            socket: UdpSocket::from_std(socket)?,
            owner: Mutex::new(None),
            live: live.clone(),
            offload: OffloadState::sending(shared.offload.gso()),
        });
        let task = tokio::spawn(replies(state.clone(), Arc::downgrade(shared)));
        Ok(Link {
            state,
            task: task.abort_handle(),
            backend,
        })
    }

    /// A duplicate of its socket, for the handover: the socket (and what is queued on it)
    /// outlives this link as long as the duplicate is open.
    pub fn duplicate(&self) -> std::io::Result<std::net::UdpSocket> {
        self.state
            .socket
            .as_fd()
            .try_clone_to_owned()
            .map(std::net::UdpSocket::from)
    }

    pub fn backend(&self) -> SocketAddr {
        self.backend
    }

    /// The listener it was opened for: its unclaimed replies and idle time count there.
    pub fn live(&self) -> &Arc<ListenerLive> {
        &self.state.live
    }

    /// Replies go to session `id` from now on (`None`: to nobody). Call with the table locked.
    pub fn claim(&self, id: Option<SessionId>) {
        *self
            .state
            .owner
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = id;
    }

    /// Sends a client's datagram to the backend.
    pub fn send(&self, payload: &[u8]) -> std::io::Result<usize> {
        // Straight to the socket, not through tokio's `try_send`: that waits for a
        // writability event, which a socket just made has not had yet. A full buffer is
        // `WouldBlock` either way, and UDP drops it.
        socket2::SockRef::from(&self.state.socket).send(payload)
    }

    /// Sends what `batch` holds to the backend in as few calls as it takes; returns what
    /// went and how many datagrams did not (dropped, as UDP does). Empties `batch`.
    pub fn send_batch(&self, batch: &mut SendBatch) -> (Sent, usize) {
        let sent = udp::send_batch(self.state.socket.as_fd(), batch, &self.state.offload)
            .unwrap_or_default();
        let dropped = batch.pending_datagrams();
        batch.clear();
        (sent, dropped)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LinkState {
    fn owner(&self) -> Option<SessionId> {
        *self.owner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reads `link`'s socket until its [`Link`] is dropped (which aborts this task) or its
/// listening socket has closed, forwarding each reply to its session's client.
async fn replies(link: Arc<LinkState>, shared: Weak<Shared>) {
    loop {
        if link.socket.readable().await.is_err() {
            return;
        }
        // The listening socket's loop owns it; once it has returned, nobody is served.
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let _ = link.socket.try_io(Interest::READABLE, || {
            REPLIES.with(|cell| {
                let mut cell = cell.borrow_mut();
                let (recv, send) = cell.get_or_insert_with(|| {
                    (
                        RecvBatch::new(MAX_BATCH),
                        SendBatch::new(MAX_BATCH, MAX_BATCH * udp::MAX_UDP_PAYLOAD),
                    )
                });
                let got = udp::recv_batch(link.socket.as_fd(), recv)?;
                forward(&link, recv, send, &shared);
                // A short batch clears the readiness at once (see `serve::drained`).
                super::serve::drained(got, recv.capacity())
            })
        });
        // Otherwise nothing was queued after all, or the backend answered ICMP unreachable
        // (nothing listens there), or another socket error: the session stays, and its
        // idle time ends it if nothing more comes.
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
    unclaimed: usize,
}

/// Forwards what `recv` holds to the client of `link`'s session, if it has one.
fn forward(link: &LinkState, recv: &RecvBatch, send: &mut SendBatch, shared: &Shared) {
    let now = shared.now();
    let mut out = Outcome::default();
    let line = {
        let mut table = shared.table();
        // Every reply of one receive is for this session (the owner changes only under
        // the table's lock): what is sent counts toward it.
        let session = link.owner();
        let mut owner = session;
        let mut ended = None;
        for d in recv.iter() {
            for segment in d.segments() {
                let Some(id) = owner else {
                    out.unclaimed += 1;
                    continue;
                };
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
                        owner = None;
                        out.unclaimed += 1;
                        continue;
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
                if let Some(session) = last {
                    // Every reply it was owed is in: the socket has nothing outstanding and
                    // may serve the next session to its backend. Anything more it receives
                    // before then is unclaimed.
                    owner = None;
                    ended = Some(session);
                }
            }
        }
        // Sent with the table still locked, so the session (ended or not) gets its count.
        flush(send, shared, &mut out);
        let counts = match (&mut ended, session) {
            (Some(s), _) => Some(&mut s.forwarded),
            (None, Some(id)) => table.get_mut(id).map(|s| &mut s.forwarded),
            (None, None) => None,
        };
        if let Some(counts) = counts {
            counts.to_client += out.datagrams as u64;
            counts.to_client_bytes += out.bytes as u64;
        }
        ended.and_then(|session| {
            let line = shared.line(&session, UdpEnd::Answered, now);
            shared.keep(session.handle, now);
            line
        })
    };
    shared.write(line);
    if let Some(live) = &out.live {
        live.udp
            .moved(Direction::ToClient, out.datagrams, out.bytes);
        live.udp.dropped[Direction::ToClient as usize]
            .fetch_add(out.dropped as u64, Ordering::Relaxed);
    }
    if out.unclaimed > 0 {
        link.live
            .udp
            .unclaimed
            .fetch_add(out.unclaimed as u64, Ordering::Relaxed);
    }
    if let Some(stats) = &out.stats {
        stats
            .received_bytes
            .fetch_add(out.bytes as u64, Ordering::Relaxed);
    }
}

fn note(out: &mut Outcome, handle: &Handle) {
    if out.stats.is_none() {
        out.stats = Some(handle.stats().clone());
        out.live = handle.live().cloned();
    }
}

/// Sends what `send` holds from the listening socket. UDP has no back-pressure: what the
/// socket will not take now is dropped, and counted.
fn flush(send: &mut SendBatch, shared: &Shared, out: &mut Outcome) {
    if send.is_empty() {
        return;
    }
    // Straight to the socket (see `Link::send`): what it will not take now is lost.
    let sent = udp::send_batch(shared.socket.as_fd(), send, &shared.offload).unwrap_or_default();
    out.datagrams += sent.datagrams;
    out.bytes += sent.bytes;
    out.dropped += send.pending_datagrams();
    send.clear();
}
