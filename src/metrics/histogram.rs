//! The connect-duration histogram as exposed: which of the data plane's bucket bounds are
//! shown, and the Prometheus sample of one pool.
//!
//! The data plane counts every connect against a fixed ladder reaching far past any connect
//! (`state::CONNECT_BUCKETS`). The exposition shows the bounds up to the first at or above
//! the largest `timeouts.connect` of the running config, so every connect that succeeds
//! before its timeout lands in a finite bucket; and never fewer than up to 2.5 s, the
//! largest bound of earlier versions, so no series a dashboard reads goes away. Buckets are
//! cumulative, so any prefix of the ladder is exact, and a reload that raises the timeout
//! shows new bounds with their true counts since start. One layout for every pool keeps
//! `sum by (le)` across pools meaningful.

use prometheus::proto::{Bucket, Histogram, Metric};

use super::labels;
use crate::config::Config;
use crate::state::{CONNECT_BUCKETS, Pool};

/// The smallest largest bound ever shown, in seconds.
const SHOWN_AT_LEAST: f64 = 2.5;

/// How many of [`CONNECT_BUCKETS`] the exposition shows under `config`.
pub(super) fn connect_buckets_shown(config: &Config) -> usize {
    let longest = config
        .listeners
        .iter()
        .map(|l| l.connect_timeout.as_secs_f64())
        .fold(SHOWN_AT_LEAST, f64::max);
    // The first bound at or above the longest timeout, and every bound below it.
    let first = CONNECT_BUCKETS.partition_point(|b| *b < longest);
    (first + 1).min(CONNECT_BUCKETS.len())
}

/// The histogram sample of one pool, with the first `shown` bounds.
pub(super) fn connect_duration(pool_label: &str, pool: &Pool, shown: usize) -> Metric {
    let (cumulative, count, sum) = pool.live.connect_duration.read();
    let mut h = Histogram::default();
    h.set_sample_count(count);
    h.set_sample_sum(sum);
    h.set_bucket(
        CONNECT_BUCKETS
            .iter()
            .zip(cumulative)
            .take(shown)
            .map(|(bound, n)| {
                let mut b = Bucket::default();
                b.set_upper_bound(*bound);
                b.set_cumulative_count(n);
                b
            })
            .collect(),
    );
    let mut m = Metric::default();
    m.set_label(labels(&[("pool", pool_label)]));
    m.set_histogram(h);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn largest_shown(connect_timeouts: &[&str]) -> f64 {
        let mut yaml = String::from("listeners:\n");
        for (i, t) in connect_timeouts.iter().enumerate() {
            yaml.push_str(&format!(
                "  l{i}:\n    bind: \"127.0.0.1:0\"\n    pool: p\n    timeouts: {{ connect: {t} }}\n"
            ));
        }
        yaml.push_str("pools:\n  p:\n    backends:\n      - address: \"127.0.0.1:9\"\n");
        let config = crate::config::load_str(&yaml, "t.yaml").unwrap();
        CONNECT_BUCKETS[connect_buckets_shown(&config) - 1]
    }

    #[test]
    fn the_largest_bucket_shown_reaches_the_longest_connect_timeout() {
        assert_eq!(largest_shown(&["3s"]), 5.0, "the default timeout");
        assert_eq!(
            largest_shown(&["3s", "45s"]),
            50.0,
            "the longest listener counts"
        );
        assert_eq!(
            largest_shown(&["10s"]),
            10.0,
            "a bound equal to the timeout is enough"
        );
        assert_eq!(
            largest_shown(&["100ms"]),
            2.5,
            "never fewer bounds than before"
        );
        assert_eq!(largest_shown(&["2h"]), 10_000.0);
        assert_eq!(
            largest_shown(&["30d"]),
            100_000.0,
            "the ladder's end, past any connect"
        );
    }
}
