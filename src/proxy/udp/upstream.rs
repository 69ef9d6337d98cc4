//! What a worker's sessions of one listening socket share ([`Shared`]: the flow table, the
//! listening socket replies leave from, and the upstream sockets kept for reuse), and what
//! the flow table keeps for one session ([`Handle`]: its upstream link to one backend and
//! the counts it holds). The link and its reply task are `link.rs`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::net::UdpSocket;

use super::flows::FlowTable;
use super::link::Link;
use super::reuse::{IdleLinks, MAX_KEPT};
use super::session::{Session, SessionId};
use crate::admission::Ticket;
use crate::proxy::TrackerGuard;
use crate::proxy::access_log::{AccessLog, UdpEnd, UdpLine};
use crate::state::{Backend, BackendStats, Direction, ListenerLive};
use crate::sys::udp::{OffloadState, Route, SendBatch, Sent};

/// A worker's sessions of one listening socket, and what their tasks share.
pub struct Shared {
    table: Mutex<FlowTable<Arc<Backend>, Handle>>,
    /// Upstream sockets whose sessions had every reply they were owed (`udp.responses`),
    /// kept for the next session to the same backend. Locked after the table, never before.
    idle: Mutex<IdleLinks<Kept>>,
    /// The listening socket: replies to clients leave from it.
    pub socket: UdpSocket,
    pub offload: OffloadState,
    /// Whether the socket reports each datagram's local address (a wildcard bind): replies
    /// then name it as their source.
    pub pktinfo: bool,
    started: Instant,
    /// Where its sessions' lines go (`logging.access`), and the listener they name.
    access: Arc<AccessLog>,
    listener: Arc<str>,
    /// A reload removed the listening address: sessions still open when this is dropped
    /// end as `listener_removed`, not `shutdown`.
    removed: AtomicBool,
}

impl Shared {
    pub fn new(
        table: FlowTable<Arc<Backend>, Handle>,
        socket: UdpSocket,
        (offload, pktinfo): (OffloadState, bool),
        (access, listener): (Arc<AccessLog>, Arc<str>),
    ) -> Shared {
        Shared {
            table: Mutex::new(table),
            idle: Mutex::new(IdleLinks::new(MAX_KEPT)),
            socket,
            offload,
            pktinfo,
            started: Instant::now(),
            access,
            listener,
            removed: AtomicBool::new(false),
        }
    }

    /// The access-log line of a session that ended at `now`, when the log is on. Made
    /// under the table's lock, written after it ([`Shared::write`]).
    pub fn line(
        &self,
        s: &Session<Arc<Backend>, Handle>,
        end: UdpEnd,
        now: u64,
    ) -> Option<UdpLine<'_>> {
        self.access.is_on().then(|| UdpLine {
            listener: &self.listener,
            client: s.key().client,
            backend: s.backend.address,
            counts: s.forwarded(),
            duration_ms: now.saturating_sub(s.created()),
            end,
        })
    }

    /// Writes a line [`Shared::line`] made (none when the log was off).
    pub fn write(&self, line: Option<UdpLine<'_>>) {
        if let Some(line) = line {
            self.access.udp(&line);
        }
    }

    /// A reload removed the listening address: the sessions still open end with it.
    pub fn removed(&self) {
        self.removed.store(true, Ordering::Relaxed);
    }

    /// The table's clock: milliseconds since this socket started serving.
    pub fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The table, even if a task panicked while holding it (its state stays consistent:
    /// every change is one call).
    pub fn table(&self) -> MutexGuard<'_, FlowTable<Arc<Backend>, Handle>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn idle(&self) -> MutexGuard<'_, IdleLinks<Kept>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps the link of a session that had every reply it was owed, for the next session
    /// to its backend; closes it when enough are kept.
    pub fn keep(&self, mut handle: Handle, now: u64) {
        let Some(link) = handle.link.take() else {
            return;
        };
        link.claim(None);
        let backend = link.backend();
        let kept = Kept::new(link);
        // A full pool gives it back, and it closes here.
        let _ = self.idle().put(backend, kept, now);
    }

    /// When a kept socket is next due to close, if any is kept.
    pub fn next_expiry(&self) -> Option<u64> {
        self.idle().next_expiry()
    }

    /// Closes the kept sockets unused for a while.
    pub fn expire_idle(&self, now: u64) {
        let closed = self.idle().expire(now);
        drop(closed);
    }

    /// A link to `backend` for a new session: a kept one if there is one, else a new socket.
    fn link(
        self: &Arc<Self>,
        backend: SocketAddr,
        live: &Arc<ListenerLive>,
    ) -> std::io::Result<Link> {
        if let Some(link) = self.idle().take(backend).and_then(Kept::into_link) {
            return Ok(link);
        }
        let link = Link::connect(backend, live, self)?;
        live.udp.upstream_opened.fetch_add(1, Ordering::Relaxed);
        Ok(link)
    }
}

/// A kept link, counted in `tollgate_udp_upstream_sockets_idle` for as long as it is kept.
pub struct Kept(Option<Link>);

impl Kept {
    fn new(link: Link) -> Kept {
        link.live()
            .udp
            .upstream_idle
            .fetch_add(1, Ordering::Relaxed);
        Kept(Some(link))
    }

    fn into_link(mut self) -> Option<Link> {
        let link = self.0.take()?;
        link.live()
            .udp
            .upstream_idle
            .fetch_sub(1, Ordering::Relaxed);
        Some(link)
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        if let Some(link) = &self.0 {
            link.live()
                .udp
                .upstream_idle
                .fetch_sub(1, Ordering::Relaxed);
        }
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

impl Slot {
    /// The slot of a session handed over by the previous process, which counted it in
    /// `sessions_total` already: it takes its place under `udp.max_sessions` even over the
    /// cap (it is open already; only new ones wait), and its source's ticket in this
    /// process ([`crate::admission::Policy::readmit`]).
    pub fn adopted(live: Arc<ListenerLive>, ticket: Option<Ticket>, open: TrackerGuard) -> Slot {
        live.udp.count_session();
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

/// A session's upstream side: its link to one backend. Dropping it closes the link (a
/// session that ended any other way than fully answered may still have replies coming,
/// which must not reach the next session); the [`Slot`] moves to the next handle when the
/// session changes backend.
pub struct Handle {
    link: Option<Link>,
    stats: Arc<BackendStats>,
    pub slot: Option<Slot>,
    /// A PROXY v2 header (`proxy_protocol.send`) for the first datagram this handle sends.
    header: Option<Box<[u8]>>,
}

impl Handle {
    /// A link to `backend` holding `slot`, kept or new; [`Handle::start`] it once the
    /// session has its id.
    pub fn open(backend: &Backend, slot: Slot, shared: &Arc<Shared>) -> std::io::Result<Handle> {
        let link = shared.link(backend.address, &slot.live)?;
        backend.stats.active.fetch_add(1, Ordering::Relaxed);
        backend.stats.connections.fetch_add(1, Ordering::Relaxed);
        Ok(Handle {
            link: Some(link),
            stats: backend.stats.clone(),
            slot: Some(slot),
            header: None,
        })
    }

    /// A session's handle on a socket handed over by the previous process (already counted
    /// in the backend's connections there).
    pub fn adopt(
        backend: &Backend,
        socket: std::net::UdpSocket,
        slot: Slot,
        shared: &Arc<Shared>,
    ) -> std::io::Result<Handle> {
        let link = Link::adopt(socket, backend.address, &slot.live, shared)?;
        backend.stats.active.fetch_add(1, Ordering::Relaxed);
        Ok(Handle {
            link: Some(link),
            stats: backend.stats.clone(),
            slot: Some(slot),
            header: None,
        })
    }

    /// A duplicate of its upstream socket (see [`Link::duplicate`]).
    pub fn duplicate(&self) -> Option<std::io::Result<std::net::UdpSocket>> {
        self.link.as_ref().map(Link::duplicate)
    }

    /// Whether a PROXY header is still owed to the backend.
    pub fn header_pending(&self) -> bool {
        self.header.is_some()
    }

    /// The first datagram sent from now on starts with `header` (a PROXY v2 header naming
    /// the session's client); it stays pending until one is sent.
    pub fn announce(&mut self, header: Box<[u8]>) {
        self.header = Some(header);
    }

    /// The backend's replies go to session `id` from now on. Call with the table locked.
    pub fn start(&self, id: SessionId) {
        if let Some(link) = &self.link {
            link.claim(Some(id));
        }
    }

    pub fn stats(&self) -> &Arc<BackendStats> {
        &self.stats
    }

    pub fn live(&self) -> Option<&Arc<ListenerLive>> {
        self.slot.as_ref().map(|slot| &slot.live)
    }

    /// Sends a session's datagrams from one receive to the backend, in order: one `send`
    /// for one datagram, else one batch (runs of equal-sized datagrams as one message). A
    /// pending PROXY header goes in front of the first, alone in its `send`. A full socket
    /// buffer or an error (the backend's port answered ICMP unreachable) drops them,
    /// counted (a header whose datagram was dropped waits for the next one). Returns what
    /// was sent (payload bytes: a header is not counted).
    pub fn forward<'a>(
        &mut self,
        payloads: impl Iterator<Item = &'a [u8]>,
        batch: &mut SendBatch,
        live: &ListenerLive,
    ) -> Sent {
        let mut payloads = payloads.peekable();
        let (mut sent, mut dropped) = (Sent::default(), 0);
        if payloads.peek().is_some()
            && let (Some(header), Some(link)) = (self.header.take(), &self.link)
            && let Some(first) = payloads.next()
        {
            let mut announced = Vec::with_capacity(header.len() + first.len());
            announced.extend_from_slice(&header);
            announced.extend_from_slice(first);
            if link.send(&announced).is_ok() {
                sent.datagrams = 1;
                sent.bytes = first.len();
            } else {
                dropped = 1;
                self.header = Some(header);
            }
        }
        match (&self.link, payloads.next()) {
            (_, None) => {}
            (None, Some(_)) => dropped += 1 + payloads.count(),
            (Some(link), Some(first)) if payloads.peek().is_none() => match link.send(first) {
                Ok(n) => {
                    sent.datagrams += 1;
                    sent.bytes += n;
                }
                Err(_) => dropped += 1,
            },
            (Some(link), Some(first)) => {
                batch.clear();
                for payload in std::iter::once(first).chain(payloads) {
                    if batch.push(payload, Route::default()) {
                        continue;
                    }
                    let (went, lost) = link.send_batch(batch);
                    (sent.datagrams, sent.bytes) =
                        (sent.datagrams + went.datagrams, sent.bytes + went.bytes);
                    dropped += lost;
                    if !batch.push(payload, Route::default()) {
                        dropped += 1;
                    }
                }
                let (went, lost) = link.send_batch(batch);
                (sent.datagrams, sent.bytes) =
                    (sent.datagrams + went.datagrams, sent.bytes + went.bytes);
                dropped += lost;
            }
        }
        if sent.datagrams > 0 {
            live.udp
                .moved(Direction::ToBackend, sent.datagrams, sent.bytes);
            self.stats
                .sent_bytes
                .fetch_add(sent.bytes as u64, Ordering::Relaxed);
        }
        if dropped > 0 {
            live.udp.dropped[Direction::ToBackend as usize]
                .fetch_add(dropped as u64, Ordering::Relaxed);
        }
        sent
    }
}

/// The sessions still open when the socket's loop ends (a reload removed its address, or
/// the drain deadline came) end here: their lines are written.
impl Drop for Shared {
    fn drop(&mut self) {
        if !self.access.is_on() {
            return;
        }
        let end = if self.removed.load(Ordering::Relaxed) {
            UdpEnd::ListenerRemoved
        } else {
            UdpEnd::Shutdown
        };
        let now = self.now();
        let table = self.table();
        for (_, session) in table.iter() {
            if let Some(line) = self.line(session, end, now) {
                self.access.udp(&line);
            }
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}
