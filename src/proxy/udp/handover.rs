//! UDP sessions in a binary upgrade (`crate::upgrade`): the old process's listening-socket
//! loop, once the handoff starts freezing, stops reading its socket and gives every session
//! up as a [`FrozenSession`] (its connected upstream socket, duplicated, and its state);
//! the new process routes each to the loop serving the same listening socket
//! ([`Adopters`], by the socket's inode: `SO_REUSEPORT` hashes a client to one socket of
//! the group, so its session must be in that socket's table), which puts it back in its
//! table on the same upstream socket. Replies already queued on that socket travel with it,
//! and the backend keeps seeing the same source port.
//!
//! A session that does not make it (the new process refused it, or its socket's loop is
//! gone) simply ends: the client's next datagram opens a new one, as after an idle expiry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::session::FlowKey;
use super::upstream::{Handle, Shared, Slot};
use crate::proxy::access_log::{UdpCounts, UdpEnd};
use crate::proxy::{DataPlane, Tracker};
use crate::state::{ListenerSpec, UdpSpec};

/// What a frozen UDP session is, beyond its upstream socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionState {
    pub listener: String,
    /// The inode of the listening socket it was served on (the same socket in both
    /// processes).
    pub socket: u64,
    pub client: SocketAddr,
    /// The address the client wrote to (replies leave from it).
    pub local: SocketAddr,
    pub pool: String,
    pub backend: SocketAddr,
    pub age_ms: u64,
    pub requests: u32,
    pub replies: u32,
    pub to_backend: u64,
    pub to_backend_bytes: u64,
    pub to_client: u64,
    pub to_client_bytes: u64,
    /// A PROXY header is still owed to the backend (no datagram has gone since it was
    /// due): the new process sends it with the next one.
    pub header_pending: bool,
}

impl SessionState {
    pub fn key(&self) -> FlowKey {
        FlowKey {
            client: self.client,
            local: self.local,
        }
    }

    pub fn counts(&self) -> UdpCounts {
        UdpCounts {
            to_backend: self.to_backend,
            to_backend_bytes: self.to_backend_bytes,
            to_client: self.to_client,
            to_client_bytes: self.to_client_bytes,
        }
    }
}

/// A UDP session taken out of its table: its connected upstream socket and its state.
#[derive(Debug)]
pub struct FrozenSession {
    pub upstream: std::net::UdpSocket,
    pub state: SessionState,
}

/// The inode of a socket: the same for every duplicate of it, in any process (`stat` on
/// its `/proc/self/fd` link reaches the socket itself).
pub fn inode(socket: impl AsFd) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let fd = socket.as_fd().as_raw_fd();
    std::fs::metadata(format!("/proc/self/fd/{fd}")).map(|m| m.ino())
}

/// The new process's listening-socket loops that take handed-over sessions, by socket inode.
#[derive(Debug, Default)]
pub struct Adopters {
    loops: Mutex<HashMap<u64, mpsc::UnboundedSender<Box<FrozenSession>>>>,
}

/// A loop's place in [`Adopters`]; leaves it when dropped.
pub struct Adopting {
    adopters: Arc<Adopters>,
    socket: u64,
}

impl Adopters {
    /// The loop serving the socket `socket` takes sessions from the returned receiver.
    pub fn enter(
        self: &Arc<Self>,
        socket: u64,
    ) -> (Adopting, mpsc::UnboundedReceiver<Box<FrozenSession>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().insert(socket, tx);
        let adopting = Adopting {
            adopters: self.clone(),
            socket,
        };
        (adopting, rx)
    }

    /// Whether a loop takes sessions of the socket `socket`.
    pub fn serves(&self, socket: u64) -> bool {
        self.lock().contains_key(&socket)
    }

    /// Gives a session to the loop serving its socket; back when none does.
    pub fn give(&self, session: Box<FrozenSession>) -> Result<(), Box<FrozenSession>> {
        match self.lock().get(&session.state.socket) {
            Some(tx) => tx.send(session).map_err(|e| e.0),
            None => Err(session),
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::UnboundedSender<Box<FrozenSession>>>> {
        self.loops.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Adopting {
    fn drop(&mut self) {
        self.adopters.lock().remove(&self.socket);
    }
}

/// The old process: takes every session out of `shared`'s table and hands it on with a
/// duplicate of its upstream socket (the link, its reply task and the original descriptor
/// close here). `socket`: the listening socket's inode; without it nothing can be routed,
/// and the sessions end.
pub(super) fn freeze(shared: &Shared, listener: &str, socket: Option<u64>, plane: &DataPlane) {
    let now = shared.now();
    let sessions: Vec<_> = {
        let mut table = shared.table();
        let ids: Vec<_> = table.iter().map(|(id, _)| id).collect();
        ids.into_iter().filter_map(|id| table.remove(id)).collect()
    };
    for session in sessions {
        let upstream = match (socket, session.handle.duplicate()) {
            (Some(ino), Some(Ok(upstream))) => Some((ino, upstream)),
            _ => None,
        };
        let Some((ino, upstream)) = upstream else {
            shared.write(shared.line(&session, UdpEnd::Shutdown, now));
            continue;
        };
        let key = session.key();
        let counts = session.forwarded();
        let state = SessionState {
            listener: listener.to_owned(),
            socket: ino,
            client: key.client,
            local: key.local,
            pool: session.handle.stats().pool.to_string(),
            backend: session.backend.address,
            age_ms: now.saturating_sub(session.created()),
            requests: session.requests(),
            replies: session.replies(),
            to_backend: counts.to_backend,
            to_backend_bytes: counts.to_backend_bytes,
            to_client: counts.to_client,
            to_client_bytes: counts.to_client_bytes,
            header_pending: session.handle.header_pending(),
        };
        // Its link (and reply task) stop here; the duplicate keeps the socket open.
        drop(session);
        // Nobody takes them any more (the handover failed): it ends, like an idle one.
        let _ = plane
            .handoff
            .deliver_session(Box::new(FrozenSession { upstream, state }));
    }
}

/// The new process: puts a handed-over session in `shared`'s table on its own upstream
/// socket. False when it cannot (its backend is not in the pool, a session of the same
/// client was opened here meanwhile, or the socket cannot be registered): it ends.
pub(super) fn adopt(
    frozen: Box<FrozenSession>,
    (spec, settings): (&ListenerSpec, &UdpSpec),
    shared: &Arc<Shared>,
    tracker: &Tracker,
) -> bool {
    let FrozenSession { upstream, state } = *frozen;
    let backend = spec.pool.as_ref().and_then(|pool| {
        pool.backends
            .iter()
            .find(|b| b.address == state.backend)
            .cloned()
    });
    let Some(backend) = backend else {
        return false;
    };
    let key = state.key();
    let ticket = spec.admission.readmit(key.client.ip());
    let slot = Slot::adopted(spec.live.clone(), ticket, tracker.enter());
    let Ok(mut handle) = Handle::adopt(&backend, upstream, slot, shared) else {
        return false;
    };
    if state.header_pending
        && let Some(header) = super::serve::proxy_header(spec, key)
    {
        handle.announce(header);
    }
    let now = shared.now();
    let responses = settings.responses.and_then(std::num::NonZeroU32::new);
    let mut table = shared.table();
    let Ok(id) = table.insert(key, backend, handle, responses, now) else {
        return false;
    };
    if let Some(session) = table.get_mut(id) {
        session.handle.start(id);
        session.restore(
            now.saturating_sub(state.age_ms),
            (state.requests, state.replies),
            state.counts(),
        );
    }
    true
}
