//! Weighted least connections: the backend with the fewest open connections per unit of
//! weight, ties broken by a caller-supplied random number so that no backend is favoured
//! by its position. Pure: the caller passes the loads it read and the randomness.

/// `a_active / a_weight < b_active / b_weight`, exactly (no division).
pub(crate) fn less_loaded(a: (u64, u32), b: (u64, u32)) -> std::cmp::Ordering {
    (u128::from(a.0) * u128::from(b.1)).cmp(&(u128::from(b.0) * u128::from(a.1)))
}

/// Up to `want` distinct backends, least loaded first; zero-weight backends are never chosen.
pub fn candidates(weights: &[u32], active: &[u64], random: u64, want: usize, out: &mut Vec<usize>) {
    out.clear();
    let mut rand = random;
    while out.len() < want {
        let mut best: Option<(u64, u32)> = None;
        let mut ties = 0u64;
        let mut chosen = None;
        for (i, (&w, &a)) in weights.iter().zip(active).enumerate() {
            if w == 0 || out.contains(&i) {
                continue;
            }
            let order = best.map(|b| less_loaded((a, w), b));
            match order {
                None | Some(std::cmp::Ordering::Less) => {
                    best = Some((a, w));
                    ties = 1;
                    chosen = Some(i);
                }
                Some(std::cmp::Ordering::Equal) => {
                    // Reservoir sampling over the ties: each of k ties wins with chance 1/k.
                    ties += 1;
                    rand = super::mix(rand);
                    if rand % ties == 0 {
                        chosen = Some(i);
                    }
                }
                Some(std::cmp::Ordering::Greater) => {}
            }
        }
        match chosen {
            Some(i) => out.push(i),
            None => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(weights: &[u32], active: &[u64], random: u64) -> usize {
        let mut out = Vec::new();
        candidates(weights, active, random, 1, &mut out);
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
        candidates(&[1, 1, 1], &[9, 1, 5], 0, 3, &mut out);
        assert_eq!(out, vec![1, 2, 0]);
    }
}
