//! The data plane's half of passive health checks: counting each backend's connect failures
//! in a row, and telling the control plane (which marks the backend down and brings it back)
//! exactly when a streak reaches its pool's limit, over a bounded channel it never waits on.

use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::PassiveDown;
use crate::state::{Backend, Pool};

/// A connect to `backend` succeeded: its streak starts again.
pub(super) fn success(backend: &Backend) {
    backend.stats.failing_streak.store(0, Ordering::Relaxed);
}

/// Counts a connect failure in a row. The one failure whose increment reaches the pool's
/// limit tells the control plane (which marks the backend down): once per crossing, never
/// per failure, so the channel stays bounded and quiet under a flood of failures. When the
/// channel is full the streak steps back below the limit, so the next failure crosses and
/// tries again: no crossing is lost, and nothing waits or grows. A successful connect (or the
/// control plane bringing the backend back) resets the streak, so a new crossing notifies
/// again.
pub(super) fn failure(failing: &mpsc::Sender<PassiveDown>, pool: &Pool, backend: &Backend) {
    let limit = pool.passive_failures;
    let streak = &backend.stats.failing_streak;
    if streak.fetch_add(1, Ordering::Relaxed).saturating_add(1) != limit {
        return;
    }
    let notice = PassiveDown {
        pool: pool.name.clone(),
        backend: backend.address,
    };
    if failing.try_send(notice).is_err() {
        // Failures that raced past the limit meanwhile are pulled back too (else none of
        // them would cross again); a success that reset the streak meanwhile is kept.
        let _ = streak.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
            (s >= limit).then(|| limit.saturating_sub(1))
        });
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
}
