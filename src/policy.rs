//! How a pool's configured weights become the weights selection uses right now: operator
//! overrides and health take backends out, only the lowest tier with a backend up serves
//! (backups, and an SRV answer's later priorities, stand in only when every backend of a
//! lower tier is out), `when_all_down: use_all` spreads over every backend when none is up,
//! and slow start ramps a recovered backend up. Pure: the clock is passed in.

use std::time::{Duration, Instant};

/// Internal weights are the configured ones times this, so slow start can ramp in steps
/// finer than one (selection only looks at ratios).
pub const SCALE: u32 = 100;

/// One backend's inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The weight in force (an override, else the configured one), 0..=1000.
    pub weight: u32,
    /// Not drained or disabled by an operator.
    pub admitted: bool,
    pub healthy: bool,
    /// 0 = primary; see `config::Backend::tier`.
    pub tier: u32,
    /// When it last came back up, for slow start.
    pub up_since: Option<Instant>,
}

/// The effective weight of each candidate, in order; 0 = takes no new connections.
pub fn effective_weights(
    all: &[Candidate],
    slow_start: Duration,
    use_all: bool,
    now: Instant,
) -> Vec<u32> {
    let serving = |c: &Candidate| c.admitted && c.healthy && c.weight > 0;
    let tier = all.iter().filter(|c| serving(c)).map(|c| c.tier).min();
    all.iter()
        .map(|c| {
            let chosen = if let Some(tier) = tier {
                c.tier == tier && serving(c)
            } else {
                // Nobody healthy: `use_all` ignores health (never an operator's drain).
                use_all && c.admitted && c.weight > 0
            };
            if chosen { ramp(c, slow_start, now) } else { 0 }
        })
        .collect()
}

fn ramp(c: &Candidate, slow_start: Duration, now: Instant) -> u32 {
    let full = c.weight * SCALE;
    let Some(since) = c.up_since else { return full };
    if slow_start.is_zero() {
        return full;
    }
    let elapsed = now.saturating_duration_since(since);
    if elapsed >= slow_start {
        return full;
    }
    let part = u128::from(full) * elapsed.as_millis() / slow_start.as_millis().max(1);
    u32::try_from(part).unwrap_or(full).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(weight: u32, healthy: bool, backup: bool) -> Candidate {
        Candidate {
            weight,
            admitted: true,
            healthy,
            tier: if backup { 1 << 16 } else { 0 },
            up_since: None,
        }
    }

    #[test]
    fn the_lowest_tier_with_a_backend_up_serves() {
        let now = Instant::now();
        let at = |tier, healthy| Candidate {
            tier,
            ..c(1, healthy, false)
        };
        let pool = [
            at(0, false),
            at(1, true),
            at(1, true),
            at(2, true),
            at(1 << 16, true),
        ];
        assert_eq!(
            effective_weights(&pool, Duration::ZERO, false, now),
            vec![0, 100, 100, 0, 0]
        );
        let pool = [at(0, false), at(1, false), at(2, true), at(1 << 16, true)];
        assert_eq!(
            effective_weights(&pool, Duration::ZERO, false, now),
            vec![0, 0, 100, 0]
        );
    }

    #[test]
    fn backups_serve_only_when_no_primary_is_up() {
        let now = Instant::now();
        let pool = [c(1, true, false), c(1, true, true)];
        assert_eq!(
            effective_weights(&pool, Duration::ZERO, false, now),
            vec![100, 0]
        );
        let pool = [c(1, false, false), c(2, true, true)];
        assert_eq!(
            effective_weights(&pool, Duration::ZERO, false, now),
            vec![0, 200]
        );
        let drained = Candidate {
            admitted: false,
            ..c(1, true, false)
        };
        assert_eq!(
            effective_weights(&[drained, c(1, true, true)], Duration::ZERO, false, now),
            vec![0, 100]
        );
    }

    #[test]
    fn when_all_down_reject_or_use_all() {
        let now = Instant::now();
        let pool = [c(1, false, false), c(3, false, true)];
        assert_eq!(
            effective_weights(&pool, Duration::ZERO, false, now),
            vec![0, 0],
            "reject"
        );
        assert_eq!(
            effective_weights(&pool, Duration::ZERO, true, now),
            vec![100, 300],
            "use_all"
        );
        let drained = Candidate {
            admitted: false,
            ..c(1, false, false)
        };
        assert_eq!(
            effective_weights(&[drained], Duration::ZERO, true, now),
            vec![0],
            "never an operator's drain"
        );
    }

    #[test]
    fn slow_start_ramps_from_near_zero_to_the_weight() {
        let t0 = Instant::now();
        let back = Candidate {
            up_since: Some(t0),
            ..c(4, true, false)
        };
        let steady = c(4, true, false);
        let ramp = |secs: u64| {
            effective_weights(
                &[back, steady],
                Duration::from_secs(10),
                false,
                t0 + Duration::from_secs(secs),
            )
        };
        assert_eq!(ramp(0), vec![1, 400], "~0 at first");
        assert_eq!(ramp(1), vec![40, 400]);
        assert_eq!(ramp(5), vec![200, 400]);
        assert_eq!(ramp(9), vec![360, 400]);
        assert_eq!(ramp(10), vec![400, 400]);
        assert_eq!(ramp(60), vec![400, 400]);
    }
}
