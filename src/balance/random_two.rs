//! Power of two choices: two backends drawn at random (in proportion to weight), and the
//! less loaded of the two (per unit of weight) wins; at equal load the first draw wins, so
//! idle backends are chosen in proportion to weight. Nearly as even as least connections,
//! without scanning every backend; pure, with the randomness passed in.

use super::least_connections::less_loaded;

/// Cumulative weights for weighted draws; built once per pool change.
#[derive(Debug, Clone, Default)]
pub struct RandomTwo {
    cumulative: Vec<u64>,
}

impl RandomTwo {
    pub fn new(weights: &[u32]) -> RandomTwo {
        let mut sum = 0u64;
        let cumulative = weights
            .iter()
            .map(|w| {
                sum += u64::from(*w);
                sum
            })
            .collect();
        RandomTwo { cumulative }
    }

    /// The backend owning point `r` of the total weight.
    fn draw(&self, r: u64) -> Option<usize> {
        let total = *self.cumulative.last()?;
        if total == 0 {
            return None;
        }
        let point = r % total;
        Some(self.cumulative.partition_point(|c| *c <= point))
    }

    /// The winner of two weighted draws, then the other, then further distinct draws for
    /// retries. Only the drawn backends' loads are read (`active(i)`), so a pick costs the
    /// same with 3 backends or 300.
    pub fn candidates(
        &self,
        weights: &[u32],
        active: impl Fn(usize) -> u64,
        random: u64,
        want: usize,
        out: &mut Vec<usize>,
    ) {
        out.clear();
        let mut r = super::mix(random);
        let Some(a) = self.draw(r) else { return };
        let mut b = a;
        // A second, different backend when there is one (bounded tries; weights may be skewed).
        for _ in 0..8 {
            r = super::mix(r);
            match self.draw(r) {
                Some(x) if x != a => {
                    b = x;
                    break;
                }
                _ => {}
            }
        }
        let (first, second) =
            if b != a && less_loaded((active(b), weights[b]), (active(a), weights[a])).is_lt() {
                (b, a)
            } else {
                (a, b)
            };
        out.push(first);
        if second != first {
            out.push(second);
        }
        // Retries: more weighted draws, then anything selectable not yet listed.
        let mut tries = 4 * want;
        while out.len() < want && tries > 0 {
            tries -= 1;
            r = super::mix(r);
            if let Some(x) = self.draw(r)
                && !out.contains(&x)
            {
                out.push(x);
            }
        }
        for (i, w) in weights.iter().enumerate() {
            if out.len() >= want {
                break;
            }
            if *w > 0 && !out.contains(&i) {
                out.push(i);
            }
        }
        out.truncate(want);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_stays_even_over_many_picks() {
        let n = 10;
        let weights = vec![1u32; n];
        let rt = RandomTwo::new(&weights);
        let mut active = vec![0u64; n];
        let mut out = Vec::new();
        let mut r = 7u64;
        for _ in 0..10_000 {
            r = crate::balance::mix(r);
            rt.candidates(&weights, |i| active[i], r, 1, &mut out);
            active[out[0]] += 1;
        }
        let (max, min) = (*active.iter().max().unwrap(), *active.iter().min().unwrap());
        assert!(
            max as f64 / min as f64 <= 1.05,
            "max/min {max}/{min}: {active:?}"
        );
    }

    /// Equal load per unit of weight (idle, or 10 and 4 open on 5:2): the first draw, made in
    /// proportion to weight, wins the tie, so the split follows the weights.
    #[test]
    fn equally_loaded_backends_are_chosen_in_proportion_to_weight() {
        let weights = [5u32, 2];
        let rt = RandomTwo::new(&weights);
        let mut out = Vec::new();
        for active in [[0u64, 0], [10, 4]] {
            let mut wins = [0u32; 2];
            let mut r = 3u64;
            for _ in 0..70_000 {
                r = crate::balance::mix(r);
                rt.candidates(&weights, |i| active[i], r, 1, &mut out);
                wins[out[0]] += 1;
            }
            assert!((49_500..50_500).contains(&wins[0]), "{active:?}: {wins:?}");
        }
    }

    #[test]
    fn weight_zero_is_never_drawn() {
        let weights = [0u32, 3, 0];
        let rt = RandomTwo::new(&weights);
        let mut out = Vec::new();
        for r in 0..1000 {
            rt.candidates(&weights, |_| 0, r, 1, &mut out);
            assert_eq!(out, vec![1]);
        }
        assert!(RandomTwo::new(&[0, 0]).draw(5).is_none());
    }
}
