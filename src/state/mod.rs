//! The runtime state the data plane reads: one immutable [`Snapshot`] per change, published
//! through [`arc_swap::ArcSwap`], and the live per-backend, per-pool and per-listener facts
//! (atomics) that outlive any one snapshot because the control plane hands the same `Arc`s to
//! every snapshot it builds for the same identity.
//!
//! An accept loop holds its listener's spec from the current snapshot, and each connection
//! keeps that `Arc` until its backend answers, so no lock is taken on the hot path; after
//! that a connection keeps only its backend's `Arc` and the listener's live counters, never
//! the pool, so an old generation is freed as soon as the snapshots move on. Metrics are
//! read from these atomics at scrape time. This module knows nothing of YAML, config files
//! or the admin API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

mod at_cap;
mod pool;
mod udp_live;

pub use at_cap::{AtCap, Transition};
pub use pool::{Algorithm, Backend, BackendStats, ConnectFailure, Pool};
pub use udp_live::{Direction, UdpLive, UdpRefusal};

use arc_swap::ArcSwap;
use tokio::sync::{Semaphore, watch};

use crate::admission::{Policy, Reason};

/// Upper bounds (seconds) of the connect-duration histogram buckets: steps of 1, 2.5, 5 from
/// 0.5 ms to 100 000 s, past any connect Linux can make (a SYN is retried at most
/// `tcp_syn_retries` ≤ 127 times, each wait capped at 120 s: under 4.3 hours). Every
/// connect is counted against all of them; the exposition shows the bounds up to the
/// largest configured connect timeout (cumulative counts make any prefix exact), so the
/// largest bucket shown is never below the timeout.
pub const CONNECT_BUCKETS: [f64; 26] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0,
    50.0, 100.0, 250.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0, 25_000.0, 50_000.0, 100_000.0,
];

/// A fixed-bucket histogram of atomics: observing is a few relaxed adds, no lock.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is +Inf.
    buckets: [AtomicU64; CONNECT_BUCKETS.len() + 1],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        // The first bound at or above `secs`; past the last, the +Inf slot.
        let slot = CONNECT_BUCKETS.partition_point(|b| *b < secs);
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// (cumulative counts per bucket bound, count, sum in seconds).
    pub fn read(&self) -> (Vec<u64>, u64, f64) {
        let mut running = 0;
        let cumulative = CONNECT_BUCKETS
            .iter()
            .enumerate()
            .map(|(i, _)| {
                running += self.buckets[i].load(Ordering::Relaxed);
                running
            })
            .collect();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (cumulative, self.count.load(Ordering::Relaxed), sum)
    }
}

/// Live facts of one pool; kept by name across snapshots.
#[derive(Debug, Default)]
pub struct PoolLive {
    pub connect_duration: Histogram,
}

/// Which leg of a proxied connection: the client's or the backend's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

impl Side {
    pub const ALL: [Side; 2] = [Side::Client, Side::Backend];

    pub fn label(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Backend => "backend",
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// How the leg whose failure ended a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The peer reset the connection (ECONNRESET, or EPIPE after a reset).
    Reset,
    /// Any other I/O failure (ETIMEDOUT, EHOSTUNREACH, ENOBUFS, ...).
    Error,
}

impl Failure {
    pub const ALL: [Failure; 2] = [Failure::Reset, Failure::Error];

    pub fn label(self) -> &'static str {
        match self {
            Failure::Reset => "reset",
            Failure::Error => "error",
        }
    }
}

/// Live facts of one listener; kept by name across snapshots.
#[derive(Debug)]
pub struct ListenerLive {
    pub accepted: AtomicU64,
    pub active: AtomicU64,
    pub accept_errors: AtomicU64,
    pub rejected_no_backend: AtomicU64,
    /// Connections from an `accept_from` source whose PROXY header was malformed, late or
    /// missing.
    pub rejected_proxy_protocol: AtomicU64,
    /// Connections `sni` could not route: no TLS, a malformed or late ClientHello, or a
    /// server name with no route and no default.
    pub rejected_sni: AtomicU64,
    /// Connections ended by a failed leg, by side and failure (see [`ListenerLive::aborted`]).
    aborted: [AtomicU64; 4],
    /// Connections closed at once by admission, by reason (see [`ListenerLive::rejected`]).
    pub rejected_acl: AtomicU64,
    pub rejected_rate_limit: AtomicU64,
    pub rejected_source_limit: AtomicU64,
    pub rejected_source_table_full: AtomicU64,
    /// Permits for `limits.max_connections`: each accepted connection holds one.
    pub slots: Arc<Semaphore>,
    /// Time spent with every slot taken and a client waiting for one.
    pub at_cap: AtCap,
    max: AtomicUsize,
    /// A UDP listener's sessions and datagrams (all zero on a TCP listener).
    pub udp: UdpLive,
    /// Permits still to retire after the cap was lowered while they were in use.
    debt: AtomicUsize,
}

impl ListenerLive {
    pub fn new(max_connections: usize) -> ListenerLive {
        let max = max_connections.min(Semaphore::MAX_PERMITS);
        ListenerLive {
            accepted: AtomicU64::new(0),
            active: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            rejected_no_backend: AtomicU64::new(0),
            rejected_proxy_protocol: AtomicU64::new(0),
            rejected_sni: AtomicU64::new(0),
            aborted: Default::default(),
            rejected_acl: AtomicU64::new(0),
            rejected_rate_limit: AtomicU64::new(0),
            rejected_source_limit: AtomicU64::new(0),
            rejected_source_table_full: AtomicU64::new(0),
            slots: Arc::new(Semaphore::new(max)),
            at_cap: AtCap::default(),
            max: AtomicUsize::new(max),
            udp: UdpLive::default(),
            debt: AtomicUsize::new(0),
        }
    }

    /// The counter of connections refused by admission for `reason`.
    pub fn rejected(&self, reason: Reason) -> &AtomicU64 {
        match reason {
            Reason::Acl => &self.rejected_acl,
            Reason::RateLimit => &self.rejected_rate_limit,
            Reason::SourceLimit => &self.rejected_source_limit,
            Reason::SourceTableFull => &self.rejected_source_table_full,
        }
    }

    /// The counter of connections ended by a failure of the `side` leg (the other leg was
    /// reset, not closed).
    pub fn aborted(&self, side: Side, why: Failure) -> &AtomicU64 {
        &self.aborted[side as usize * 2 + why as usize]
    }

    pub fn max_connections(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// Changes the cap (a reload). Lowering it retires idle permits now and in-use ones as
    /// their connections end (see [`ListenerLive::retire`]); open connections are not cut.
    pub fn set_max_connections(&self, want: usize) {
        let want = want.min(Semaphore::MAX_PERMITS);
        let old = self.max.swap(want, Ordering::AcqRel);
        if want > old {
            let raise = want - old;
            // Pay back debt first: those permits were never retired.
            let paid = self
                .debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                    Some(d - d.min(raise))
                })
                .map_or(0, |prev| prev.min(raise));
            self.slots.add_permits(raise - paid);
        } else if want < old {
            // Invariant: available + in use = max + debt. Claim the whole debt (a connection
            // ending meanwhile then returns its permit, which keeps the sum), forget what is
            // available now, and owe the rest.
            let owed = self.debt.swap(0, Ordering::AcqRel) + (old - want);
            let forgotten = self.slots.forget_permits(owed);
            self.debt.fetch_add(owed - forgotten, Ordering::AcqRel);
        }
    }

    /// Called when a connection ends: true when its permit must be retired (forgotten)
    /// rather than returned, because the cap was lowered.
    pub fn retire(&self) -> bool {
        self.debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
            .is_ok()
    }
}

/// What a listener does with each connection, as of one snapshot.
#[derive(Debug)]
pub struct ListenerSpec {
    pub name: Arc<str>,
    /// The configured bind addresses (port 0 as written); an accept loop whose address is no
    /// longer here stops.
    pub bind: Vec<SocketAddr>,
    /// Where connections go; `None` when `sni` routes them.
    pub pool: Option<Arc<Pool>>,
    /// Routes by the TLS server name.
    pub sni: Option<SniSpec>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub live: Arc<ListenerLive>,
    /// Who may connect: ACLs, the runtime deny list, per-source limits.
    pub admission: Policy,
    /// A UDP listener's sessions; `None` for TCP.
    pub udp: Option<UdpSpec>,
    /// The PROXY header version written to each backend connection first, if any.
    pub proxy_send: Option<crate::proxy_protocol::Version>,
    /// Sources whose connections must start with a PROXY header (`accept_from`), if any.
    pub proxy_accept: Option<crate::admission::PrefixSet>,
    /// How long such a header may take to arrive.
    pub proxy_header_timeout: Duration,
}

impl ListenerSpec {
    pub fn transport(&self) -> Transport {
        match self.udp {
            None => Transport::Tcp,
            Some(_) => Transport::Udp,
        }
    }
}

/// A listener's routes by the server name of the TLS ClientHello.
#[derive(Debug)]
pub struct SniSpec {
    pub routes: crate::sni::Routes<Arc<Pool>>,
    /// How long the ClientHello may take to arrive.
    pub peek_timeout: Duration,
}

/// TCP or UDP: their ports are separate, so a listener of each may bind the same address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Tcp,
    Udp,
}

/// How a UDP listener's sessions (flows) live and end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpSpec {
    /// No datagram either way for this long ends a session.
    pub session_idle: Duration,
    /// Sessions at once on this listener, across workers.
    pub max_sessions: usize,
    /// Replies after which a session ends; `None`: only idleness ends it.
    pub responses: Option<u32>,
}

/// One published state of the running configuration and runtime overrides.
#[derive(Debug)]
pub struct Snapshot {
    /// The config generation: 1 at start, +1 per successful reload.
    pub generation: u64,
    pub listeners: HashMap<Arc<str>, Arc<ListenerSpec>>,
    pub pools: HashMap<Arc<str>, Arc<Pool>>,
}

impl Snapshot {
    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerSpec>> {
        self.listeners.get(name)
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.get(name)
    }
}

/// The published snapshot plus a version channel that ticks on every publish, so accept
/// loops parked in `accept()` notice that their listener went away.
#[derive(Debug)]
pub struct Published {
    current: ArcSwap<Snapshot>,
    version: watch::Sender<u64>,
}

impl Published {
    pub fn new(first: Snapshot) -> Published {
        Published {
            current: ArcSwap::from_pointee(first),
            version: watch::channel(0).0,
        }
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn publish(&self, next: Snapshot) {
        self.current.store(Arc::new(next));
        self.version.send_modify(|v| *v += 1);
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowering_the_cap_retires_permits_as_connections_end() {
        let live = ListenerLive::new(3);
        let held: Vec<_> = (0..3)
            .map(|_| live.slots.clone().try_acquire_owned().unwrap())
            .collect();
        live.set_max_connections(1);
        assert_eq!(live.slots.available_permits(), 0);
        let mut returned = 0;
        for permit in held {
            if live.retire() {
                permit.forget();
            } else {
                drop(permit);
                returned += 1;
            }
        }
        assert_eq!(returned, 1);
        assert_eq!(live.slots.available_permits(), 1, "the new cap holds");
        live.set_max_connections(4);
        assert_eq!(live.slots.available_permits(), 4);
    }

    #[test]
    fn raising_the_cap_pays_debt_first() {
        let live = ListenerLive::new(2);
        let a = live.slots.clone().try_acquire_owned().unwrap();
        let b = live.slots.clone().try_acquire_owned().unwrap();
        live.set_max_connections(0);
        live.set_max_connections(1);
        // One of the two in-use permits is still owed; the other is the new cap's.
        for p in [a, b] {
            if live.retire() { p.forget() } else { drop(p) }
        }
        assert_eq!(live.slots.available_permits(), 1);
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_secs(3));
        h.observe(Duration::from_secs(200_000));
        let (buckets, count, sum) = h.read();
        assert_eq!(count, 4);
        assert_eq!(buckets[0], 1);
        assert_eq!(buckets[5], 2); // ≤ 25 ms
        assert_eq!(buckets[11], 2, "3 s is above 2.5 s");
        assert_eq!(buckets[12], 3, "and within 5 s");
        assert_eq!(*buckets.last().unwrap(), 3, "200 000 s is only in +Inf");
        assert!((sum - 200_003.020_3).abs() < 1e-6);
    }
}
