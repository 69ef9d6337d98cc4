//! The data plane: listening sockets and accept loops (`listener.rs`) and the
//! `max_connections` slots they hand out (`slot.rs`), the life of one TCP
//! connection (`tcp.rs`, reaching its backend in `dial.rs`) and moving its bytes (`copy.rs`, one direction at a time in
//! `pump.rs`, with buffers from `buffers.rs`; a failed leg passed on as a reset in
//! `abort.rs`), and the failure streaks behind passive health
//! checks (`passive.rs`). `udp/` serves UDP listeners: sessions, their upstream sockets and replies.
//! `access_log.rs` writes a line per connection and per UDP session as it ends, when on;
//! `sockets.rs` keeps the set of listening sockets in service, and `handoff.rs` freezes and
//! resumes established connections, for a binary upgrade.
//!
//! It reads only the published [`crate::state::Snapshot`] and its own [`DataPlane`] settings;
//! it never imports `config`, `app` or admin code.

mod abort;
pub mod access_log;
mod bind;
pub mod buffers;
pub mod copy;
mod dial;
pub mod handoff;
pub mod listener;
mod passive;
mod peek;
mod proxied;
mod pump;
pub mod resume;
mod route;
pub mod slot;
pub mod sockets;
pub mod tcp;
pub mod throttle;
pub mod udp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::{Notify, mpsc};

use crate::state::Published;
use crate::sys::PipePool;

/// How bytes move between the legs of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardMode {
    /// `splice(2)` through a pooled pipe; a buffered copy when no pipe can be had.
    Splice,
    /// Always a buffered copy.
    Copy,
}

/// What every worker shares: the snapshot, the pipe pool, the forwarding mode and the
/// access log.
#[derive(Debug)]
pub struct DataPlane {
    pub snapshot: Published,
    pub pipes: PipePool,
    /// `ForwardMode` as a flag (true = copy), so a reload can change it for new connections.
    copy_only: AtomicBool,
    /// Passive health: a backend that just reached its pool's limit of connect failures in a
    /// row. Sent once per crossing (rare), never per connection, and never waited on: the
    /// channel is bounded, and a full one defers the notice to the next failure.
    pub failing: mpsc::Sender<PassiveDown>,
    /// `logging.access`: off until configured; a reload changes it for what ends after.
    pub access: Arc<access_log::AccessLog>,
    /// The listening sockets in service, and the switch that pauses them while a binary
    /// upgrade takes them over.
    pub listening: Arc<sockets::Listening>,
    /// Freezing established connections for a binary upgrade to hand over.
    pub handoff: handoff::Handoff,
    /// The UDP listening sockets' loops that take sessions handed over by the previous
    /// process.
    pub udp_adopters: Arc<udp::handover::Adopters>,
}

/// A backend whose connect failures in a row just reached its pool's passive limit; the
/// control plane marks it down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveDown {
    pub pool: Arc<str>,
    pub backend: SocketAddr,
}

impl DataPlane {
    pub fn new(
        snapshot: Published,
        pipes: PipePool,
        mode: ForwardMode,
        failing: mpsc::Sender<PassiveDown>,
    ) -> DataPlane {
        DataPlane {
            snapshot,
            pipes,
            copy_only: AtomicBool::new(mode == ForwardMode::Copy),
            failing,
            access: Arc::default(),
            listening: Arc::default(),
            handoff: handoff::Handoff::default(),
            udp_adopters: Arc::default(),
        }
    }

    pub fn mode(&self) -> ForwardMode {
        if self.copy_only.load(Ordering::Relaxed) {
            ForwardMode::Copy
        } else {
            ForwardMode::Splice
        }
    }

    pub fn set_mode(&self, mode: ForwardMode) {
        self.copy_only
            .store(mode == ForwardMode::Copy, Ordering::Relaxed);
    }
}

/// Counts a worker's open connections so a drain can wait for them to finish.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    inner: Arc<TrackerInner>,
}

#[derive(Debug, Default)]
struct TrackerInner {
    open: AtomicUsize,
    idle: Notify,
}

/// Held by a connection task; dropping it marks the connection finished.
#[derive(Debug)]
pub struct TrackerGuard {
    inner: Arc<TrackerInner>,
}

impl Tracker {
    pub fn enter(&self) -> TrackerGuard {
        self.inner.open.fetch_add(1, Ordering::AcqRel);
        TrackerGuard {
            inner: self.inner.clone(),
        }
    }

    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    /// Resolves once no connection is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for TrackerGuard {
    fn drop(&mut self) {
        if self.inner.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}
