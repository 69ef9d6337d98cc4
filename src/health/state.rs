//! The health state machine of one backend: `rise` consecutive passes bring it up, `fall`
//! consecutive failures take it down, and the very first result decides at once (so a dead
//! backend takes no traffic while waiting for `fall` failures at start). Pure: results and
//! times are passed in.

use std::time::SystemTime;

/// The last probe result, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    pub ok: bool,
    /// What failed, or what was seen (`HTTP 200`), for operators.
    pub detail: String,
    pub at: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthState {
    pub up: bool,
    ok_streak: u32,
    fail_streak: u32,
    checked: bool,
    pub last: Option<CheckOutcome>,
    /// When it last came back up (set by the caller, which owns the clock); slow start
    /// ramps from here.
    pub up_since: Option<std::time::Instant>,
}

impl Default for HealthState {
    /// Up until a check says otherwise: a pool without checks, or before the first result.
    fn default() -> Self {
        HealthState {
            up: true,
            ok_streak: 0,
            fail_streak: 0,
            checked: false,
            last: None,
            up_since: None,
        }
    }
}

impl HealthState {
    /// A backend whose first result is awaited and which takes no traffic meanwhile.
    pub fn pending() -> HealthState {
        HealthState {
            up: false,
            ..HealthState::default()
        }
    }

    /// Records one result; returns `Some(new_up)` when the state changed.
    pub fn record(&mut self, outcome: CheckOutcome, rise: u32, fall: u32) -> Option<bool> {
        let ok = outcome.ok;
        self.last = Some(outcome);
        if ok {
            self.ok_streak = self.ok_streak.saturating_add(1);
            self.fail_streak = 0;
        } else {
            self.fail_streak = self.fail_streak.saturating_add(1);
            self.ok_streak = 0;
        }
        let first = !self.checked;
        self.checked = true;
        let next = if first {
            ok
        } else if self.up {
            self.fail_streak < fall
        } else {
            self.ok_streak >= rise
        };
        (next != self.up).then(|| {
            self.up = next;
            next
        })
    }

    /// Marks the backend down without a probe (passive checks).
    pub fn force_down(&mut self, detail: String, at: SystemTime) -> bool {
        self.checked = true;
        self.ok_streak = 0;
        self.last = Some(CheckOutcome {
            ok: false,
            detail,
            at,
        });
        std::mem::replace(&mut self.up, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(ok: bool) -> CheckOutcome {
        CheckOutcome {
            ok,
            detail: String::new(),
            at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn rise_and_fall_need_consecutive_results() {
        let mut h = HealthState::default();
        assert_eq!(h.record(r(true), 2, 3), None, "first pass: stays up");
        assert_eq!(h.record(r(false), 2, 3), None);
        assert_eq!(h.record(r(false), 2, 3), None);
        assert_eq!(
            h.record(r(true), 2, 3),
            None,
            "a pass resets the failure streak"
        );
        assert_eq!(h.record(r(false), 2, 3), None);
        assert_eq!(h.record(r(false), 2, 3), None);
        assert_eq!(
            h.record(r(false), 2, 3),
            Some(false),
            "third failure in a row"
        );
        assert_eq!(h.record(r(true), 2, 3), None);
        assert_eq!(h.record(r(false), 2, 3), None);
        assert_eq!(h.record(r(true), 2, 3), None);
        assert_eq!(h.record(r(true), 2, 3), Some(true), "second pass in a row");
    }

    #[test]
    fn the_first_result_decides_at_once() {
        let mut h = HealthState::default();
        assert_eq!(h.record(r(false), 2, 3), Some(false));
        let mut h = HealthState::default();
        assert_eq!(h.record(r(true), 5, 5), None);
        assert!(h.up);
    }
}
