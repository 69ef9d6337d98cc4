//! Log throttling for per-connection events: a dead backend or a flood of bad clients must not
//! turn into a flood of identical log lines. Each call site owns one [`LogThrottle`]; it lets
//! one line through per second (or a budget of lines) and reports how many it held back in
//! between. [`SourceLogFilter`] keeps one source's repeated refusals to one line per interval.

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

/// Which source was refused and logged last, per slot of a fixed table, so that a source
/// refused again and again is logged once per interval even where admission keeps no state
/// for it (ACL refusals). Collisions only ever cause an extra line, which the caller's
/// [`LogThrottle`] still bounds; memory is fixed.
#[derive(Debug)]
pub struct SourceLogFilter {
    slots: [AtomicU64; 1024],
}

impl Default for SourceLogFilter {
    fn default() -> Self {
        SourceLogFilter::new()
    }
}

impl SourceLogFilter {
    pub const fn new() -> SourceLogFilter {
        SourceLogFilter {
            slots: [const { AtomicU64::new(0) }; 1024],
        }
    }

    /// True when `ip` was not logged in the last `every_secs` seconds (and records it now).
    pub fn first_in(&self, ip: std::net::IpAddr, every_secs: u32) -> bool {
        let bits = match ip.to_canonical() {
            std::net::IpAddr::V4(v4) => u128::from(u32::from(v4)),
            std::net::IpAddr::V6(v6) => u128::from(v6),
        };
        let h = ((bits as u64) ^ ((bits >> 64) as u64) ^ (bits >> 32) as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let slot = &self.slots[(h >> 54) as usize];
        let tag = h & 0xffff_ffff_0000_0000;
        let second = (now_ms() / 1000) & 0xffff_ffff;
        let seen = slot.load(Ordering::Relaxed);
        if seen & 0xffff_ffff_0000_0000 == tag
            && second.wrapping_sub(seen & 0xffff_ffff) & 0xffff_ffff < u64::from(every_secs)
        {
            return false;
        }
        slot.store(tag | second, Ordering::Relaxed);
        true
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
    fn a_source_is_logged_once_per_interval() {
        let f = SourceLogFilter::new();
        let a: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let b: std::net::IpAddr = "2001:db8::1".parse().unwrap();
        assert!(f.first_in(a, 10));
        assert!(!f.first_in(a, 10));
        assert!(
            !f.first_in("::ffff:192.0.2.1".parse().unwrap(), 10),
            "mapped is the same"
        );
        assert!(f.first_in(b, 10));
        assert!(!f.first_in(b, 10));
        assert!(f.first_in(a, 0), "an interval of 0 logs every time");
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
