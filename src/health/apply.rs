//! Health results applied on the control plane: the checker tasks kept in step with the
//! config, each probe result run through the rise/fall state machine, passive checks, and
//! the republishing that turns a state change (or a slow-start ramp) into new weights in
//! the published snapshot. Never on the data path.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use crate::control::{Control, lock};
use crate::health::CheckOutcome;

impl Control {
    /// Makes the checker tasks match the running config. Backends that lost their check
    /// forget their health; `added` backends (new to the config since start) that are
    /// checked wait for their first result before taking traffic, while backends already
    /// serving keep serving until a check says otherwise.
    pub(crate) fn sync_checks(&self, added: &[(String, SocketAddr)]) {
        let (Some(rt), Some(this)) = (self.runtime.get(), self.this.get()) else {
            return;
        };
        let config = self.config();
        let (stopped, started) = self.checks.sync(&config, this.clone(), rt);
        let mut changed = self.live.reset_health(&stopped);
        let fresh: Vec<_> = started.into_iter().filter(|k| added.contains(k)).collect();
        changed |= self.live.mark_pending(&fresh);
        if changed {
            self.republish();
        }
    }

    /// Applies one probe result; on a state change, logs it and publishes the new weights.
    pub fn record_check(
        &self,
        pool: &str,
        address: SocketAddr,
        result: Result<String, String>,
        rise: u32,
        fall: u32,
    ) {
        let snapshot = self.plane.snapshot.load_full();
        if let Some(b) = snapshot
            .pool(pool)
            .and_then(|p| p.backends.iter().find(|b| b.address == address))
        {
            let counter = if result.is_ok() {
                &b.stats.health_ok
            } else {
                &b.stats.health_failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let ok = result.is_ok();
        let detail = result.unwrap_or_else(|e| e);
        let outcome = CheckOutcome {
            ok,
            detail: detail.clone(),
            at: std::time::SystemTime::now(),
        };
        let Some(up) = self.live.record_health(pool, address, outcome, rise, fall) else {
            return;
        };
        if up {
            // A fresh start for passive checks: the streak that took it down is history.
            if let Some(b) = snapshot
                .pool(pool)
                .and_then(|p| p.backends.iter().find(|b| b.address == address))
            {
                b.stats.failing_streak.store(0, Ordering::Relaxed);
            }
            tracing::info!(pool, backend = %address, %detail, "backend is up");
        } else {
            tracing::warn!(pool, backend = %address, %detail, "backend is down");
        }
        self.republish();
        let slow_start = self
            .config()
            .pool(pool)
            .map_or(std::time::Duration::ZERO, |p| p.slow_start);
        if up && !slow_start.is_zero() {
            self.ramp(slow_start);
        }
    }

    /// Passive health: `backend` failed its pool's limit of connects in a row. It is marked
    /// down; a pool with an active check brings it back through `rise`, one without retries a
    /// TCP connect with back-off (1 s doubling to 30 s) until one succeeds.
    pub fn passive_down(&self, pool: &str, backend: SocketAddr) {
        let Some(limit) = self.config().pool(pool).map(|p| p.passive_failures) else {
            return;
        };
        if !self
            .live
            .force_down(pool, backend, format!("{limit} connect failures in a row"))
        {
            return;
        }
        tracing::warn!(pool, %backend, failures = limit, "backend is down (passive check)");
        self.republish();
        let has_check = self
            .config()
            .pool(pool)
            .is_some_and(|p| p.health_check.is_some());
        let (Some(rt), Some(this)) = (self.runtime.get(), self.this.get().cloned()) else {
            return;
        };
        if has_check {
            return;
        }
        let pool = pool.to_owned();
        rt.spawn(async move {
            let mut wait = std::time::Duration::from_secs(1);
            loop {
                tokio::time::sleep(wait).await;
                let probe = crate::health::probe::run(
                    &crate::health::probe::Probe::Tcp,
                    backend,
                    std::time::Duration::from_secs(3),
                )
                .await;
                let Some(control) = this.upgrade() else {
                    return;
                };
                let config = control.config();
                let Some(p) = config
                    .pool(&pool)
                    .filter(|p| p.backends.iter().any(|b| b.address == backend))
                else {
                    return; // removed by a reload
                };
                if p.health_check.is_some() {
                    return; // a reload added an active check: its `rise` decides now
                }
                if probe.is_ok() {
                    control.record_check(&pool, backend, probe, 1, 1);
                    return;
                }
                wait = (wait * 2).min(std::time::Duration::from_secs(30));
            }
        });
    }

    /// Publishes a fresh snapshot of the running config (health or ramp changed).
    pub(crate) fn republish(&self) {
        let _serial = lock(&self.changes);
        self.plane
            .snapshot
            .publish(self.live.build(&self.config(), self.generation()));
    }

    /// Republishes in steps while a recovered backend's weight ramps up (slow start). One
    /// ticker runs at a time; another recovery extends its end instead of starting another.
    pub(crate) fn ramp(&self, over: std::time::Duration) {
        let (Some(rt), Some(this)) = (self.runtime.get(), self.this.get().cloned()) else {
            return;
        };
        let step = (over / 20).max(std::time::Duration::from_millis(50));
        let end = std::time::Instant::now() + over + step;
        {
            let mut ramp_end = lock(&self.ramp_end);
            let running = ramp_end.is_some_and(|e| e > std::time::Instant::now());
            *ramp_end = Some(ramp_end.map_or(end, |e| e.max(end)));
            if running {
                return;
            }
        }
        rt.spawn(async move {
            loop {
                tokio::time::sleep(step).await;
                let Some(control) = this.upgrade() else {
                    return;
                };
                control.republish();
                let mut ramp_end = lock(&control.ramp_end);
                if ramp_end.is_none_or(|e| e <= std::time::Instant::now()) {
                    *ramp_end = None;
                    return;
                }
            }
        });
    }
}
