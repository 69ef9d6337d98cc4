//! The per-source rate state a binary upgrade carries (`crate::admission::Debts`), as plain
//! values for the wire: per limited listener, what each source group still owes its rate.
//! Taken by the owner with the rest of the control state (`Command::Carry`), put in force in
//! the new process's tables right after its first build, before any worker serves (see
//! `crate::admission` `carry.rs` for how a changed rate or prefix takes them).

use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::info;

use super::build::Builder;
use super::view::unix_ms;
use crate::admission::{Debts, Seeded, rate_from_parts, rate_parts};

/// Debts carried in all, shared evenly by the listeners that have any: beyond it (a flood
/// from more sources than that still paying their rate), the sources that owe least start
/// afresh in the new process. The new process refuses a handover that sends more. A
/// million is ~33 MB of JSON, encoded in ~0.3 s, while the listeners are paused.
pub const MAX_DEBTS: usize = 1_000_000;
/// Sources per part of the state (a part must fit one handover message with room to spare:
/// a source is at most ~60 bytes of JSON).
const PER_PART: usize = 512;

/// What one listener's limited sources owe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarriedLimits {
    pub listener: String,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// The rate the debts were run up under: count, period (ns), burst.
    pub rate: Option<(u64, u64, u32)>,
    /// When they were taken (ms since the Unix epoch): the time they spend on the way is
    /// paid off.
    pub taken_ms: u64,
    /// Each group's key (its masked address, high and low halves; IPv4 as IPv4-mapped
    /// IPv6) and what it owes (ns of the rate's clock).
    pub sources: Vec<([u64; 2], u64)>,
}

impl CarriedLimits {
    /// Its parts, each small enough for one message.
    pub fn split(self) -> Vec<CarriedLimits> {
        if self.sources.len() <= PER_PART {
            return vec![self];
        }
        self.sources
            .chunks(PER_PART)
            .map(|sources| CarriedLimits {
                sources: sources.to_vec(),
                listener: self.listener.clone(),
                ..self
            })
            .collect()
    }

    /// Whether `other` is a further part of the same listener's state.
    pub fn continues(&self, other: &CarriedLimits) -> bool {
        (
            &self.listener,
            self.ipv4_prefix,
            self.ipv6_prefix,
            self.rate,
            self.taken_ms,
        ) == (
            &other.listener,
            other.ipv4_prefix,
            other.ipv6_prefix,
            other.rate,
            other.taken_ms,
        )
    }
}

/// Keeps the `n` largest debts of `owed` (in no particular order).
fn keep_largest(owed: &mut Vec<([u64; 2], u64)>, n: usize) {
    if owed.len() > n {
        if n > 0 {
            owed.select_nth_unstable_by_key(n - 1, |&(_, debt)| std::cmp::Reverse(debt));
        }
        owed.truncate(n);
    }
}

impl Builder {
    /// What the sources of every limited listener owe now: at most [`MAX_DEBTS`] in all,
    /// an even share per listener, the largest debts (the sources most over their rate)
    /// kept.
    pub fn carry_limits(&self) -> Vec<CarriedLimits> {
        let (now, taken_ms) = (Instant::now(), unix_ms(SystemTime::now()));
        let mut tables: Vec<_> = self.limiter_tables().collect();
        tables.sort_by_key(|(listener, _)| *listener);
        let share = MAX_DEBTS / tables.len().max(1);
        let mut all = Vec::new();
        for (listener, table) in tables {
            let mut debts = table.debts(now);
            keep_largest(&mut debts.owed, share);
            if !debts.owed.is_empty() {
                all.push(CarriedLimits {
                    listener: listener.to_owned(),
                    ipv4_prefix: debts.ipv4_prefix,
                    ipv6_prefix: debts.ipv6_prefix,
                    rate: debts.basis.as_ref().map(rate_parts),
                    taken_ms,
                    sources: debts.owed,
                });
            }
        }
        all
    }

    /// Puts in force what the previous process's sources owed, in the tables of the
    /// listeners still limited. Logged once, with what was kept.
    pub fn seed_limits(&self, carried: Vec<CarriedLimits>) {
        let (now, now_ms) = (Instant::now(), unix_ms(SystemTime::now()));
        let mut total = Seeded::default();
        let mut unlimited = 0;
        for part in carried {
            let Some(table) = self.limiter_table(&part.listener) else {
                unlimited += part.sources.len();
                continue;
            };
            let ago = now_ms
                .saturating_sub(part.taken_ms)
                .saturating_mul(1_000_000);
            let debts = Debts {
                ipv4_prefix: part.ipv4_prefix,
                ipv6_prefix: part.ipv6_prefix,
                basis: part.rate.and_then(rate_from_parts),
                owed: part.sources,
            };
            let seeded = table.take_debts(debts, now, ago);
            total.kept += seeded.kept;
            total.split += seeded.split;
            total.dropped += seeded.dropped;
        }
        let given = total.kept + total.split + total.dropped + unlimited;
        if given > 0 {
            info!(
                kept = total.kept,
                split = total.split,
                dropped = total.dropped,
                no_longer_limited = unlimited,
                "per-source rate state carried over from the previous process"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_debts_are_kept() {
        let mut owed: Vec<_> = (0..100u64).map(|i| ([0, i], (i * 37) % 101)).collect();
        let mut want: Vec<u64> = owed.iter().map(|o| o.1).collect();
        want.sort_unstable_by(|a, b| b.cmp(a));
        keep_largest(&mut owed, 10);
        let mut kept: Vec<u64> = owed.iter().map(|o| o.1).collect();
        kept.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(kept, want[..10]);
        keep_largest(&mut owed, 0);
        assert!(owed.is_empty());
    }

    #[test]
    fn parts_join_back() {
        let whole = CarriedLimits {
            listener: "front".into(),
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            rate: Some((10, 1_000_000_000, 5)),
            taken_ms: 1_796_000_000_000,
            // The longest a source can be: full IPv6 keys, debts of hours.
            sources: (0..1500)
                .map(|i| ([u64::MAX - i, u64::MAX - i], 3_600_000_000_000_000 + i))
                .collect(),
        };
        let parts = whole.clone().split();
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| whole.continues(p)));
        for part in &parts {
            let json = serde_json::to_string(part).unwrap();
            assert!(json.len() < 40 * 1024, "{} bytes", json.len());
        }
        let mut joined = parts[0].clone();
        for p in &parts[1..] {
            joined.sources.extend(p.sources.iter().copied());
        }
        assert_eq!(joined, whole);
    }
}
