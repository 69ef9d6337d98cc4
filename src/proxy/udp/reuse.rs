//! Upstream sockets kept for the next session to the same backend. With `udp.responses`
//! set, a session that has had every reply it was owed leaves a socket with nothing
//! outstanding; opening a new one for the next session (`socket`, `connect`,
//! `getsockname`, two `epoll_ctl`, `close`, and the kernel's ephemeral-port search) is most
//! of what a one-query DNS session costs. Kept here instead, it serves the next session to
//! that backend address at the cost of one `send`.
//!
//! Last in, first out, so a steady load cycles through as few sockets as it keeps busy
//! and the rest go unused until [`IdleLinks::expire`] closes them. Pure bookkeeping like the
//! flow table: the shell passes the time in and closes what comes back.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

/// Milliseconds a kept socket may go unused before it is closed.
pub const KEEP_MS: u64 = 1_000;

/// Sockets kept per listening socket at most (each holds a descriptor).
pub const MAX_KEPT: usize = 256;

#[derive(Debug)]
pub struct IdleLinks<L> {
    /// Per backend address, oldest first, each with the time it was put back.
    by_backend: HashMap<SocketAddr, VecDeque<(u64, L)>>,
    len: usize,
    cap: usize,
}

impl<L> IdleLinks<L> {
    pub fn new(cap: usize) -> IdleLinks<L> {
        IdleLinks {
            by_backend: HashMap::new(),
            len: 0,
            cap,
        }
    }

    /// Sockets kept now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    /// Keeps `link`, connected to `backend`, from `now`; gives it back when full.
    pub fn put(&mut self, backend: SocketAddr, link: L, now: u64) -> Result<(), L> {
        if self.len >= self.cap {
            return Err(link);
        }
        self.by_backend
            .entry(backend)
            .or_default()
            .push_back((now, link));
        self.len += 1;
        Ok(())
    }

    /// The socket to `backend` put back last, if any.
    pub fn take(&mut self, backend: SocketAddr) -> Option<L> {
        let kept = self.by_backend.get_mut(&backend)?;
        let (_, link) = kept.pop_back()?;
        if kept.is_empty() {
            self.by_backend.remove(&backend);
        }
        self.len -= 1;
        Some(link)
    }

    /// Takes out every socket unused for [`KEEP_MS`] at `now`, for the caller to close.
    pub fn expire(&mut self, now: u64) -> Vec<L> {
        let mut out = Vec::new();
        if self.len == 0 {
            return out;
        }
        self.by_backend.retain(|_, kept| {
            while kept
                .front()
                .is_some_and(|(at, _)| now.saturating_sub(*at) >= KEEP_MS)
            {
                if let Some((_, link)) = kept.pop_front() {
                    out.push(link);
                }
            }
            !kept.is_empty()
        });
        self.len -= out.len();
        out
    }

    /// When [`IdleLinks::expire`] next has something to close; `None` when nothing is kept.
    pub fn next_expiry(&self) -> Option<u64> {
        self.by_backend
            .values()
            .filter_map(|kept| kept.front())
            .map(|(at, _)| at.saturating_add(KEEP_MS))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn the_last_socket_put_back_is_taken_first_and_only_for_its_backend() {
        let mut idle = IdleLinks::new(8);
        idle.put(addr(1), "a1", 0).unwrap();
        idle.put(addr(1), "a2", 5).unwrap();
        idle.put(addr(2), "b1", 6).unwrap();
        assert_eq!(idle.len(), 3);
        assert_eq!(idle.take(addr(3)), None);
        assert_eq!(idle.take(addr(1)), Some("a2"));
        assert_eq!(idle.take(addr(1)), Some("a1"));
        assert_eq!(idle.take(addr(1)), None);
        assert_eq!(idle.take(addr(2)), Some("b1"));
        assert_eq!(idle.len(), 0);
        assert_eq!(idle.next_expiry(), None);
    }

    #[test]
    fn a_full_pool_gives_the_socket_back() {
        let mut idle = IdleLinks::new(2);
        idle.put(addr(1), 1, 0).unwrap();
        idle.put(addr(2), 2, 0).unwrap();
        assert_eq!(idle.put(addr(1), 3, 0), Err(3));
        assert_eq!(idle.len(), 2);
        assert_eq!(idle.take(addr(2)), Some(2));
        idle.put(addr(1), 3, 0).unwrap();
        assert_eq!(idle.len(), 2);
    }

    #[test]
    fn unused_sockets_close_after_keep_ms_and_used_ones_stay() {
        let mut idle = IdleLinks::new(8);
        idle.put(addr(1), "old", 100).unwrap();
        idle.put(addr(1), "new", 600).unwrap();
        idle.put(addr(2), "other", 300).unwrap();
        assert_eq!(idle.next_expiry(), Some(100 + KEEP_MS));
        assert!(idle.expire(100 + KEEP_MS - 1).is_empty());
        assert_eq!(idle.expire(100 + KEEP_MS), vec!["old"]);
        assert_eq!(idle.next_expiry(), Some(300 + KEEP_MS));
        let mut rest = idle.expire(600 + KEEP_MS);
        rest.sort_unstable();
        assert_eq!(rest, vec!["new", "other"]);
        assert_eq!(idle.len(), 0);
        // A clock read before the put never closes it early.
        idle.put(addr(1), "late", 900).unwrap();
        assert!(idle.expire(800).is_empty());
        assert_eq!(idle.take(addr(1)), Some("late"));
    }
}
