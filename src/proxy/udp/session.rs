//! What a session is: its key (a client and the local address it wrote to), its id in the
//! table, and what the table keeps about it beside the shell's backend and handle. The
//! table's own bookkeeping (age, activity, replies, the `responses` limit) is read-only
//! outside this module, since the deadline heap relies on it.

use std::net::SocketAddr;
use std::num::NonZeroU32;

use crate::proxy::access_log::UdpCounts;

/// A session is one client writing to one of our addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub client: SocketAddr,
    /// The address the client sent to: the listener's own, or on a wildcard bind the one
    /// `PKTINFO` reported. Replies leave from it.
    pub local: SocketAddr,
}

/// A session's place in the table. Never reused: an id kept after its session ended (an
/// upstream reply racing the expiry) finds nothing rather than a newer session in its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId {
    pub(super) slot: u32,
    pub(super) serial: u64,
}

/// One session: what the shell gave (`backend`, `handle`) and what the table keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session<B, H> {
    pub(super) key: FlowKey,
    /// Which backend serves it, as the shell names backends.
    pub backend: B,
    /// The shell's: its upstream socket, admission ticket, counters.
    pub handle: H,
    pub(super) created: u64,
    pub(super) last_active: u64,
    pub(super) replies: u32,
    /// Datagrams from the client so far, the first included.
    pub(super) requests: u32,
    pub(super) responses: Option<NonZeroU32>,
    /// Datagrams and bytes the sockets took each way, for the access log.
    pub(super) forwarded: UdpCounts,
}

impl<B, H> Session<B, H> {
    /// A session admitted at `now`: its first datagram counts as activity.
    pub(super) fn new(
        key: FlowKey,
        backend: B,
        handle: H,
        responses: Option<NonZeroU32>,
        now: u64,
    ) -> Session<B, H> {
        Session {
            key,
            backend,
            handle,
            created: now,
            last_active: now,
            replies: 0,
            requests: 1,
            responses,
            forwarded: UdpCounts::default(),
        }
    }

    /// What a session handed over by the previous process had done: its start and counts.
    /// Not its activity: it counts as active now, so the idle deadline only moves forward,
    /// as the deadline heap needs.
    pub(super) fn restore(
        &mut self,
        created: u64,
        (requests, replies): (u32, u32),
        forwarded: UdpCounts,
    ) {
        self.created = created;
        self.requests = requests;
        self.replies = replies;
        self.forwarded = forwarded;
    }

    pub fn key(&self) -> FlowKey {
        self.key
    }

    /// When it was inserted.
    pub fn created(&self) -> u64 {
        self.created
    }

    /// Its last datagram, either way.
    pub fn last_active(&self) -> u64 {
        self.last_active
    }

    /// Datagrams and bytes sent each way so far.
    pub fn forwarded(&self) -> UdpCounts {
        self.forwarded
    }

    /// Replies forwarded so far.
    pub fn replies(&self) -> u32 {
        self.replies
    }

    /// Datagrams from the client so far, the first included.
    pub fn requests(&self) -> u32 {
        self.requests
    }

    /// Replies expected per client datagram, if any: the session ends once every datagram
    /// of its client has had them (nginx's `proxy_responses`). Counted per datagram, not in
    /// total, so a client with two queries in flight from one port (a resolver asking A and
    /// AAAA at once) gets both answers.
    pub fn responses(&self) -> Option<NonZeroU32> {
        self.responses
    }

    /// Whether every client datagram has had its `responses` replies.
    pub(super) fn answered(&self) -> bool {
        self.responses.is_some_and(|per| {
            u64::from(self.replies) >= u64::from(per.get()) * u64::from(self.requests)
        })
    }

    /// When it ends unless a datagram comes first.
    pub(super) fn deadline(&self, idle: u64) -> u64 {
        self.last_active.saturating_add(idle)
    }

    /// Activity at `now`. A `now` older than the last one (a clock read on another path just
    /// before) never moves the deadline back, which the deadline heap's invariant relies on.
    pub(super) fn touch(&mut self, now: u64) {
        self.last_active = self.last_active.max(now);
    }
}
