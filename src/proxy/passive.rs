//! The data plane's half of passive health checks: counting each backend's connect failures
//! in a row, and telling the control plane (which marks the backend down and brings it back)
//! exactly when a streak reaches its pool's limit, over a bounded channel it never waits on.

use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::PassiveDown;
use crate::state::{Backend, Pool};

/// A connect to `backend` succeeded: its streak starts again.
pub(super) fn success(backend: &Backend) {
    backend.stats.reset_passive();
}

/// Counts a connect failure in a row. The first failure that finds the streak at or past the
/// pool's limit tells the control plane (which marks the backend down): once per crossing,
/// never per failure, so the channel stays bounded and quiet under a flood of failures. "At
/// or past", not "exactly at": a reload that lowers the limit below a streak in progress
/// still gets its notice. When the channel is full the notice is not marked sent, so the
/// next failure tries again: no crossing is lost, and nothing waits or grows. A successful
/// connect (or the control plane bringing the backend back, or changing its pool's checks)
/// resets the streak and the mark, so a new crossing notifies again.
pub(super) fn failure(failing: &mpsc::Sender<PassiveDown>, pool: &Pool, backend: &Backend) {
    let stats = &backend.stats;
    let streak = stats
        .failing_streak
        .fetch_add(1, Ordering::Relaxed)
        .saturating_add(1);
    if streak < pool.passive_failures
        || stats.passive_reported.load(Ordering::Relaxed)
        || stats.passive_reported.swap(true, Ordering::AcqRel)
    {
        return;
    }
    let notice = PassiveDown {
        pool: pool.name.clone(),
        backend: backend.address,
    };
    if failing.try_send(notice).is_err() {
        stats.passive_reported.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Algorithm, PoolLive};
    use std::sync::Arc;
    use tokio::sync::mpsc::error::TryRecvError;

    /// A real pool of one backend whose passive limit is `limit`.
    fn pool(limit: u32) -> Pool {
        let backend = Arc::new(Backend {
            address: "127.0.0.1:9".parse().unwrap(),
            weight: 1,
            stats: Arc::default(),
        });
        let live = Arc::new(PoolLive::default());
        let mut pool = Pool::new("p", vec![backend], 0, live, Algorithm::RoundRobin);
        pool.passive_failures = limit;
        pool
    }

    fn notice(pool: &Pool) -> PassiveDown {
        PassiveDown {
            pool: pool.name.clone(),
            backend: pool.backends[0].address,
        }
    }

    fn fail(tx: &mpsc::Sender<PassiveDown>, pool: &Pool, times: u32) {
        for _ in 0..times {
            failure(tx, pool, &pool.backends[0]);
        }
    }

    #[test]
    fn failures_past_the_limit_send_one_notice() {
        let pool = pool(3);
        let (tx, mut rx) = mpsc::channel(4);
        fail(&tx, &pool, 2);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty), "below the limit");
        fail(&tx, &pool, 10);
        assert_eq!(rx.try_recv(), Ok(notice(&pool)));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty), "once per crossing");
    }

    #[test]
    fn a_full_channel_defers_the_crossing_to_the_next_failure() {
        let pool = pool(3);
        let (tx, mut rx) = mpsc::channel(1);
        let other = PassiveDown {
            pool: "other".into(),
            backend: "127.0.0.1:10".parse().unwrap(),
        };
        tx.try_send(other.clone()).unwrap();
        fail(&tx, &pool, 3);
        assert_eq!(rx.try_recv(), Ok(other), "only what was queued before");
        assert_eq!(
            rx.try_recv(),
            Err(TryRecvError::Empty),
            "the crossing found no room"
        );
        fail(&tx, &pool, 1);
        assert_eq!(
            rx.try_recv(),
            Ok(notice(&pool)),
            "the next failure crossed again"
        );
        fail(&tx, &pool, 5);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn a_success_resets_the_streak_so_a_new_crossing_notifies_again() {
        let pool = pool(2);
        let (tx, mut rx) = mpsc::channel(4);
        fail(&tx, &pool, 4);
        assert_eq!(rx.try_recv(), Ok(notice(&pool)));
        success(&pool.backends[0]);
        fail(&tx, &pool, 1);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        fail(&tx, &pool, 1);
        assert_eq!(rx.try_recv(), Ok(notice(&pool)), "crossed again");
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    /// A reload that lowers the limit below a streak in progress: the next failure notifies
    /// (with "exactly at the limit", no failure ever would again).
    #[test]
    fn a_limit_lowered_below_the_streak_still_notifies() {
        let before = pool(10);
        let (tx, mut rx) = mpsc::channel(4);
        fail(&tx, &before, 5);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        let live = Arc::new(PoolLive::default());
        let mut after = Pool::new("p", before.backends.clone(), 0, live, Algorithm::RoundRobin);
        after.passive_failures = 3;
        fail(&tx, &after, 1);
        assert_eq!(rx.try_recv(), Ok(notice(&after)), "past the new limit");
        fail(&tx, &after, 3);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty), "once");
        after.backends[0].stats.reset_passive();
        fail(&tx, &after, 3);
        assert_eq!(
            rx.try_recv(),
            Ok(notice(&after)),
            "a reset (the control plane's) rearms it"
        );
    }
}
