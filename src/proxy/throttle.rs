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
}

impl LogThrottle {
    pub const fn new() -> LogThrottle {
        LogThrottle {
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
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
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
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
}
