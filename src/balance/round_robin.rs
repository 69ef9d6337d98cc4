//! Smooth weighted round robin as a precomputed sequence.
//!
//! Backend `i` with weight `w_i` owns the virtual times `(k + ½) / w_i` for `k = 0, 1, ...`
//! (the midpoints of its `w_i` equal slots in one period); taking them in ascending order
//! (ties by index) spreads each backend's turns evenly through the period, as nginx's smooth
//! weighted round robin does, and over one period of `sum(w_i)` picks each backend appears
//! exactly `w_i` times. Weights are divided by their
//! greatest common divisor first so the period stays short. Building costs
//! `O(period · log n)` once per configuration change; a pick is an index into the sequence.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// The longest sequence built: bounds memory (4 bytes an entry) and build time.
pub const MAX_PERIOD: u64 = 1 << 16;

#[derive(Debug, Clone, Default)]
pub struct RoundRobin {
    sequence: Vec<u32>,
    /// Backends with a non-zero weight: the most distinct candidates a pick can yield.
    selectable: usize,
    /// Their indices, for retries beyond the bounded walk.
    members: Vec<u32>,
}

/// The next virtual time of one backend: `(picks + ½) / weight`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Next {
    pub(crate) picks: u64,
    weight: u64,
    pub(crate) index: u32,
}

impl Next {
    pub(crate) fn new(weight: u64, index: u32) -> Next {
        Next {
            picks: 0,
            weight,
            index,
        }
    }
}

impl Ord for Next {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap is a max-heap: reverse so the smallest finish time (then index) pops first.
        let mine = u128::from(2 * self.picks + 1) * u128::from(other.weight);
        let theirs = u128::from(2 * other.picks + 1) * u128::from(self.weight);
        theirs.cmp(&mine).then(other.index.cmp(&self.index))
    }
}

impl PartialOrd for Next {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl RoundRobin {
    /// Builds the sequence for `weights` (index = backend position). Zero weights never appear.
    /// A period longer than [`MAX_PERIOD`] (many backends with coprime weights, or a slow-start
    /// ramp) is scaled down in proportion first, keeping every selectable backend at least 1:
    /// shares then hold to within one pick per backend per period.
    pub fn new(weights: &[u32]) -> RoundRobin {
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        let scaled;
        let weights = if total > MAX_PERIOD {
            scaled = weights
                .iter()
                .map(|w| {
                    if *w == 0 {
                        0
                    } else {
                        u32::try_from((u64::from(*w) * MAX_PERIOD / total).max(1)).unwrap_or(1)
                    }
                })
                .collect::<Vec<u32>>();
            &scaled[..]
        } else {
            weights
        };
        let divisor = weights
            .iter()
            .filter(|w| **w > 0)
            .fold(0u64, |g, w| gcd(g, u64::from(*w)));
        if divisor == 0 {
            return RoundRobin::default();
        }
        let mut heap: BinaryHeap<Next> = weights
            .iter()
            .enumerate()
            .filter(|(_, w)| **w > 0)
            .filter_map(|(i, w)| {
                Some(Next {
                    picks: 0,
                    weight: u64::from(*w) / divisor,
                    index: u32::try_from(i).ok()?,
                })
            })
            .collect();
        let selectable = heap.len();
        let mut members: Vec<u32> = heap.iter().map(|n| n.index).collect();
        members.sort_unstable();
        let period: u64 = heap.iter().map(|n| n.weight).sum();
        let mut sequence = Vec::with_capacity(usize::try_from(period).unwrap_or(0));
        for _ in 0..period {
            let Some(mut next) = heap.pop() else { break };
            sequence.push(next.index);
            next.picks += 1;
            heap.push(next);
        }
        RoundRobin {
            sequence,
            selectable,
            members,
        }
    }

    /// Length of one full period; 0 when every weight is 0.
    pub fn period(&self) -> usize {
        self.sequence.len()
    }

    /// The backend for `ticket`, then distinct others in sequence order, for connect retries:
    /// at most `want` indices, fewer when the pool has fewer selectable backends.
    pub fn candidates(&self, ticket: u64, want: usize, out: &mut Vec<usize>) {
        out.clear();
        let len = self.sequence.len();
        // Asking for more than there are would scan the whole period looking for them.
        let want = want.min(self.selectable);
        if len == 0 || want == 0 {
            return;
        }
        let start = usize::try_from(ticket % len as u64).unwrap_or(0);
        // Skewed weights can put a light backend thousands of entries away: walk a bounded
        // stretch for the smooth order, then take the rest by index.
        for step in 0..len.min(64 + 4 * self.selectable) {
            let index = self.sequence[(start + step) % len] as usize;
            if !out.contains(&index) {
                out.push(index);
                if out.len() == want {
                    return;
                }
            }
        }
        for &index in &self.members {
            if out.len() == want {
                return;
            }
            if !out.contains(&(index as usize)) {
                out.push(index as usize);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picks(rr: &RoundRobin, n: u64) -> Vec<usize> {
        let mut out = Vec::new();
        (0..n)
            .map(|t| {
                rr.candidates(t, 1, &mut out);
                out[0]
            })
            .collect()
    }

    #[test]
    fn equal_weights_rotate() {
        let rr = RoundRobin::new(&[1, 1, 1]);
        assert_eq!(picks(&rr, 6), vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weights_give_exact_shares_smoothly() {
        let rr = RoundRobin::new(&[5, 1, 1]);
        let seq = picks(&rr, 7);
        assert_eq!(seq.iter().filter(|i| **i == 0).count(), 5);
        // Smooth: the heavy backend never takes the whole period in one run.
        assert_ne!(&seq[..5], &[0, 0, 0, 0, 0]);
        let rr = RoundRobin::new(&[300, 200, 100]);
        assert_eq!(rr.period(), 6, "weights are reduced by their gcd");
        let seq = picks(&rr, 600);
        for (i, w) in [300, 200, 100].iter().enumerate() {
            assert_eq!(seq.iter().filter(|p| **p == i).count(), *w);
        }
    }

    #[test]
    fn long_periods_are_scaled_down_and_keep_their_shares() {
        // 300 backends with coprime weights (as a slow-start ramp makes them).
        let weights: Vec<u32> = (0..300).map(|i| 99_000 + i * 7 + 1).collect();
        let started = std::time::Instant::now();
        let rr = RoundRobin::new(&weights);
        assert!(
            rr.period() as u64 <= MAX_PERIOD + 300,
            "period {}",
            rr.period()
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "built in {:?}",
            started.elapsed()
        );
        let mut out = Vec::new();
        let mut seen = vec![0u32; 300];
        for t in 0..rr.period() as u64 {
            rr.candidates(t, 1, &mut out);
            seen[out[0]] += 1;
        }
        assert!(seen.iter().all(|n| *n > 0), "every backend keeps a share");
    }

    #[test]
    fn zero_weight_is_never_picked() {
        let rr = RoundRobin::new(&[0, 2, 0]);
        assert!(picks(&rr, 10).iter().all(|i| *i == 1));
        assert_eq!(RoundRobin::new(&[0, 0]).period(), 0);
    }

    #[test]
    fn candidates_are_distinct_and_bounded() {
        let rr = RoundRobin::new(&[3, 1]);
        let mut out = Vec::new();
        rr.candidates(0, 5, &mut out);
        assert_eq!(out.len(), 2);
        assert_ne!(out[0], out[1]);
    }
}
