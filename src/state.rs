//! The runtime state the data plane reads: one immutable [`Snapshot`] per configuration,
//! published through [`arc_swap::ArcSwap`], and the live per-backend and per-listener facts
//! (atomics) that outlive any one snapshot.
//!
//! A worker loads the snapshot once per connection and keeps that `Arc` for the connection's
//! life, so no lock is taken on the hot path. This module knows nothing of YAML or config
//! files: the control plane builds snapshots from whatever it validated.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;

use crate::balance::RoundRobin;

/// Live counters of one backend; kept by identity (pool, address) across snapshots.
#[derive(Debug, Default)]
pub struct BackendStats {
    pub active: AtomicU64,
    pub connections: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Bytes sent to the backend (client → backend).
    pub sent_bytes: AtomicU64,
    /// Bytes received from the backend (backend → client).
    pub received_bytes: AtomicU64,
}

#[derive(Debug)]
pub struct Backend {
    pub address: SocketAddr,
    pub weight: u32,
    pub stats: Arc<BackendStats>,
}

/// A pool as the data plane sees it: its backends and how to choose among them.
#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    pub backends: Vec<Arc<Backend>>,
    pub connect_retries: u32,
    rr: RoundRobin,
    ticket: AtomicU64,
}

impl Pool {
    pub fn new(name: &str, backends: Vec<Arc<Backend>>, connect_retries: u32) -> Pool {
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        Pool {
            name: name.into(),
            rr: RoundRobin::new(&weights),
            backends,
            connect_retries,
            ticket: AtomicU64::new(0),
        }
    }

    /// The backends to try for one new connection, in order: the balancer's pick, then up to
    /// `connect_retries` others.
    pub fn candidates(&self) -> Vec<Arc<Backend>> {
        let ticket = self.ticket.fetch_add(1, Ordering::Relaxed);
        let want = usize::try_from(self.connect_retries)
            .unwrap_or(0)
            .saturating_add(1);
        let mut picks = Vec::with_capacity(want.min(self.backends.len()));
        self.rr.candidates(ticket, want, &mut picks);
        picks
            .into_iter()
            .filter_map(|i| self.backends.get(i).cloned())
            .collect()
    }
}

/// Live facts of one listener; kept by name across snapshots.
#[derive(Debug)]
pub struct ListenerLive {
    pub accepted: AtomicU64,
    pub active: AtomicU64,
    pub accept_errors: AtomicU64,
    pub rejected_no_backend: AtomicU64,
    /// Permits for `limits.max_connections`: the accept loop takes one before accepting.
    pub slots: Arc<Semaphore>,
}

impl ListenerLive {
    pub fn new(max_connections: usize) -> ListenerLive {
        ListenerLive {
            accepted: AtomicU64::new(0),
            active: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            rejected_no_backend: AtomicU64::new(0),
            slots: Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS))),
        }
    }
}

/// What a listener does with each connection, as of one snapshot.
#[derive(Debug)]
pub struct ListenerSpec {
    pub name: Arc<str>,
    pub pool: Arc<Pool>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub live: Arc<ListenerLive>,
}

/// One generation of the running configuration.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub listeners: HashMap<Arc<str>, Arc<ListenerSpec>>,
}

impl Snapshot {
    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerSpec>> {
        self.listeners.get(name)
    }
}

/// The published snapshot: swapped whole by the control plane, loaded by the workers.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;
