//! Handing established connections to another process (a binary upgrade's second half,
//! `crate::upgrade`): freezing a connection where it stands, and resuming one that was
//! frozen, here or in the new process. UDP sessions go the same way (`udp/handover.rs`).
//!
//! A connection is frozen only while it forwards (`copy.rs` checks [`Handoff::freezing`] each
//! time it is polled). Its state is then plain: two sockets, and per direction a pipe that
//! holds the bytes read and not yet delivered (bytes a buffer held are written into a fresh
//! pipe, so that they travel as a descriptor, never through a message), whether the source
//! ended and whether the FIN was passed on, and the bytes moved. The kernel keeps everything
//! in flight: socket queues and pipes go with their descriptors.
//!
//! Idle connections are not polled, so each worker keeps the wakers of its forwarding
//! connections ([`Registry`], one per thread); freezing wakes them all. A [`Frozen`]
//! connection keeps its worker's drain guard until it is handed over (or resumed), so the
//! process does not finish draining while it still owns one.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::Waker;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::TrackerGuard;
use super::udp::handover::FrozenSession;
use crate::sys::Pipe;

/// One direction of a frozen connection.
#[derive(Debug)]
pub struct FrozenDirection {
    /// What was read and not yet delivered (`None`: nothing).
    pub pipe: Option<Pipe>,
    pub state: DirectionState,
}

/// A direction's flags and counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectionState {
    /// Bytes delivered so far.
    pub moved: u64,
    /// The source ended (its FIN came).
    pub eof: bool,
    /// Everything is delivered and the FIN passed on: the direction is over.
    pub done: bool,
    /// It carried bulk data (its bursts splice).
    pub bulk: bool,
}

/// What a frozen connection is, beyond its descriptors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionState {
    pub listener: String,
    /// The client (as a trusted balancer's PROXY header named it, when one did).
    pub client: SocketAddr,
    pub pool: String,
    pub backend: SocketAddr,
    pub up: DirectionState,
    pub down: DirectionState,
    /// `client` or `backend`: whose FIN came first, once one has.
    pub first_fin: Option<String>,
    /// Nothing has moved for this long.
    pub idle_for_ms: u64,
    /// How long the connection has been open (for its access-log line).
    pub age_ms: u64,
}

/// A connection frozen where it stood: its sockets, its directions and its state.
#[derive(Debug)]
pub struct Frozen {
    pub client: std::net::TcpStream,
    pub backend: std::net::TcpStream,
    pub up: Option<Pipe>,
    pub down: Option<Pipe>,
    pub state: ConnectionState,
    /// The drain guard of the worker it came from (none in the process that received it).
    pub guard: Option<TrackerGuard>,
    /// Kept where it is (the new process could not take it): it is not frozen again.
    pub stays: bool,
}

/// What the handoff hands on: a frozen TCP connection, or a UDP session.
#[derive(Debug)]
pub enum Handed {
    Tcp(Box<Frozen>),
    Udp(Box<FrozenSession>),
}

/// The switch that freezes connections, and where frozen ones go.
#[derive(Debug)]
pub struct Handoff {
    freezing: AtomicBool,
    wake: watch::Sender<u64>,
    to: Mutex<Option<std::sync::mpsc::Sender<Handed>>>,
    /// Connections and sessions handed on so far, and batches the new process took: a
    /// drain waits as long as this moves.
    progress: AtomicU64,
}

impl Default for Handoff {
    fn default() -> Self {
        Handoff {
            progress: AtomicU64::new(0),
            freezing: AtomicBool::new(false),
            wake: watch::channel(0).0,
            to: Mutex::new(None),
        }
    }
}

impl Handoff {
    /// Whether forwarding connections are to freeze now.
    pub fn freezing(&self) -> bool {
        self.freezing.load(Ordering::Acquire)
    }

    /// Freezes every forwarding connection (and any that starts forwarding later) and
    /// every UDP session, and sends them to the returned receiver.
    pub fn start(&self) -> std::sync::mpsc::Receiver<Handed> {
        let (tx, rx) = std::sync::mpsc::channel();
        *self.to.lock().unwrap_or_else(PoisonError::into_inner) = Some(tx);
        self.freezing.store(true, Ordering::Release);
        self.wake.send_modify(|n| *n += 1);
        rx
    }

    /// Connections forward on where they are from now on (a handover that failed).
    pub fn stop(&self) {
        self.freezing.store(false, Ordering::Release);
        *self.to.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Hands a frozen connection on; gives it back when nobody takes them any more.
    pub fn deliver(&self, frozen: Box<Frozen>) -> Result<(), Box<Frozen>> {
        match self.hand(Handed::Tcp(frozen)) {
            Err(Handed::Tcp(frozen)) => Err(frozen),
            _ => Ok(()),
        }
    }

    /// Hands a UDP session on; gives it back when nobody takes them any more.
    pub fn deliver_session(&self, session: Box<FrozenSession>) -> Result<(), Box<FrozenSession>> {
        match self.hand(Handed::Udp(session)) {
            Err(Handed::Udp(session)) => Err(session),
            _ => Ok(()),
        }
    }

    fn hand(&self, what: Handed) -> Result<(), Handed> {
        let to = self.to.lock().unwrap_or_else(PoisonError::into_inner);
        match to.as_ref() {
            Some(tx) => tx.send(what).map_err(|e| e.0)?,
            None => return Err(what),
        }
        self.progress.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Progress of a handover: connections and sessions handed on, and batches the new
    /// process took. A worker's drain deadline does not cut a handover that still moves:
    /// it counts from the last progress.
    pub fn progress(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// The new process took a batch (see [`Handoff::progress`]).
    pub fn progressed(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// Ticks each time freezing starts: each worker's [`wake_all`] task follows it.
    pub fn woken(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }
}

/// The wakers of one worker's forwarding connections, by slot.
#[derive(Default)]
pub struct Registry {
    slots: Vec<Option<Waker>>,
    free: Vec<u32>,
}

thread_local! {
    static FORWARDING: RefCell<Registry> = RefCell::default();
}

/// A forwarding connection's place in its worker's registry; leaves it when dropped.
pub struct Registered(u32);

impl Registered {
    /// Notes `waker` (the connection's task) on this thread.
    pub fn enter(waker: &Waker) -> Option<Registered> {
        FORWARDING
            .try_with(|r| {
                let mut r = r.borrow_mut();
                let slot = match r.free.pop() {
                    Some(slot) => slot,
                    None => {
                        r.slots.push(None);
                        u32::try_from(r.slots.len() - 1).ok()?
                    }
                };
                r.slots[slot as usize] = Some(waker.clone());
                Some(Registered(slot))
            })
            .ok()
            .flatten()
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let _ = FORWARDING.try_with(|r| {
            if let Ok(mut r) = r.try_borrow_mut()
                && let Some(slot) = r.slots.get_mut(self.0 as usize)
            {
                *slot = None;
                r.free.push(self.0);
            }
        });
    }
}

/// Wakers woken at a time before the worker gets a turn for its other tasks.
const WAKE_CHUNK: usize = 64;

/// One per worker: each time freezing starts, wakes every forwarding connection of this
/// thread, so that idle ones freeze too. A few at a time, yielding between: connections
/// that are moving data are polled by their own readiness meanwhile, so they freeze first
/// and go over in the first batches, instead of stalling behind thousands of idle ones.
pub async fn wake_all(mut woken: watch::Receiver<u64>) {
    while woken.changed().await.is_ok() {
        let wakers: Vec<Waker> = FORWARDING
            .try_with(|r| r.borrow().slots.iter().flatten().cloned().collect())
            .unwrap_or_default();
        for chunk in wakers.chunks(WAKE_CHUNK) {
            for waker in chunk {
                waker.wake_by_ref();
            }
            tokio::task::yield_now().await;
        }
    }
}

/// How long ago, as a duration, for the state's millisecond fields.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
