//! Shared by the bulk benchmarks (`throughput` and `pipes` include this file with `#[path]`):
//! waiting for every stream a sink receives to report its byte count, and the median,
//! minimum and maximum of repeated measurements.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use super::child::Res;

/// Waits until `streams` connections each delivered exactly `per_stream` bytes. Reports of
/// 0 bytes are connections without data (a backend health probe), not ours.
pub fn wait_for(
    done: &Receiver<Res<u64>>,
    streams: usize,
    per_stream: u64,
    deadline: Instant,
) -> Res<()> {
    let mut finished = 0;
    while finished < streams {
        let wait = deadline.saturating_duration_since(Instant::now());
        match done.recv_timeout(wait) {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) if n == per_stream => finished += 1,
            Ok(Ok(n)) => return Err(format!("sink got {n} bytes, expected {per_stream}")),
            Ok(Err(e)) => return Err(e),
            Err(RecvTimeoutError::Timeout) => {
                return Err(format!("deadline: only {finished}/{streams} streams done"));
            }
            Err(RecvTimeoutError::Disconnected) => return Err("the sink stopped".into()),
        }
    }
    Ok(())
}

/// (median, min, max) of the values; `None` if there are none.
pub fn summary(mut values: Vec<f64>) -> Option<(f64, f64, f64)> {
    values.sort_by(f64::total_cmp);
    let (min, max, mid) = (*values.first()?, *values.last()?, values.len() / 2);
    let median = match values.len() % 2 {
        0 => (values[mid - 1] + values[mid]) / 2.0,
        _ => values[mid],
    };
    Some((median, min, max))
}
