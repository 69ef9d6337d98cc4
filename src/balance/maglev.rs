//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of prime size M,
//! filled by every backend walking its own permutation of the slots, so that a key maps to
//! the same backend on every instance built from the same backends, and a change of one
//! backend moves only about 1/N of the keys. Weights are honoured by letting a backend take
//! a turn per round in proportion to its weight. Hashes are fixed (not seeded per process),
//! since instances must agree.

/// Table size floor: a prime well above 100 × backends for up to 650 backends.
const MIN_TABLE: u64 = 65_537;

#[derive(Debug, Clone, Default)]
pub struct Maglev {
    table: Vec<u32>,
    selectable: usize,
}

/// FNV-1a, 64-bit: stable across processes and machines.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// The smallest prime ≥ `n`.
pub fn next_prime(n: u64) -> u64 {
    (n.max(2)..).find(|c| is_prime(*c)).unwrap_or(n)
}

impl Maglev {
    /// Builds the table. `ids` name the backends (their identity, e.g. `IP:PORT`) and fix
    /// their permutations; `weights` of 0 leave a backend out.
    pub fn new(ids: &[String], weights: &[u32]) -> Maglev {
        let live: Vec<usize> = (0..ids.len())
            .filter(|i| weights.get(*i).is_some_and(|w| *w > 0))
            .collect();
        if live.is_empty() {
            return Maglev::default();
        }
        let m = next_prime(MIN_TABLE.max(131 * live.len() as u64));
        let perms: Vec<(u64, u64)> = live
            .iter()
            .map(|&i| {
                let h = fnv1a(ids[i].as_bytes());
                let offset = super::mix(h) % m;
                let skip = super::mix(h ^ 0x5bd1_e995) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let mut table = vec![u32::MAX; usize::try_from(m).unwrap_or(0)];
        let mut next = vec![0u64; live.len()];
        // Backend k takes one slot: the next free one along its own permutation.
        let mut take = |k: usize, table: &mut Vec<u32>| {
            let (offset, skip) = perms[k];
            loop {
                let slot = ((offset + next[k] * skip) % m) as usize;
                next[k] += 1;
                if table[slot] == u32::MAX {
                    table[slot] = u32::try_from(live[k]).unwrap_or(u32::MAX);
                    return;
                }
            }
        };
        // Every live backend gets one slot first (a tiny weight must not vanish), then turns
        // follow each backend's virtual times (t + 1/2) / w, the weighted interleave of
        // `round_robin`, so the fill costs O(m log n) however skewed the weights.
        for k in 0..live.len() {
            take(k, &mut table);
        }
        let mut filled = live.len() as u64;
        if live.iter().all(|&i| weights[i] == weights[live[0]]) {
            // Equal weights: plain turns in order (the common case, without a heap).
            for k in (0..live.len()).cycle() {
                if filled >= m {
                    break;
                }
                take(k, &mut table);
                filled += 1;
            }
        }
        let mut turns: std::collections::BinaryHeap<super::round_robin::Next> = live
            .iter()
            .enumerate()
            .map(|(k, &i)| {
                super::round_robin::Next::new(u64::from(weights[i]), u32::try_from(k).unwrap_or(0))
            })
            .collect();
        while filled < m {
            let Some(mut turn) = turns.pop() else { break };
            take(turn.index as usize, &mut table);
            filled += 1;
            turn.picks += 1;
            turns.push(turn);
        }
        let mut owners = table.clone();
        owners.sort_unstable();
        owners.dedup();
        Maglev {
            table,
            selectable: owners.len(),
        }
    }

    pub fn table_size(&self) -> usize {
        self.table.len()
    }

    /// The backend for `key`, then distinct others met walking the table, for retries.
    pub fn candidates(&self, key: u64, want: usize, out: &mut Vec<usize>) {
        out.clear();
        let m = self.table.len();
        let want = want.min(self.selectable);
        if m == 0 {
            return;
        }
        let start = (super::mix(key) % m as u64) as usize;
        for step in 0..m {
            let i = self.table[(start + step) % m] as usize;
            if !out.contains(&i) {
                out.push(i);
                if out.len() >= want {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.0.{}.{}:80", i / 256, i % 256))
            .collect()
    }

    fn owner(t: &Maglev, key: u64) -> usize {
        let mut out = Vec::new();
        t.candidates(key, 1, &mut out);
        out[0]
    }

    #[test]
    fn table_is_prime_and_well_above_100_per_backend() {
        let t = Maglev::new(&ids(3), &[1, 1, 1]);
        assert!(is_prime(t.table_size() as u64));
        assert!(t.table_size() >= 300 * 100);
        assert!(Maglev::new(&ids(1000), &vec![1; 1000]).table_size() >= 100_000);
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth_of_keys() {
        for n in [5usize, 10, 30] {
            let names = ids(n);
            let full = Maglev::new(&names, &vec![1; n]);
            let mut w = vec![1; n];
            w[n / 2] = 0;
            let less = Maglev::new(&names, &w);
            let moved = (0..100_000u64)
                .filter(|k| owner(&full, *k) != owner(&less, *k))
                .count();
            let bound = 100_000.0 * (1.0 / n as f64 + 0.02);
            assert!(
                (moved as f64) <= bound,
                "n={n}: {moved} keys moved (bound {bound})"
            );
        }
    }

    #[test]
    fn adding_one_backend_moves_about_one_nth_of_keys() {
        let names = ids(11);
        let before = Maglev::new(&names[..10], &[1; 10]);
        let after = Maglev::new(&names, &[1; 11]);
        let moved = (0..100_000u64)
            .filter(|k| owner(&before, *k) != owner(&after, *k))
            .count();
        assert!(
            (moved as f64) <= 100_000.0 * (1.0 / 11.0 + 0.02),
            "{moved} moved"
        );
    }

    #[test]
    fn independent_builds_agree_on_every_key() {
        let a = Maglev::new(&ids(7), &[1, 2, 1, 1, 3, 1, 1]);
        let b = Maglev::new(&ids(7), &[1, 2, 1, 1, 3, 1, 1]);
        assert!((0..100_000u64).all(|k| owner(&a, k) == owner(&b, k)));
    }

    #[test]
    fn weights_are_honoured() {
        let t = Maglev::new(&ids(3), &[1, 2, 3]);
        let mut share = [0usize; 3];
        for k in 0..60_000u64 {
            share[owner(&t, k)] += 1;
        }
        for (i, expect) in [10_000.0, 20_000.0, 30_000.0].iter().enumerate() {
            assert!(
                (share[i] as f64 - expect).abs() / expect < 0.05,
                "{share:?}"
            );
        }
    }
}
