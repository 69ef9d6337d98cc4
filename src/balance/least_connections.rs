//! Weighted least connections: the backend with the fewest open connections per unit of
//! weight, ties broken by a caller-supplied random number so that no backend is favoured
//! by its position. Pure: the caller passes the loads it read and the randomness.

/// `a_active / a_weight < b_active / b_weight`, exactly (no division).
pub(crate) fn less_loaded(a: (u64, u32), b: (u64, u32)) -> std::cmp::Ordering {
    (u128::from(a.0) * u128::from(b.1)).cmp(&(u128::from(b.0) * u128::from(a.1)))
}

/// Up to `want` distinct backends, least loaded first; zero-weight backends are never chosen.
/// `active(i)` reads backend i's open connections; each is read once. Ties are ordered by a
/// random key per backend, so no position is favoured. One pass plus a partial sort: O(n).
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
    let mut ranked: Vec<(u64, u32, u64, usize)> = weights
        .iter()
        .enumerate()
        .filter(|(_, w)| **w > 0)
        .map(|(i, &w)| (active(i), w, super::mix(random ^ i as u64), i))
        .collect();
    let order = |a: &(u64, u32, u64, usize), b: &(u64, u32, u64, usize)| {
        less_loaded((a.0, a.1), (b.0, b.1)).then(a.2.cmp(&b.2))
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

    #[test]
    fn retries_get_the_next_least_loaded() {
        let mut out = Vec::new();
        let loads = [9, 1, 5];
        candidates(&[1, 1, 1], |i| loads[i], 0, 3, &mut out);
        assert_eq!(out, vec![1, 2, 0]);
    }
}
