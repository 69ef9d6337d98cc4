//! The flow table's idle deadlines: a min-heap with lazy deletion, so that a datagram, which
//! pushes its session's deadline back, costs no heap operation at all.
//!
//! Each entry is `(deadline, serial, slot)`. The table keeps one invariant: every live
//! session has exactly one entry carrying its serial, and that entry's deadline is at or
//! before the session's real one (`last_active + idle`). Refreshing a session only moves its
//! real deadline later, so the invariant holds without touching the heap; when the entry
//! comes due the table compares it with the real deadline and files it again if the session
//! was refreshed meanwhile. An entry whose serial no longer matches its slot belongs to a
//! session that ended (removed, replied out, moved elsewhere by a reload) and is dropped
//! when it surfaces, so a stale entry can never end a session — not even a newer one in
//! the same slot, because serials are never reused.
//!
//! Stale entries would otherwise pile up between expiries (a DNS listener ends most sessions
//! at their first reply), so the heap is rebuilt from the live sessions whenever stale
//! entries outnumber live ones by [`SLACK`]: O(n) work after at least n removals, O(1) each.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Stale entries tolerated beyond one per live session before the heap is rebuilt.
pub(super) const SLACK: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Entry {
    pub deadline: u64,
    /// Ties go to the older session, so the order is a function of the events alone.
    pub serial: u64,
    pub slot: u32,
}

#[derive(Debug, Default)]
pub(super) struct Deadlines {
    heap: BinaryHeap<Reverse<Entry>>,
}

impl Deadlines {
    pub(super) fn with_capacity(n: usize) -> Deadlines {
        Deadlines {
            heap: BinaryHeap::with_capacity(n),
        }
    }

    pub(super) fn push(&mut self, entry: Entry) {
        self.heap.push(Reverse(entry));
    }

    /// The earliest entry, if it is due at `now`, taken off the heap.
    pub(super) fn pop_due(&mut self, now: u64) -> Option<Entry> {
        let Reverse(first) = self.heap.peek()?;
        if first.deadline > now {
            return None;
        }
        self.heap.pop().map(|Reverse(e)| e)
    }

    /// The earliest deadline on file: never later than the earliest real one, possibly
    /// earlier (a refreshed or ended session), which only wakes the caller early.
    pub(super) fn earliest(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse(e)| e.deadline)
    }

    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether stale entries are worth a rebuild, with `live` sessions in the table.
    pub(super) fn bloated(&self, live: usize) -> bool {
        self.heap.len() > live.saturating_mul(2).saturating_add(SLACK)
    }

    /// Replaces every entry by `entries` (one per live session, at its real deadline).
    pub(super) fn rebuild(&mut self, entries: impl Iterator<Item = Entry>) {
        let mut v = std::mem::take(&mut self.heap).into_vec();
        v.clear();
        v.extend(entries.map(Reverse));
        self.heap = BinaryHeap::from(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(deadline: u64, serial: u64) -> Entry {
        Entry {
            deadline,
            serial,
            slot: 0,
        }
    }

    #[test]
    fn entries_come_due_in_deadline_then_serial_order() {
        let mut d = Deadlines::default();
        for entry in [e(30, 1), e(10, 3), e(10, 2), e(20, 4)] {
            d.push(entry);
        }
        assert_eq!(d.earliest(), Some(10));
        assert_eq!(d.pop_due(9), None);
        assert_eq!(d.pop_due(10), Some(e(10, 2)));
        assert_eq!(d.pop_due(10), Some(e(10, 3)));
        assert_eq!(d.pop_due(25), Some(e(20, 4)));
        assert_eq!(d.pop_due(25), None);
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn a_rebuild_keeps_only_what_it_is_given() {
        let mut d = Deadlines::with_capacity(4);
        for s in 0..100 {
            d.push(e(s, s));
        }
        assert!(d.bloated(10));
        assert!(!d.bloated(18));
        d.rebuild([e(7, 200)].into_iter());
        assert_eq!(d.len(), 1);
        assert_eq!(d.pop_due(u64::MAX), Some(e(7, 200)));
    }
}
