//! How many descriptors the new process can still take during a handover: its open-file
//! limit less what it has open, less a reserve for the clients it accepts meanwhile. The
//! old process sends no batch that does not fit; what does not fit stays with it.
//!
//! Counting open descriptors reads `/proc/self/fd`, which costs in proportion to their
//! number; taken once per batch that would be quadratic over a 9 000-connection handover.
//! So the count is taken at `Ready`, what each batch brings is added to it, and it is
//! counted again only when the estimate comes near the limit (connections that closed
//! meanwhile give room back, clients accepted meanwhile take some).

use crate::sys::rlimit::{open_descriptors, soft_nofile};

/// Descriptors kept free for new clients: a sixteenth of the limit, at least 64, at most
/// 1 024 (a busy listener's accept backlog drains well within that).
fn reserve(limit: u64) -> u64 {
    (limit / 16).clamp(64, 1024)
}

/// Counted again when the estimated room falls under this (a few batches' worth).
const RECOUNT_UNDER: u64 = 4 * super::wire::MAX_FDS as u64;

/// The new process's view of its descriptor room.
pub struct Room {
    limit: u64,
    /// Open descriptors at the last count, plus what came since.
    open: u64,
}

impl Room {
    /// Counts now. A limit or count that cannot be read gives no room: the old process
    /// then keeps its connections, which is safe.
    pub fn count() -> Room {
        let limit = soft_nofile().unwrap_or(0);
        let open = open_descriptors().unwrap_or(limit);
        Room { limit, open }
    }

    /// Descriptors that can still come, counted again when the estimate runs low.
    pub fn free(&mut self) -> u32 {
        if self.estimate() < RECOUNT_UNDER {
            *self = Room::count();
        }
        u32::try_from(self.estimate()).unwrap_or(u32::MAX)
    }

    /// `n` descriptors came (or are about to be kept).
    pub fn took(&mut self, n: usize) {
        self.open += n as u64;
    }

    fn estimate(&self) -> u64 {
        self.limit
            .saturating_sub(self.open)
            .saturating_sub(reserve(self.limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_scales_with_the_limit_within_bounds() {
        assert_eq!(reserve(1024), 64);
        assert_eq!(reserve(20_000), 1024);
        assert_eq!(reserve(8_000), 500);
    }

    #[test]
    fn room_shrinks_by_what_came_and_is_counted_again_near_the_limit() {
        let mut room = Room {
            limit: 10_000,
            open: 100,
        };
        assert_eq!(room.free(), 10_000 - 100 - 625);
        room.took(1_000);
        assert_eq!(room.free(), 10_000 - 1_100 - 625);
        // Near the limit the estimate gives way to a real count of this test process,
        // which holds far fewer than 9 900 descriptors.
        room.took(8_000);
        let real = Room::count();
        assert!(room.free() > 0);
        assert_eq!(room.limit, real.limit);
    }
}
