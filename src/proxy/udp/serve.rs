//! One worker's loop for one UDP listening socket. Datagrams from clients are read in
//! batches (`recvmmsg`), matched to their session in the worker's flow table, and sent on
//! the session's connected upstream socket. A client's first datagram makes the session:
//! admission (ACLs, the deny list, per-source limits counted in sessions), the listener's
//! `udp.max_sessions`, a backend from the pool's algorithm, and a socket connected to it. A
//! session whose backend may no longer be used moves to another on its next datagram. Idle
//! sessions end on the table's clock, and so do unused kept upstream sockets; replies are
//! read by each upstream socket's own task (`link.rs`).
//!
//! Refusals are silent drops, counted by reason. On shutdown the socket takes no new
//! session; the ones open carry on until they go idle or the drain deadline ends them.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::flows::{FlowTable, Limits, Lookup};
use super::handover;
use super::outbound::Outbound;
use super::reuse::KEEP_MS;
use super::session::{FlowKey, SessionId};
use super::upstream::{Handle, Shared, Slot};
use crate::proxy::access_log::UdpEnd;
use crate::proxy::listener::BindKey;
use crate::proxy::{DataPlane, Tracker, sockets};
use crate::proxy_protocol;
use crate::state::{Backend, ListenerSpec, UdpRefusal, UdpSpec};
use crate::sys::udp::{self, Bound, MAX_BATCH, RecvBatch};

/// Serves `bound` (one worker's socket of the listening address `key`) until the listener
/// is removed by a reload, or shutdown has come and its last session has ended.
pub async fn serve(
    key: BindKey,
    bound: Bound,
    plane: Arc<DataPlane>,
    mut shutdown: watch::Receiver<bool>,
    tracker: Tracker,
) {
    let Some(mut spec) = key.spec(&plane.snapshot.load()).cloned() else {
        return;
    };
    let Some(mut settings) = spec.udp else {
        warn!(addr = %key.configured(), "a TCP listener was given a UDP socket");
        return;
    };
    let socket = match UdpSocket::from_std(bound.socket) {
        Ok(s) => s,
        Err(e) => {
            warn!(addr = %key.configured(), error = %e, "cannot register UDP socket");
            return;
        }
    };
    let local = bound.local;
    let shared = Arc::new(Shared::new(
        FlowTable::new(limits(&settings)),
        socket,
        (bound.offload, bound.pktinfo),
        (plane.access.clone(), spec.name.clone()),
    ));
    let mut versions = plane.snapshot.subscribe();
    // In the set a binary upgrade hands over while this serves the socket; while the upgrade
    // takes it over, nothing is read from it (replies to open sessions still go out).
    let _entered = plane.listening.enter(&key, shared.socket.as_fd());
    // A binary upgrade moves the sessions, found by this socket's inode in both processes:
    // the old one hands them over once it starts freezing, the new one takes them here.
    let inode = handover::inode(shared.socket.as_fd()).ok();
    let (_adopting, mut adopt) = match inode {
        Some(ino) => {
            let (adopting, rx) = plane.udp_adopters.enter(ino);
            (Some(adopting), Some(rx))
        }
        None => (None, None),
    };
    let mut freezing = plane.handoff.woken();
    let mut pause = plane.listening.paused();
    let mut paused = *pause.borrow_and_update();
    let mut batch = RecvBatch::new(MAX_BATCH);
    let mut outbound = Outbound::new();
    let mut draining = *shutdown.borrow();
    // Its sessions went to the new process of a binary upgrade.
    let mut handed = false;
    loop {
        if handed {
            // Nothing is read here until the drain, or until this process serves again
            // (the new one died before the handover settled: the listeners resume).
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                () = sockets::until(&mut pause, false) => (handed, paused) = (false, false),
            }
        }
        if draining && shared.table().is_empty() {
            return;
        }
        let next = shared.table().next_deadline();
        let next = match (next, shared.next_expiry()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut wake = next.map(|at| at.saturating_sub(shared.now()));
        if settings.responses.is_some() {
            // A reply task may keep a socket while this loop sleeps with no deadline: look
            // at least this often, so an unused one closes within two periods.
            wake = Some(wake.map_or(KEEP_MS, |w| w.min(KEEP_MS)));
        }
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop), if !draining => draining = true,
            r = versions.changed() => {
                if r.is_err() {
                    return;
                }
                match key.spec(&plane.snapshot.load()).cloned() {
                    Some(now) => {
                        if let Some(s) = now.udp {
                            settings = s;
                            shared.table().set_limits(limits(&settings));
                        }
                        spec = now;
                    }
                    // A reload removed this address: its sessions end with the socket.
                    None => {
                        shared.removed();
                        return;
                    }
                }
            }
            () = tokio::time::sleep(Duration::from_millis(wake.unwrap_or(3_600_000))), if wake.is_some() => {
                expire(&shared);
            }
            () = sockets::until(&mut pause, !paused) => paused = !paused,
            r = freezing.changed() => {
                if r.is_ok() && plane.handoff.freezing() {
                    // The new process serves this socket now: nothing more is read here,
                    // and every session goes over to it.
                    handover::freeze(&shared, &spec.name, inode, &plane);
                    handed = true;
                }
            }
            Some(frozen) = async { adopt.as_mut()?.recv().await } => {
                if !handover::adopt(frozen, (&spec, &settings), &shared, &tracker) {
                    debug!(listener = %spec.name, "a handed-over UDP session could not be resumed; the client's next datagram opens a new one");
                }
            }
            r = shared.socket.readable(), if !paused => {
                if r.is_err() {
                    return;
                }
                // A short batch proves the queue was empty: saying `WouldBlock` then clears
                // the readiness now (tokio keeps it if an event came meanwhile), instead of
                // one more `recvmmsg` on the next turn to learn it.
                let mut got = 0;
                let read = shared.socket.try_io(Interest::READABLE, || {
                    got = udp::recv_batch(shared.socket.as_fd(), &mut batch)?;
                    drained(got, batch.capacity())
                });
                match read {
                    _ if got > 0 => {
                        let ctx = Ctx { spec: &spec, settings: &settings, shared: &shared, tracker: &tracker, draining };
                        ctx.received(&batch, local, &mut outbound);
                    }
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => debug!(listener = %spec.name, error = %e, "UDP receive failed"),
                }
            }
        }
    }
}

/// `Ok` after a full batch (more may be queued); `WouldBlock` after a short one, which
/// `recvmmsg` returns only when the queue ran empty.
pub(super) fn drained(got: usize, capacity: usize) -> std::io::Result<()> {
    if got < capacity {
        Err(std::io::ErrorKind::WouldBlock.into())
    } else {
        Ok(())
    }
}

fn limits(s: &UdpSpec) -> Limits {
    Limits {
        idle: u64::try_from(s.session_idle.as_millis()).unwrap_or(u64::MAX),
        // The listener-wide cap is kept across workers (`UdpLive::take_session`); the
        // table's own bound only keeps one worker's memory within it.
        max_sessions: s.max_sessions,
    }
}

/// Ends every session whose idle time has run out, and closes the kept upstream sockets
/// left unused.
fn expire(shared: &Shared) {
    let now = shared.now();
    shared.expire_idle(now);
    let mut ended = Vec::new();
    {
        let mut table = shared.table();
        while let Some((_, session)) = table.pop_expired(now) {
            ended.push(session);
        }
    }
    // Written and dropped outside the lock: each stops its task and releases its counts.
    for session in ended {
        shared.write(shared.line(&session, UdpEnd::Idle, now));
    }
}

/// The PROXY v2 header a session of `key` sends its backend first, when the listener sends
/// one (`proxy_protocol.send`).
pub(super) fn proxy_header(spec: &ListenerSpec, key: FlowKey) -> Option<Box<[u8]>> {
    spec.proxy_send?;
    let addresses = proxy_protocol::Addresses {
        source: key.client,
        destination: key.local,
        transport: proxy_protocol::Transport::Datagram,
    };
    let mut header = Vec::with_capacity(52);
    proxy_protocol::encode(
        proxy_protocol::Version::V2,
        Some(addresses),
        &[],
        &mut header,
    );
    Some(header.into_boxed_slice())
}

/// What handling one client datagram needs.
struct Ctx<'a> {
    spec: &'a Arc<ListenerSpec>,
    settings: &'a UdpSpec,
    shared: &'a Arc<Shared>,
    tracker: &'a Tracker,
    draining: bool,
}

impl Ctx<'_> {
    /// Handles one receive: every datagram's session first, then each session's datagrams
    /// sent in one go (`outbound.rs`). The table stays locked throughout: the reply tasks
    /// share this worker's thread, so nobody waits for it.
    fn received(&self, batch: &RecvBatch, local: SocketAddr, outbound: &mut Outbound) {
        let now = self.shared.now();
        let mut table = self.shared.table();
        for (message, d) in (0..batch.len()).filter_map(|i| Some((i, batch.get(i)?))) {
            let Some(client) = d.source else { continue };
            let key = FlowKey {
                client,
                local: d.local_or(local),
            };
            for segment in 0..d.segments().count() {
                if let Some(id) = self.session(&mut table, key, now) {
                    outbound.push(id, message, segment);
                }
            }
        }
        outbound.send(&mut table, batch, &self.spec.live);
    }

    /// The session a datagram of `key` goes to, made or moved as needed; `None` drops it.
    fn session(
        &self,
        table: &mut FlowTable<Arc<Backend>, Handle>,
        key: FlowKey,
        now: u64,
    ) -> Option<SessionId> {
        let live = &self.spec.live;
        // A UDP listener always has one pool (`sni` is for TCP).
        let pool = self.spec.pool.as_ref()?;
        match table.lookup(&key, now, |b| pool.takes(b)) {
            Lookup::Live(id, _) => Some(id),
            Lookup::Moved(id) => {
                let slot = table.get_mut(id).and_then(|s| s.handle.slot.take())?;
                match self.connect(key.client, slot) {
                    Ok((backend, mut handle)) => {
                        handle.start(id);
                        // A new backend hears who the client is again.
                        self.announce(&mut handle, key);
                        // The old handle (and its socket and task) closes as it drops.
                        let _ = table.repick(id, backend, handle);
                        Some(id)
                    }
                    Err(why) => {
                        // No backend left for it: the session ends, the datagram drops.
                        live.udp.rejected(why).fetch_add(1, Ordering::Relaxed);
                        if let Some(session) = table.remove(id) {
                            let end = match why {
                                UdpRefusal::LocalError => UdpEnd::LocalError,
                                _ => UdpEnd::NoBackend,
                            };
                            self.shared.write(self.shared.line(&session, end, now));
                        }
                        None
                    }
                }
            }
            Lookup::New if self.draining => None,
            Lookup::New => {
                let ticket = match self.spec.admission.admit(key.client.ip()) {
                    Ok(ticket) => ticket,
                    Err(refused) => {
                        live.udp
                            .rejected(refused.reason.into())
                            .fetch_add(1, Ordering::Relaxed);
                        return None;
                    }
                };
                if !live.udp.take_session(self.settings.max_sessions) {
                    live.udp
                        .rejected(UdpRefusal::MaxSessions)
                        .fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                let slot = Slot::new(live.clone(), ticket, self.tracker.enter());
                match self.connect(key.client, slot) {
                    Ok((backend, handle)) => {
                        let responses = self.settings.responses.and_then(NonZeroU32::new);
                        match table.insert(key, backend, handle, responses, now) {
                            Ok(id) => {
                                if let Some(s) = table.get_mut(id) {
                                    s.handle.start(id);
                                    self.announce(&mut s.handle, key);
                                }
                                Some(id)
                            }
                            Err(rejected) => {
                                if let super::flows::InsertError::Refused(_) = rejected.why {
                                    live.udp
                                        .rejected(UdpRefusal::MaxSessions)
                                        .fetch_add(1, Ordering::Relaxed);
                                }
                                None
                            }
                        }
                    }
                    Err(why) => {
                        live.udp.rejected(why).fetch_add(1, Ordering::Relaxed);
                        None
                    }
                }
            }
            Lookup::Refused(_) => {
                live.udp
                    .rejected(UdpRefusal::MaxSessions)
                    .fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// With `proxy_protocol.send: v2`, the session's first datagram to its backend starts
    /// with a header naming the client and the address it sent to (sozu's practice).
    fn announce(&self, handle: &mut Handle, key: FlowKey) {
        if let Some(header) = proxy_header(self.spec, key) {
            handle.announce(header);
        }
    }

    /// The pool's pick for `client` and a socket connected to it (a kept one when there is
    /// one). A socket that cannot be made is a local shortage (descriptors, ephemeral ports): another backend would fare
    /// no better, so there is no second try.
    fn connect(
        &self,
        client: SocketAddr,
        slot: Slot,
    ) -> Result<(Arc<crate::state::Backend>, Handle), UdpRefusal> {
        let backend = self
            .spec
            .pool
            .as_ref()
            .ok_or(UdpRefusal::NoBackend)?
            .candidates(client)
            .next()
            .ok_or(UdpRefusal::NoBackend)?;
        match Handle::open(backend, slot, self.shared) {
            Ok(handle) => Ok((backend.clone(), handle)),
            Err(e) => {
                debug!(listener = %self.spec.name, backend = %backend.address, error = %e, "cannot open a UDP upstream socket");
                Err(UdpRefusal::LocalError)
            }
        }
    }
}
