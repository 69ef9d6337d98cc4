//! Weighted least connections: the backend with the fewest open connections per unit of
//! weight. Backends equally loaded (per unit of weight) are chosen among in proportion to
//! their weight, so weights hold at every load level, idle included: with weights 5:2 and one
//! connection at a time (every pick sees both idle) the split is 5:2, not 1:1 (HAProxy's
//! leastconn does weighted round robin among equal servers for the same reason). No backend
//! is favoured by its position. Pure: the caller passes the loads it read and the randomness.

/// `a_active / a_weight < b_active / b_weight`, exactly (no division).
pub(crate) fn less_loaded(a: (u64, u32), b: (u64, u32)) -> std::cmp::Ordering {
    (u128::from(a.0) * u128::from(b.1)).cmp(&(u128::from(b.0) * u128::from(a.1)))
}

/// A key for weighted random order: an exponential variate with rate `weight`, drawn from
/// the 64 random bits `bits`. Among keys drawn this way the smallest belongs to backend `i`
/// with probability `w_i / Σw` (the race of exponential clocks), and sorting by key gives a
/// weighted random permutation, which orders the retries too.
fn weighted_key(bits: u64, weight: u32) -> f64 {
    // 53 random bits as a uniform in (0, 1]: never 0, whose logarithm is infinite.
    let u = ((bits >> 11) + 1) as f64 / (1u64 << 53) as f64;
    -u.ln() / f64::from(weight)
}

/// Up to `want` distinct backends, least loaded first; zero-weight backends are never chosen.
/// `active(i)` reads backend i's open connections; each is read once. Equally loaded ones are
/// ordered by a weighted random key. One pass plus a partial sort: O(n).
pub fn candidates(
    weights: &[u32],
    active: impl Fn(usize) -> u64,
    random: u64,
    want: usize,
    out: &mut Vec<usize>,
) {
    out.clear();
    if want == 0 {
        return;
    }
    let mut ranked: Vec<(u64, u32, f64, usize)> = weights
        .iter()
        .enumerate()
        .filter(|(_, w)| **w > 0)
        .map(|(i, &w)| {
            let key = weighted_key(super::mix(random ^ i as u64), w);
            (active(i), w, key, i)
        })
        .collect();
    let order = |a: &(u64, u32, f64, usize), b: &(u64, u32, f64, usize)| {
        less_loaded((a.0, a.1), (b.0, b.1)).then(a.2.total_cmp(&b.2))
    };
    let take = want.min(ranked.len());
    if take == 0 {
        return;
    }
    if take < ranked.len() {
        ranked.select_nth_unstable_by(take - 1, order);
        ranked.truncate(take);
    }
    ranked.sort_unstable_by(order);
    out.extend(ranked.iter().map(|r| r.3));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(weights: &[u32], active: &[u64], random: u64) -> usize {
        let mut out = Vec::new();
        candidates(weights, |i| active[i], random, 1, &mut out);
        out[0]
    }

    #[test]
    fn the_least_loaded_per_weight_wins() {
        assert_eq!(pick(&[1, 1, 1], &[5, 2, 7], 0), 1);
        // 6 connections on weight 3 is lighter than 3 on weight 1.
        assert_eq!(pick(&[3, 1], &[6, 3], 0), 0);
        assert_eq!(pick(&[0, 1], &[0, 100], 0), 1, "weight 0 is never chosen");
    }

    #[test]
    fn exact_on_a_deterministic_sequence() {
        // Each new connection goes where the load is lowest; with weights 2:1 the loads
        // stay in that ratio exactly after every third connection.
        let weights = [2, 1];
        let mut active = [0u64, 0];
        for n in 1..=30 {
            let i = pick(&weights, &active, n);
            active[i] += 1;
            if n % 3 == 0 {
                assert_eq!(active, [2 * n / 3, n / 3], "after {n} connections");
            }
        }
    }

    #[test]
    fn ties_are_broken_without_bias() {
        let mut wins = [0u32; 4];
        let mut r = 12345u64;
        for _ in 0..40_000 {
            r = crate::balance::mix(r);
            wins[pick(&[1, 1, 1, 1], &[3, 3, 3, 3], r)] += 1;
        }
        for w in wins {
            assert!((9_000..11_000).contains(&w), "{wins:?}");
        }
    }

    /// Idle (every pick sees no connection) and equally loaded per unit of weight: the split
    /// follows the weights. Uniform tie-breaking gave 5:2 weights a 50/50 split.
    #[test]
    fn equally_loaded_backends_are_chosen_in_proportion_to_weight() {
        for (active, label) in [([0u64, 0], "idle"), ([10, 4], "10 and 4 open")] {
            let mut wins = [0u32; 2];
            let mut r = 99u64;
            for _ in 0..70_000 {
                r = crate::balance::mix(r);
                wins[pick(&[5, 2], &active, r)] += 1;
            }
            // Expected 50 000 : 20 000; 1% either way is > 10 standard deviations.
            assert!((49_500..50_500).contains(&wins[0]), "{label}: {wins:?}");
        }
        // Three backends, weights 1:2:3, all idle.
        let mut wins = [0u32; 3];
        let mut r = 7u64;
        for _ in 0..60_000 {
            r = crate::balance::mix(r);
            wins[pick(&[1, 2, 3], &[0, 0, 0], r)] += 1;
        }
        for (w, expected) in wins.iter().zip([10_000u32, 20_000, 30_000]) {
            assert!(w.abs_diff(expected) < 600, "{wins:?}");
        }
    }

    #[test]
    fn retries_get_the_next_least_loaded() {
        let mut out = Vec::new();
        let loads = [9, 1, 5];
        candidates(&[1, 1, 1], |i| loads[i], 0, 3, &mut out);
        assert_eq!(out, vec![1, 2, 0]);
    }
}
