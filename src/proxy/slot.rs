//! `limits.max_connections` slots: the one each connection holds, and the wait of an accept
//! loop that found none free.
//!
//! While a loop waits the listener is at its cap: the wait is timed in the listener's live
//! [`AtCap`](crate::state::AtCap) (`tollgate_listener_full_seconds_total`), and reaching and
//! leaving the cap are logged, at most one pair of lines per listener per 10 s, so an
//! operator learns why clients hang in the kernel's queue without a line per connection.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;
use tracing::{info, warn};

use crate::state::{ListenerLive, ListenerSpec, Transition};

/// A `max_connections` slot held by one connection. Dropping it returns the permit — or, when
/// a reload lowered the cap while it was held, retires it — on every path: a normal end, a
/// refusal, a cancelled task.
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    live: Arc<ListenerLive>,
}

impl Slot {
    pub(super) fn new(permit: OwnedSemaphorePermit, live: Arc<ListenerLive>) -> Slot {
        Slot {
            permit: Some(permit),
            live,
        }
    }

    pub(super) fn try_take(live: &Arc<ListenerLive>) -> Option<Slot> {
        live.slots
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|p| Slot::new(p, live.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take()
            && self.live.retire()
        {
            permit.forget();
        }
    }
}

/// One accept loop waiting at the cap, from creation to drop — whichever way the wait ends
/// (a slot, shutdown, the listener removed, the task cancelled), its time is accounted.
pub(super) struct WaitingAtCap<'s> {
    spec: &'s ListenerSpec,
}

impl<'s> WaitingAtCap<'s> {
    pub(super) fn begin(spec: &'s ListenerSpec) -> WaitingAtCap<'s> {
        log(spec, spec.live.at_cap.enter(Instant::now()));
        WaitingAtCap { spec }
    }
}

impl Drop for WaitingAtCap<'_> {
    fn drop(&mut self) {
        let spec = self.spec;
        log(spec, spec.live.at_cap.leave(Instant::now()));
    }
}

fn log(spec: &ListenerSpec, transition: Option<Transition>) {
    let listener = &*spec.name;
    let max_connections = spec.live.max_connections();
    match transition {
        None => {}
        Some(Transition::Reached {
            unlogged,
            unlogged_for,
        }) => {
            warn!(
                listener,
                max_connections,
                unlogged_trips = unlogged,
                unlogged_full_for = ?unlogged_for,
                "listener at its connection cap (limits.max_connections): it accepts nothing more until a connection ends; new clients wait in the kernel's queue"
            );
        }
        Some(Transition::Left { full_for }) => {
            info!(
                listener,
                max_connections,
                full_for = ?full_for,
                "listener below its connection cap again; accepting"
            );
        }
    }
}
