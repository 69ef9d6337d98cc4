//! Log throttling for per-connection events: a dead backend or a flood of bad clients must not
//! turn into a flood of identical log lines. Each call site owns one [`LogThrottle`]; it lets
//! one line through per second and reports how many it held back in between.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const PERIOD_MS: u64 = 1000;

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    // +PERIOD so that the very first event is always let through.
    u64::try_from(start.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(PERIOD_MS)
}

#[derive(Debug, Default)]
pub struct LogThrottle {
    last_ms: AtomicU64,
    suppressed: AtomicU64,
    /// Lines let through in the current period, and how many may be.
    used: AtomicU64,
    budget: u64,
}

impl LogThrottle {
    /// One line per second.
    pub const fn new() -> LogThrottle {
        LogThrottle::with_budget(1)
    }

    /// Up to `budget` lines per second.
    pub const fn with_budget(budget: u64) -> LogThrottle {
        LogThrottle {
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            used: AtomicU64::new(0),
            budget,
        }
    }

    /// `Some(n)` when this event may be logged, `n` being how many were held back since the
    /// last one; `None` when it must be dropped (it is counted).
    pub fn allow(&self) -> Option<u64> {
        let now = now_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= PERIOD_MS
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.used.store(1, Ordering::Relaxed);
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        if self.used.fetch_add(1, Ordering::Relaxed) < self.budget {
            return Some(0);
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_period_gets_through() {
        let t = LogThrottle::new();
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), None);
        assert_eq!(t.allow(), None);
        t.last_ms.store(0, Ordering::Relaxed); // as if a period had passed
        assert_eq!(t.allow(), Some(2), "reports what it held back");
    }

    #[test]
    fn a_budget_lets_that_many_through_per_period() {
        let t = LogThrottle::with_budget(3);
        let through = (0..10).filter(|_| t.allow().is_some()).count();
        assert_eq!(through, 3);
        t.last_ms.store(0, Ordering::Relaxed);
        assert_eq!(t.allow(), Some(7));
    }
}
