//! The health state machine of one backend: `rise` consecutive passes bring it up, `fall`
//! consecutive failures take it down, and the very first result decides at once (so a dead
//! backend takes no traffic while waiting for `fall` failures at start). A probe that failed
//! for a local reason is shown as the last result but moves nothing. Pure: results and times
//! are passed in.

use std::time::SystemTime;

/// What one probe said; the `result` label of `tollgate_health_checks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    Passed,
    Failed,
    /// This host could not make the attempt: nothing is known about the backend.
    LocalError,
}

impl Checked {
    pub const ALL: [Checked; 3] = [Checked::Passed, Checked::Failed, Checked::LocalError];

    pub fn label(self) -> &'static str {
        match self {
            Checked::Passed => "success",
            Checked::Failed => "failure",
            Checked::LocalError => "local_error",
        }
    }
}

/// The last probe result, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    pub result: Checked,
    /// What failed, or what was seen (`HTTP 200`), for operators.
    pub detail: String,
    pub at: SystemTime,
}

/// A [`HealthState`] as plain values (see [`HealthState::parts`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthParts {
    pub up: bool,
    pub ok_streak: u32,
    pub fail_streak: u32,
    pub checked: bool,
    pub last: Option<LastCheck>,
    /// Up this long, when it came back up at a known time (slow start ramps from there).
    pub up_for_ms: Option<u64>,
}

/// The last probe result, as plain values.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastCheck {
    /// `success`, `failure` or `local_error`.
    pub result: String,
    pub detail: String,
    pub at_unix_ms: u64,
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
    /// What the checks say: `up`, `down`, or `pending` (no result yet for a backend that
    /// waits for its first one).
    pub fn label(&self) -> &'static str {
        match (self.up, self.checked) {
            (true, _) => "up",
            (false, true) => "down",
            (false, false) => "pending",
        }
    }

    /// Whether a probe has answered (or passive checks took it down): until then `up` is
    /// only the assumption the backend started with.
    pub fn checked(&self) -> bool {
        self.checked
    }

    /// A backend whose first result is awaited and which takes no traffic meanwhile.
    pub fn pending() -> HealthState {
        HealthState {
            up: false,
            ..HealthState::default()
        }
    }

    /// Records one result; returns `Some(new_up)` when the state changed. A local error is
    /// kept as the last result and changes nothing else: no streak, no first decision.
    pub fn record(&mut self, outcome: CheckOutcome, rise: u32, fall: u32) -> Option<bool> {
        let ok = match outcome.result {
            Checked::Passed => true,
            Checked::Failed => false,
            Checked::LocalError => {
                self.last = Some(outcome);
                return None;
            }
        };
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

    /// The state as plain values, for a binary upgrade to carry to the new process (times
    /// as milliseconds: since the Unix epoch for the last result, ago for `up_since`).
    pub fn parts(&self, now: std::time::Instant) -> HealthParts {
        HealthParts {
            up: self.up,
            ok_streak: self.ok_streak,
            fail_streak: self.fail_streak,
            checked: self.checked,
            last: self.last.as_ref().map(|l| LastCheck {
                result: l.result.label().to_owned(),
                detail: l.detail.clone(),
                at_unix_ms: l
                    .at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
            }),
            up_for_ms: self
                .up_since
                .map(|at| now.saturating_duration_since(at).as_millis() as u64),
        }
    }

    /// The state [`HealthState::parts`] describes; an unknown result label is taken as a
    /// failure.
    pub fn from_parts(parts: HealthParts, now: std::time::Instant) -> HealthState {
        HealthState {
            up: parts.up,
            ok_streak: parts.ok_streak,
            fail_streak: parts.fail_streak,
            checked: parts.checked,
            last: parts.last.map(|l| CheckOutcome {
                result: Checked::ALL
                    .into_iter()
                    .find(|c| c.label() == l.result)
                    .unwrap_or(Checked::Failed),
                detail: l.detail,
                at: std::time::UNIX_EPOCH + std::time::Duration::from_millis(l.at_unix_ms),
            }),
            up_since: parts.up_for_ms.map(|ms| {
                now.checked_sub(std::time::Duration::from_millis(ms))
                    .unwrap_or(now)
            }),
        }
    }

    /// Marks the backend down without a probe (passive checks).
    pub fn force_down(&mut self, detail: String, at: SystemTime) -> bool {
        self.checked = true;
        self.ok_streak = 0;
        self.last = Some(CheckOutcome {
            result: Checked::Failed,
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
            result: if ok { Checked::Passed } else { Checked::Failed },
            detail: String::new(),
            at: SystemTime::UNIX_EPOCH,
        }
    }

    fn local() -> CheckOutcome {
        CheckOutcome {
            result: Checked::LocalError,
            detail: "connect: Too many open files (os error 24)".into(),
            at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn local_errors_move_nothing_but_are_shown() {
        let mut h = HealthState::default();
        for _ in 0..10 {
            assert_eq!(h.record(local(), 2, 3), None);
        }
        assert!(h.up, "no failure counted");
        assert_eq!(h.last, Some(local()));
        assert_eq!(
            h.record(r(false), 2, 3),
            Some(false),
            "still the first result"
        );
        assert_eq!(h.record(r(true), 2, 3), None);
        assert_eq!(h.record(local(), 2, 3), None);
        assert_eq!(
            h.record(r(true), 2, 3),
            Some(true),
            "the streak survives a local error"
        );
        let mut p = HealthState::pending();
        assert_eq!(p.record(local(), 1, 1), None);
        assert_eq!(p.label(), "pending", "still waiting for a real answer");
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
