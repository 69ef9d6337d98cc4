//! How long a listener has been at its `max_connections` cap, and which of its trips to the
//! cap are worth a log line.
//!
//! A listener is *full* from the moment one of its accept loops holds a client for which no
//! slot is free until every loop that waited has one: meanwhile it accepts nothing more and
//! new clients wait in the kernel's queue. Several workers may wait at once; the listener is
//! full while any of them does. The time is read at scrape time, the period in progress
//! included, so a long stay at the cap shows while it lasts. Trips to the cap are rare
//! events (a free slot, the hot path, never comes here), so one small mutex per listener
//! keeps the bookkeeping simple. Time is passed in, so the tests are deterministic; this
//! module does no logging itself, it says what to log.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// At most one pair of lines (reached, left) per listener per this interval; the trips in
/// between are counted and reported with the next line.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// A listener's time at its cap; lives in [`super::ListenerLive`], so it survives reloads.
#[derive(Debug, Default)]
pub struct AtCap {
    clock: Mutex<Clock>,
}

#[derive(Debug, Default)]
struct Clock {
    /// Accept loops waiting for a slot now.
    waiting: usize,
    /// When the current trip began (`waiting > 0`).
    since: Option<Instant>,
    /// Time full in trips that have ended.
    total: Duration,
    /// When the last logged trip began.
    last_logged: Option<Instant>,
    /// The current trip's start was logged, so its end is too.
    logging: bool,
    /// Trips not logged since the last logged one, and their time full.
    unlogged: u64,
    unlogged_for: Duration,
}

/// A change worth a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The listener has just reached its cap. `unlogged` earlier trips (full for
    /// `unlogged_for` in all) went without a line since the last one that had one.
    Reached {
        unlogged: u64,
        unlogged_for: Duration,
    },
    /// The listener has just left its cap, after `full_for`.
    Left { full_for: Duration },
}

impl AtCap {
    fn clock(&self) -> MutexGuard<'_, Clock> {
        // The clock's fields are plain numbers, consistent after every statement: a panic
        // elsewhere while it was held leaves nothing half-written worth refusing.
        self.clock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An accept loop starts waiting for a slot at `now`. `Some` when this begins a trip to
    /// the cap that is to be logged.
    pub fn enter(&self, now: Instant) -> Option<Transition> {
        let mut c = self.clock();
        c.waiting += 1;
        if c.waiting > 1 {
            return None;
        }
        c.since = Some(now);
        let due = c
            .last_logged
            .is_none_or(|at| now.saturating_duration_since(at) >= LOG_EVERY);
        c.logging = due;
        if !due {
            return None;
        }
        c.last_logged = Some(now);
        let reached = Transition::Reached {
            unlogged: c.unlogged,
            unlogged_for: c.unlogged_for,
        };
        c.unlogged = 0;
        c.unlogged_for = Duration::ZERO;
        Some(reached)
    }

    /// An accept loop stops waiting at `now` (it got a slot, or gave up). `Some` when this
    /// ends a trip whose start was logged.
    pub fn leave(&self, now: Instant) -> Option<Transition> {
        let mut c = self.clock();
        c.waiting = c.waiting.saturating_sub(1);
        if c.waiting > 0 {
            return None;
        }
        let full_for = c
            .since
            .take()
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        c.total += full_for;
        if std::mem::take(&mut c.logging) {
            return Some(Transition::Left { full_for });
        }
        c.unlogged += 1;
        c.unlogged_for += full_for;
        None
    }

    /// Time spent full up to `now`, the trip in progress included.
    pub fn full_for(&self, now: Instant) -> Duration {
        let c = self.clock();
        let current = c
            .since
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        c.total + current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn time_at_the_cap_grows_while_a_trip_lasts() {
        let cap = AtCap::default();
        let t0 = Instant::now();
        assert_eq!(cap.full_for(t0 + secs(5)), Duration::ZERO);
        assert!(cap.enter(t0).is_some());
        assert_eq!(cap.full_for(t0 + secs(3)), secs(3), "read during the trip");
        assert_eq!(
            cap.leave(t0 + secs(4)),
            Some(Transition::Left { full_for: secs(4) })
        );
        assert_eq!(cap.full_for(t0 + secs(100)), secs(4), "stops when it ends");
    }

    #[test]
    fn the_listener_is_full_while_any_loop_waits() {
        let cap = AtCap::default();
        let t0 = Instant::now();
        assert!(cap.enter(t0).is_some());
        assert_eq!(
            cap.enter(t0 + secs(1)),
            None,
            "a second worker joins the trip"
        );
        assert_eq!(cap.leave(t0 + secs(2)), None, "one still waits");
        assert_eq!(
            cap.leave(t0 + secs(6)),
            Some(Transition::Left { full_for: secs(6) })
        );
        assert_eq!(cap.full_for(t0 + secs(6)), secs(6), "not counted twice");
    }

    #[test]
    fn trips_within_the_interval_are_counted_not_logged() {
        let cap = AtCap::default();
        let t0 = Instant::now();
        assert!(cap.enter(t0).is_some());
        assert!(cap.leave(t0 + secs(1)).is_some());
        for i in 0..3 {
            let at = t0 + secs(2 + i * 2);
            assert_eq!(cap.enter(at), None);
            assert_eq!(cap.leave(at + secs(1)), None);
        }
        assert_eq!(
            cap.enter(t0 + secs(10)),
            Some(Transition::Reached {
                unlogged: 3,
                unlogged_for: secs(3)
            })
        );
        assert_eq!(
            cap.leave(t0 + secs(30)),
            Some(Transition::Left { full_for: secs(20) })
        );
        assert_eq!(cap.full_for(t0 + secs(30)), secs(1 + 3 + 20));
    }
}
