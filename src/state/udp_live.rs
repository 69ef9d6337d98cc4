//! Live facts of a UDP listener, kept with its [`super::ListenerLive`] across snapshots:
//! sessions open and made, sessions refused by reason, datagrams and bytes each way, and
//! its upstream sockets (opened, kept for reuse, and their unclaimed replies).
//! The workers' session loops write them; metrics and status read them.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::admission::Reason;

/// Why a client's first datagram made no session; the `reason` label of
/// `tollgate_udp_sessions_rejected_total`. The datagram is dropped silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpRefusal {
    /// A deny list matched, or an allow list did not.
    Acl,
    /// The source's `connection_rate` (counted in sessions) is spent.
    RateLimit,
    /// The source has `max_connections` sessions open already.
    SourceLimit,
    /// The tracked-sources table is full of sources that cannot be forgotten yet.
    SourceTableFull,
    /// The listener has `udp.max_sessions` sessions open.
    MaxSessions,
    /// No backend of the pool may take a session.
    NoBackend,
    /// No upstream socket could be made for it (descriptors or ephemeral ports ran out).
    LocalError,
}

impl UdpRefusal {
    pub const ALL: [UdpRefusal; 7] = [
        UdpRefusal::Acl,
        UdpRefusal::RateLimit,
        UdpRefusal::SourceLimit,
        UdpRefusal::SourceTableFull,
        UdpRefusal::MaxSessions,
        UdpRefusal::NoBackend,
        UdpRefusal::LocalError,
    ];

    pub fn label(self) -> &'static str {
        match self {
            UdpRefusal::Acl => "acl",
            UdpRefusal::RateLimit => "rate_limit",
            UdpRefusal::SourceLimit => "source_limit",
            UdpRefusal::SourceTableFull => "source_table_full",
            UdpRefusal::MaxSessions => "max_sessions",
            UdpRefusal::NoBackend => "no_backend",
            UdpRefusal::LocalError => "local_error",
        }
    }
}

impl From<Reason> for UdpRefusal {
    fn from(r: Reason) -> UdpRefusal {
        match r {
            Reason::Acl => UdpRefusal::Acl,
            Reason::RateLimit => UdpRefusal::RateLimit,
            Reason::SourceLimit => UdpRefusal::SourceLimit,
            Reason::SourceTableFull => UdpRefusal::SourceTableFull,
        }
    }
}

/// Which way a datagram went; the `direction` label of the UDP datagram and byte counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From a client, to its session's backend.
    ToBackend,
    /// From a backend, to the session's client.
    ToClient,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::ToBackend, Direction::ToClient];

    pub fn label(self) -> &'static str {
        match self {
            Direction::ToBackend => "to_backend",
            Direction::ToClient => "to_client",
        }
    }
}

#[derive(Debug, Default)]
pub struct UdpLive {
    /// Sessions open now, across workers; `udp.max_sessions` bounds it.
    pub sessions_active: AtomicU64,
    /// Sessions made since start.
    pub sessions_total: AtomicU64,
    rejected: [AtomicU64; 7],
    datagrams: [AtomicU64; 2],
    bytes: [AtomicU64; 2],
    /// Datagrams of a session dropped because a socket's send buffer was full or the send
    /// failed (UDP gives no back-pressure; counting is all that can be done).
    pub dropped: [AtomicU64; 2],
    /// Upstream sockets opened since start. Below `sessions_total` by the sessions that a
    /// kept socket served (`udp.responses`).
    pub upstream_opened: AtomicU64,
    /// Upstream sockets kept open between sessions now, across workers.
    pub upstream_idle: AtomicU64,
    /// Datagrams from backends that no open session was waiting for (after every reply a
    /// session was owed, or after it ended), dropped.
    pub unclaimed: AtomicU64,
}

impl UdpLive {
    pub fn rejected(&self, why: UdpRefusal) -> &AtomicU64 {
        &self.rejected[why as usize]
    }

    pub fn datagrams(&self, way: Direction) -> &AtomicU64 {
        &self.datagrams[way as usize]
    }

    pub fn bytes(&self, way: Direction) -> &AtomicU64 {
        &self.bytes[way as usize]
    }

    /// Counts `n` datagrams of `bytes` in all, going `way`.
    pub fn moved(&self, way: Direction, n: usize, bytes: usize) {
        self.datagrams[way as usize].fetch_add(n as u64, Ordering::Relaxed);
        self.bytes[way as usize].fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Takes one session slot of `max` across workers; false (and nothing taken) at the cap.
    pub fn take_session(&self, max: usize) -> bool {
        self.sessions_active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max as u64).then_some(n + 1)
            })
            .is_ok()
    }

    /// Counts a session that is open already (handed over by the previous process), cap
    /// or not.
    pub fn count_session(&self) {
        self.sessions_active.fetch_add(1, Ordering::AcqRel);
    }

    pub fn release_session(&self) {
        self.sessions_active.fetch_sub(1, Ordering::AcqRel);
    }
}
