//! The generic cell rate algorithm (GCRA): an exact token bucket kept as one number per
//! source, the theoretical arrival time (TAT) of the next connection.
//!
//! With rate `r` (one connection every `T = 1/r`) and `burst` `b`, a connection at `now`
//! conforms when `TAT - b·T <= now`; it then moves `TAT` to `max(TAT, now) + T`. A refused
//! attempt leaves `TAT` alone, so hammering neither spends nor earns anything: over a time
//! `D` a source is let through `b + 1 + ⌊D·r⌋` times however hard it tries. All times are
//! nanoseconds on the caller's clock, so the arithmetic is tested without waiting.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// As configured: `count` per `period`.
    pub count: u64,
    pub period: Duration,
    pub burst: u32,
    /// `T`: nanoseconds between connections at the sustained rate (at least 1).
    interval: u64,
    /// `b·T`: how far ahead of `now` the TAT may run.
    tolerance: u64,
}

impl Rate {
    /// `count` connections per `period`, plus `burst` at once. `count` must not be 0.
    pub fn new(count: u64, period: Duration, burst: u32) -> Rate {
        let period_ns = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX);
        // Rounded up, so the effective rate is never above the configured one.
        let interval = period_ns.div_ceil(count.max(1)).max(1);
        Rate {
            count,
            period,
            burst,
            interval,
            tolerance: interval.saturating_mul(u64::from(burst)),
        }
    }

    /// The TAT after admitting a connection at `now`, or `None` when it does not conform.
    #[inline]
    pub fn conform(&self, tat: u64, now: u64) -> Option<u64> {
        if tat > now.saturating_add(self.tolerance) {
            None
        } else {
            Some(tat.max(now).saturating_add(self.interval))
        }
    }

    /// A TAT built under `old`, in this rate's terms: the same number of connections owed
    /// (debt in time scaled by the ratio of the intervals), capped at [`Rate::ceiling`].
    pub fn carry(&self, tat: u64, now: u64, old: &Rate) -> u64 {
        if tat <= now {
            return tat;
        }
        let owed = u128::from(tat - now) * u128::from(self.interval) / u128::from(old.interval);
        let rescaled = now.saturating_add(u64::try_from(owed).unwrap_or(u64::MAX));
        rescaled.min(self.ceiling(now))
    }

    /// The highest TAT this rate can produce at `now`: no token left, the next one an
    /// interval away. A reload to this rate caps older debts here.
    pub fn ceiling(&self, now: u64) -> u64 {
        now.saturating_add(self.tolerance)
            .saturating_add(self.interval)
    }

    /// Whether a source with this TAT is as good as unknown: its whole burst is available,
    /// so forgetting it lets nothing through early.
    #[inline]
    pub fn recovered(&self, tat: u64, now: u64) -> bool {
        tat <= now
    }

    /// Tokens available now, fractional: `burst + 1` when recovered, below 1 when the next
    /// connection would be refused.
    pub fn tokens(&self, tat: u64, now: u64) -> f64 {
        let full = u64::from(self.burst) + 1;
        let ahead = tat.saturating_sub(now);
        let capacity = self.tolerance.saturating_add(self.interval);
        let left = capacity.saturating_sub(ahead) as f64 / self.interval as f64;
        left.min(full as f64)
    }

    /// How long until one more connection would conform (zero when one would now).
    pub fn wait(&self, tat: u64, now: u64) -> Duration {
        Duration::from_nanos(tat.saturating_sub(now.saturating_add(self.tolerance)))
    }

    /// `20/s` style, as written in the config.
    pub fn label(&self) -> String {
        let unit = match self.period.as_secs() {
            3600 => "h",
            60 => "m",
            _ => "s",
        };
        format!("{}/{unit}", self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    /// Offers connections every `step` ns for `span` ns; returns how many conform.
    fn offered(rate: &Rate, step: u64, span: u64) -> u64 {
        let mut tat = 0;
        let mut admitted = 0;
        let mut now = 0;
        while now <= span {
            if let Some(t) = rate.conform(tat, now) {
                tat = t;
                admitted += 1;
            }
            now += step;
        }
        admitted
    }

    #[test]
    fn burst_plus_one_at_once_then_the_rate() {
        let r = Rate::new(10, Duration::from_secs(1), 4);
        // Everything at the same instant: burst + 1.
        let mut tat = 0;
        let at_once = (0..10)
            .filter(|_| r.conform(tat, 0).map(|t| tat = t).is_some())
            .count();
        assert_eq!(at_once, 5);
        // 5x the rate for 10 s: burst + 1 + 10 s × 10/s.
        assert_eq!(offered(&r, S / 50, 10 * S), 5 + 100);
        // Exactly at the rate: everything.
        assert_eq!(offered(&r, S / 10, 10 * S), 101);
    }

    #[test]
    fn refused_attempts_neither_spend_nor_earn() {
        let r = Rate::new(1, Duration::from_secs(1), 0);
        let tat = r.conform(0, 0).unwrap();
        assert_eq!(tat, S);
        for now in [1, S / 2, S - 1] {
            assert_eq!(r.conform(tat, now), None);
        }
        // The refusals did not push the next token out.
        assert_eq!(r.conform(tat, S), Some(2 * S));
    }

    #[test]
    fn tokens_and_wait_report_the_state() {
        let r = Rate::new(2, Duration::from_secs(1), 3);
        assert_eq!(r.tokens(0, 10 * S), 4.0);
        let mut tat = 0;
        for _ in 0..4 {
            tat = r.conform(tat, 0).unwrap();
        }
        assert!(r.tokens(tat, 0) < 1.0);
        assert_eq!(r.conform(tat, 0), None);
        assert_eq!(r.wait(tat, 0), Duration::from_millis(500));
        assert!((r.tokens(tat, S / 2) - 1.0).abs() < 1e-9);
        assert!(!r.recovered(tat, S));
        assert!(r.recovered(tat, 2 * S));
        assert_eq!(r.label(), "2/s");
        assert_eq!(Rate::new(5, Duration::from_secs(60), 0).label(), "5/m");
    }

    #[test]
    fn a_debt_carries_over_to_a_new_rate_in_connections() {
        let old = Rate::new(1, Duration::from_secs(60), 2);
        let mut tat = 0;
        for _ in 0..2 {
            tat = old.conform(tat, 0).unwrap();
        }
        // Two connections owed: under 2/m that is 60 s, which leaves one of three tokens.
        let new = Rate::new(2, Duration::from_secs(60), 2);
        let carried = new.carry(tat, 0, &old);
        assert_eq!(carried, 60 * S);
        assert!((new.tokens(carried, 0) - 1.0).abs() < 1e-9);
        // A debt larger than the new rate allows is capped at its ceiling.
        let strict = Rate::new(100, Duration::from_secs(1), 0);
        assert_eq!(strict.carry(tat, 0, &old), strict.ceiling(0));
        assert_eq!(new.carry(5, 10, &old), 5, "no debt stays no debt");
    }

    #[test]
    fn extreme_values_saturate() {
        let r = Rate::new(u64::MAX, Duration::from_secs(3600), u32::MAX);
        assert!(r.conform(0, u64::MAX).is_some());
        let slow = Rate::new(1, Duration::from_secs(3600), 0);
        assert_eq!(slow.conform(u64::MAX, 0), None);
    }
}
