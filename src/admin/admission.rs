//! Fair admission to the admin API, so that `/healthz`, `/readyz` and `/metrics` answer
//! whatever other clients of the admin port do. A load balancer's health endpoint that a few
//! idle connections can starve withdraws a healthy instance (or keeps a dead one).
//!
//! The rule: **a new connection is always admitted, and when all [`MAX_CONNECTIONS`] slots
//! are taken, the idlest connection of the address holding the most slots is closed to make
//! room.** A connection is idle unless one of its requests is being handled: waiting for a
//! request head (nothing sent yet, a slow head, keep-alive between requests), reading a body,
//! writing an answer the client does not read, or lingering at close. So
//!
//! - idle or slow connections hold nothing anyone else needs: four addresses holding idle
//!   connections lose them, one at a time, to whoever connects next;
//! - a health checker with one connection is never the one closed while another address
//!   holds more than one (max-min fairness between addresses); among addresses holding one
//!   each, the connection idle longest goes, never the one that just connected;
//! - a connection whose request is being handled is never closed. Handlers that can take
//!   time (changes, which wait for the control plane, and reloads) are bounded separately
//!   (`routes.rs`, [`MAX_CHANGES_IN_FLIGHT`]), so they can never hold every slot; all other
//!   handlers run to completion without yielding on the control plane's single thread, so
//!   when the accept loop runs none of them is mid-way.
//!
//! A new connection is refused only if every slot is busy with a change, which the bound on
//! changes makes impossible. State is a table of at most [`MAX_CONNECTIONS`] entries; time
//! is passed in, so the choice of whom to close is tested deterministically.

use std::cmp::Reverse;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::oneshot;

/// Concurrent admin connections.
pub(super) const MAX_CONNECTIONS: usize = 32;
/// Changes (POST, PUT, DELETE) being handled at once; more are answered 503. Well below
/// [`MAX_CONNECTIONS`], so that connections in a handler never fill the table.
pub(crate) const MAX_CHANGES_IN_FLIGHT: usize = 8;

/// The live admin connections.
#[derive(Default)]
pub(super) struct Admission {
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    conns: Vec<Entry>,
}

struct Entry {
    id: u64,
    peer: IpAddr,
    /// Requests of this connection being handled now.
    busy: u32,
    /// When it last became idle (accepted, or a request finished).
    idle_since: Instant,
    /// Dropped to close the connection (its task waits on the receiver).
    _close: oneshot::Sender<()>,
}

/// What admitting a connection did.
pub(super) struct Admitted {
    pub ticket: Ticket,
    /// Resolves when the connection must close to make room for another.
    pub closed: oneshot::Receiver<()>,
    /// The address whose connection was closed to make room, if one was.
    pub displaced: Option<IpAddr>,
}

impl Admission {
    /// Admits a connection from `peer`, closing another if the table is full; `None` when
    /// every connection is busy in a handler.
    pub(super) fn admit(self: &Arc<Self>, peer: IpAddr, now: Instant) -> Option<Admitted> {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let mut displaced = None;
        if table.conns.len() >= MAX_CONNECTIONS {
            let victim = table.victim()?;
            displaced = Some(table.conns.swap_remove(victim).peer);
        }
        let id = table.next_id;
        table.next_id += 1;
        let (close, closed) = oneshot::channel();
        table.conns.push(Entry {
            id,
            peer,
            busy: 0,
            idle_since: now,
            _close: close,
        });
        let slot = Slot {
            admission: self.clone(),
            id,
        };
        Some(Admitted {
            ticket: Ticket(slot),
            closed,
            displaced,
        })
    }

    /// Connections admitted and not yet ended or closed.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().conns.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut Entry)) {
        if let Some(e) = self.lock().conns.iter_mut().find(|e| e.id == id) {
            f(e);
        }
    }
}

impl Table {
    /// The idle connection to close: of the address holding the most connections, the one
    /// idle longest.
    fn victim(&self) -> Option<usize> {
        let held = |peer: IpAddr| self.conns.iter().filter(|e| e.peer == peer).count();
        self.conns
            .iter()
            .enumerate()
            .filter(|(_, e)| e.busy == 0)
            .max_by_key(|(_, e)| (held(e.peer), Reverse(e.idle_since)))
            .map(|(i, _)| i)
    }
}

/// A connection's place in the table, shared with its request handlers.
#[derive(Clone)]
pub(super) struct Slot {
    admission: Arc<Admission>,
    id: u64,
}

impl Slot {
    /// Marks the connection busy until the guard drops (then idle since that moment).
    pub(super) fn busy(&self) -> Busy {
        self.admission.update(self.id, |e| e.busy += 1);
        Busy(self.clone())
    }
}

/// Held while a request of the connection is being handled.
pub(super) struct Busy(Slot);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.admission.update(self.0.id, |e| {
            e.busy = e.busy.saturating_sub(1);
            e.idle_since = Instant::now();
        });
    }
}

/// Held by the connection's task; dropping it frees the slot.
pub(super) struct Ticket(Slot);

impl Ticket {
    pub(super) fn slot(&self) -> Slot {
        self.0.clone()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut table = self.0.admission.lock();
        table.conns.retain(|e| e.id != self.0.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    /// The attack: four addresses keep eight idle connections each, reconnecting the
    /// moment one is closed; the health checker's connection from a fifth is never closed.
    #[test]
    fn idle_hogs_make_room_and_never_displace_the_health_checker() {
        let admission = Arc::new(Admission::default());
        let t0 = Instant::now();
        let mut held = Vec::new();
        for i in 0..32u64 {
            let a = admission.admit(ip(2 + (i % 4) as u8), at(t0, i)).unwrap();
            assert!(a.displaced.is_none());
            held.push(a);
        }
        let mut checker = admission.admit(ip(1), at(t0, 100)).unwrap();
        assert!(checker.displaced.is_some_and(|p| p != ip(1)));
        for i in 0..1000u64 {
            let hog = admission
                .admit(ip(2 + (i % 4) as u8), at(t0, 200 + i))
                .unwrap();
            assert_ne!(hog.displaced, Some(ip(1)), "round {i}");
            held.push(hog);
            assert_eq!(admission.len(), MAX_CONNECTIONS);
        }
        assert!(
            checker
                .closed
                .try_recv()
                .is_err_and(|e| e == oneshot::error::TryRecvError::Empty)
        );
        // The checker's next connection, after its first ended, is admitted too.
        drop(checker);
        assert!(admission.admit(ip(1), at(t0, 5000)).is_some());
    }

    #[test]
    fn the_displaced_connection_is_told_and_its_slot_reused() {
        let admission = Arc::new(Admission::default());
        let t0 = Instant::now();
        let mut first = admission.admit(ip(2), t0).unwrap();
        let _rest: Vec<Admitted> = (1..MAX_CONNECTIONS as u64)
            .map(|i| admission.admit(ip(2), at(t0, i)).unwrap())
            .collect();
        let newcomer = admission.admit(ip(3), at(t0, 100)).unwrap();
        assert_eq!(newcomer.displaced, Some(ip(2)));
        assert!(
            first
                .closed
                .try_recv()
                .is_err_and(|e| e == oneshot::error::TryRecvError::Closed),
            "the longest idle of the address holding the most is closed"
        );
        drop(first.ticket);
        assert_eq!(
            admission.len(),
            MAX_CONNECTIONS,
            "dropping a displaced ticket is harmless"
        );
    }

    #[test]
    fn among_equals_the_longest_idle_goes_and_busy_ones_stay() {
        let admission = Arc::new(Admission::default());
        let t0 = Instant::now();
        let mut all: Vec<Admitted> = (0..MAX_CONNECTIONS as u64)
            .map(|i| admission.admit(ip(10 + i as u8), at(t0, i)).unwrap())
            .collect();
        let _busy = all[0].ticket.slot().busy();
        let next = admission.admit(ip(200), at(t0, 100)).unwrap();
        assert_eq!(
            next.displaced,
            Some(ip(11)),
            "ip 10 is busy; ip 11 idle longest"
        );
        assert!(
            all[1]
                .closed
                .try_recv()
                .is_err_and(|e| e == oneshot::error::TryRecvError::Closed)
        );
        drop(next);
        all.truncate(0);
        assert_eq!(admission.len(), 0);
    }

    #[test]
    fn only_a_table_full_of_busy_connections_refuses() {
        let admission = Arc::new(Admission::default());
        let t0 = Instant::now();
        let all: Vec<Admitted> = (0..MAX_CONNECTIONS as u64)
            .map(|i| admission.admit(ip(2), at(t0, i)).unwrap())
            .collect();
        let busy: Vec<Busy> = all.iter().map(|a| a.ticket.slot().busy()).collect();
        assert!(admission.admit(ip(3), at(t0, 100)).is_none());
        drop(busy);
        assert!(admission.admit(ip(3), at(t0, 200)).is_some());
    }
}
