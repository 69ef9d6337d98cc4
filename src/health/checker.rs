//! The probing tasks, on the control-plane runtime: one per (pool, backend) with an active
//! check, and one per backend that passive checks took down in a pool without an active
//! check (it probes with back-off until the backend answers). Each task only probes and
//! sends [`Report`]s; the control plane's owner applies them (rise/fall, republishing), and
//! starts, stops and restarts the tasks. Nothing here reads or changes control state.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::probe::{self, Failure, Probe};
use crate::config::{CheckKind, HealthCheck};

/// One probe result, for the owner.
#[derive(Debug)]
pub struct Report {
    pub pool: Arc<str>,
    pub backend: SocketAddr,
    pub outcome: probe::Outcome,
    pub at: SystemTime,
    /// From a passive-recovery probe: one pass brings the backend back.
    pub recovery: bool,
}

pub fn probe_of(kind: &CheckKind) -> Probe {
    match kind {
        CheckKind::Tcp => Probe::Tcp,
        CheckKind::SendExpect { send, expect } => Probe::SendExpect {
            send: send.clone(),
            expect: expect.clone(),
        },
        CheckKind::Http {
            path,
            host,
            expect_status,
        } => Probe::Http {
            path: path.clone(),
            host: host.clone(),
            expect_status: expect_status.clone(),
        },
        CheckKind::Udp { send, expect } => Probe::Udp {
            send: send.clone(),
            expect: expect.clone(),
        },
    }
}

/// `base` ± 10%, from `r`.
fn jittered(base: Duration, r: u64) -> Duration {
    let spread = base.as_millis() as u64 / 5; // the full ±10% band
    let offset = if spread == 0 { 0 } else { r % (spread + 1) };
    (base + Duration::from_millis(offset)).saturating_sub(Duration::from_millis(spread / 2))
}

/// Probes `backend` every `check.interval` (±10% jitter, so checks of many backends spread
/// out instead of firing together) until aborted or the owner is gone. The first probe
/// comes soon, at a random point, so state is known quickly.
pub async fn run(
    pool: Arc<str>,
    backend: SocketAddr,
    check: HealthCheck,
    reports: mpsc::Sender<Report>,
) {
    let probe = probe_of(&check.kind);
    let target = SocketAddr::new(backend.ip(), check.port.unwrap_or(backend.port()));
    let mut r = crate::balance::mix(
        crate::balance::maglev::fnv1a(format!("{pool}/{backend}").as_bytes()) ^ seed(),
    );
    let first = check.interval.min(Duration::from_millis(200));
    let mut delay = Duration::from_millis(r % (first.as_millis() as u64 + 1));
    loop {
        tokio::time::sleep(delay).await;
        let outcome = probe::run(&probe, target, check.timeout, check.proxy_protocol).await;
        let report = Report {
            pool: pool.clone(),
            backend,
            outcome,
            at: SystemTime::now(),
            recovery: false,
        };
        if reports.send(report).await.is_err() {
            return; // the owner is gone: shutting down
        }
        r = crate::balance::mix(r);
        delay = jittered(check.interval, r);
    }
}

/// First wait, and the longest, between passive-recovery probes.
pub const RECOVERY_FIRST: Duration = Duration::from_secs(1);
pub const RECOVERY_MAX: Duration = Duration::from_secs(30);

/// Passive recovery of a backend in a pool without an active check: a TCP connect after
/// 1 s, doubling to 30 s, until one passes; that pass is reported and the task ends. A
/// probe that fails for a local reason is retried without backing off further.
pub async fn recover(pool: Arc<str>, backend: SocketAddr, reports: mpsc::Sender<Report>) {
    let mut wait = RECOVERY_FIRST;
    loop {
        tokio::time::sleep(wait).await;
        match probe::run(&Probe::Tcp, backend, Duration::from_secs(3), None).await {
            Err(Failure::Local(_)) => continue,
            Err(Failure::Backend(_)) => wait = (wait * 2).min(RECOVERY_MAX),
            Ok(detail) => {
                let report = Report {
                    pool,
                    backend,
                    outcome: Ok(detail),
                    at: SystemTime::now(),
                    recovery: true,
                };
                let _ = reports.send(report).await;
                return;
            }
        }
    }
}

fn seed() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        let base = Duration::from_millis(1000);
        let mut r = 1u64;
        for _ in 0..1000 {
            r = crate::balance::mix(r);
            let d = jittered(base, r);
            assert!(
                d >= Duration::from_millis(900) && d <= Duration::from_millis(1100),
                "{d:?}"
            );
        }
    }
}
