//! Carrying a listener's per-source rate state to the process a binary upgrade starts, so
//! that an upgrade never hands a limited source a fresh burst.
//!
//! What moves is what each source owes: how far its TAT runs ahead of the moment it was
//! taken, in the rate it was run up under. The two processes' tables count from different
//! epochs, so an absolute TAT would mean nothing in the new one; a debt relative to "now"
//! does. The new table takes each debt in its own terms: a changed rate or burst converts
//! it as a reload does ([`Rate::carry`]), a coarser prefix merges groups (the larger debt
//! wins), a finer one cannot split what a group spent and starts those groups afresh.
//! Sources that owe nothing are as good as unknown and do not move.
//!
//! Open connections do not move here: each connection handed over takes a ticket in the
//! new table when it is resumed there ([`SourceTable::readmit`]), so the counts are those
//! of the connections the new process actually serves (one the old process keeps counts
//! in the old one).

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Instant;

use super::gcra::Rate;
use super::reshape::rekey;
use super::shard::{Entry, Key};
use super::sources::{Shape, SourceTable, lock};

/// What the sources of one table owe, relative to the instant it was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Debts {
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// The rate the debts were run up under (`None`: no rate, and no debt).
    pub basis: Option<Rate>,
    /// Each group's key and how far its TAT ran ahead of the instant taken (ns).
    pub owed: Vec<(Key, u64)>,
}

/// What [`SourceTable::take_debts`] did with the debts it was given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seeded {
    /// Debts now in force here (before merging).
    pub kept: usize,
    /// Groups of a family whose prefix got finer: they start afresh.
    pub split: usize,
    /// Debts that did not fit the table (it is smaller), or that no rate here applies to.
    pub dropped: usize,
}

impl SourceTable {
    /// What every source owes at `now`, from the table that holds the state (the last one
    /// a reload moved it to). A move still running when this is taken carries only what it
    /// has moved so far.
    pub fn debts(self: &Arc<Self>, now: Instant) -> Debts {
        let table = self.current();
        let t = table.nanos(now);
        let mut owed = Vec::new();
        let mut basis = None;
        for shard in table.shards.iter() {
            let shard = lock(shard);
            // Every shard has the same rates (`set_rate` converts them all).
            basis = shard.rates().1;
            shard.debts(t, &mut owed);
        }
        Debts {
            ipv4_prefix: table.shape.ipv4_prefix,
            ipv6_prefix: table.shape.ipv6_prefix,
            basis: basis.filter(|_| !owed.is_empty()),
            owed,
        }
    }

    /// Puts in force what another table's sources owed `ago` nanoseconds before `now`
    /// (the time the debts spent on the way is paid off). Meant for a table that serves
    /// nobody yet: a debt merges with a source's entry, the larger TAT winning.
    pub fn take_debts(&self, debts: Debts, now: Instant, ago: u64) -> Seeded {
        let t = self.nanos(now);
        let mut seeded = Seeded::default();
        let from = Shape {
            ipv4_prefix: debts.ipv4_prefix,
            ipv6_prefix: debts.ipv6_prefix,
            max_tracked: 0,
        };
        for (key, owed) in debts.owed {
            let Some(key) = rekey(key, from, self.shape) else {
                seeded.split += 1;
                continue;
            };
            let owed = owed.saturating_sub(ago);
            if owed == 0 {
                continue; // paid off on the way
            }
            let hash = self.hasher.hash_one(key);
            let mut shard = lock(&self.shards[self.shard_index(hash)]);
            let tat = match (shard.rates().0, debts.basis) {
                (Some(rate), Some(old)) => rate.carry(t.saturating_add(owed), t, &old),
                _ => 0,
            };
            if tat > t && shard.merge(hash, &Entry::carried(key, tat, 0), &self.hasher) {
                seeded.kept += 1;
            } else {
                seeded.dropped += 1;
            }
        }
        seeded
    }
}

/// A rate as plain numbers, for a debt's basis on the wire: `count` per `period_ns`, and
/// `burst`.
pub fn rate_parts(rate: &Rate) -> (u64, u64, u32) {
    let period = u64::try_from(rate.period.as_nanos()).unwrap_or(u64::MAX);
    (rate.count, period, rate.burst)
}

/// The rate of [`rate_parts`]; `None` for a count of 0, which no config allows.
pub fn rate_from_parts((count, period_ns, burst): (u64, u64, u32)) -> Option<Rate> {
    (count > 0).then(|| Rate::new(count, std::time::Duration::from_nanos(period_ns), burst))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::shard::Outcome;
    use std::net::IpAddr;
    use std::time::Duration;

    const S: u64 = 1_000_000_000;

    fn table(v4: u8, rate: Rate) -> Arc<SourceTable> {
        let shape = Shape {
            ipv4_prefix: v4,
            ipv6_prefix: 64,
            max_tracked: 1000,
        };
        Arc::new(SourceTable::new(shape, Some(rate)))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Admits from `ip` at `now` until refused; how many got in.
    fn drain(t: &Arc<SourceTable>, ip: IpAddr, now: Instant) -> usize {
        let mut tickets = Vec::new();
        while let Ok(ticket) = t.admit(ip, now, None) {
            tickets.push(ticket);
            assert!(tickets.len() < 1000, "the rate never refused");
        }
        tickets.len()
    }

    #[test]
    fn a_spent_burst_stays_spent_in_the_new_table() {
        let rate = Rate::new(1, Duration::from_secs(10), 4);
        let old = table(32, rate);
        let now = Instant::now();
        assert_eq!(drain(&old, ip("192.0.2.1"), now), 5);
        // Half spent: 2 of 5.
        for _ in 0..2 {
            drop(old.admit(ip("192.0.2.2"), now, None).unwrap());
        }
        let debts = old.debts(now);
        assert_eq!(debts.owed.len(), 2, "{debts:?}");
        assert_eq!(debts.basis, Some(rate));

        let new = table(32, rate);
        let later = now + Duration::from_millis(1);
        let seeded = new.take_debts(debts.clone(), later, 0);
        assert_eq!(seeded.kept, 2);
        assert_eq!(drain(&new, ip("192.0.2.1"), later), 0, "a fresh burst");
        assert_eq!(drain(&new, ip("192.0.2.2"), later), 3);
        assert_eq!(drain(&new, ip("192.0.2.3"), later), 5, "an unknown source");
        // Paid off on the way: 10 s of the 50 s owed.
        let paid = table(32, rate);
        paid.take_debts(debts, later, 10 * S);
        assert_eq!(drain(&paid, ip("192.0.2.1"), later), 1);
    }

    #[test]
    fn a_new_rate_and_a_coarser_prefix_carry_as_a_reload_does() {
        let rate = Rate::new(1, Duration::from_secs(60), 2);
        let old = table(32, rate);
        let now = Instant::now();
        assert_eq!(drain(&old, ip("198.51.100.7"), now), 3);
        drop(old.admit(ip("198.51.100.9"), now, None).unwrap());
        let debts = old.debts(now);
        // Twice the rate, groups of /24: the two sources are one group, owing the larger
        // debt, three connections, which 2/m with a burst of 2 holds at its ceiling.
        let new = table(24, Rate::new(2, Duration::from_secs(60), 2));
        assert_eq!(new.take_debts(debts.clone(), now, 0).kept, 2);
        assert_eq!(drain(&new, ip("198.51.100.200"), now), 0);
        assert_eq!(new.tracked(), 1);
        // A finer prefix cannot split a group's debt.
        let split = table(32, rate);
        let coarse = table(24, rate);
        assert_eq!(drain(&coarse, ip("198.51.100.1"), now), 3);
        let seeded = split.take_debts(coarse.debts(now), now, 0);
        assert_eq!((seeded.kept, seeded.split), (0, 1));
        // No rate in the new table: nothing owed.
        let open = Arc::new(SourceTable::new(new.shape(), None));
        assert_eq!(open.take_debts(debts, now, 0).dropped, 2);
        assert_eq!(open.tracked(), 0);
    }

    #[test]
    fn a_readmitted_connection_counts_against_max_connections() {
        let t = table(32, Rate::new(1, Duration::from_secs(3600), 0));
        let now = Instant::now();
        let a = ip("203.0.113.5");
        // Over any rate and any cap: it is open already.
        let held: Vec<_> = (0..3).map(|_| t.readmit(a)).collect();
        assert_eq!(t.peek(a, now).0.map(|e| e.open), Some(3));
        assert!(matches!(
            t.admit(a, now, Some(3)),
            Err(Outcome::OverConnections { .. })
        ));
        drop(held);
        assert_eq!(t.peek(a, now).0.map(|e| e.open), Some(0));
        // The rate was not spent by the readmissions.
        assert!(t.admit(a, now, Some(3)).is_ok());
    }

    #[test]
    fn rates_go_through_their_parts() {
        let r = Rate::new(20, Duration::from_secs(60), 7);
        assert_eq!(rate_from_parts(rate_parts(&r)), Some(r));
        assert_eq!(rate_from_parts((0, 1, 0)), None);
    }
}
