//! One checker task per (pool, backend) with an active check, on the control-plane runtime.
//! Each waits its interval (±10% jitter, so checks of many backends spread out instead of
//! firing together), probes, and hands the result to the control plane, which applies the
//! rise/fall state machine and republishes on a change. `sync` starts tasks for new
//! backends, stops those whose backend or check went away, and restarts changed ones.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, Weak};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::probe::{self, Probe};
use crate::config::{CheckKind, Config, HealthCheck};
use crate::control::Control;

type Key = (String, SocketAddr);

/// The running checker tasks.
#[derive(Default)]
pub struct Checks {
    tasks: Mutex<HashMap<Key, (HealthCheck, JoinHandle<()>)>>,
}

impl Checks {
    /// Makes the running tasks match `config`'s checks. Returns the backends that had a
    /// check and no longer do (their health is reset by the caller), and those whose check
    /// just started (new backends, or a pool that gained a check).
    pub fn sync(
        &self,
        config: &Config,
        control: Weak<Control>,
        rt: &tokio::runtime::Handle,
    ) -> (Vec<Key>, Vec<Key>) {
        let mut wanted: HashMap<Key, HealthCheck> = HashMap::new();
        for p in &config.pools {
            if let Some(hc) = &p.health_check {
                for b in &p.backends {
                    wanted.insert((p.name.clone(), b.address), hc.clone());
                }
            }
        }
        let mut tasks = self
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut stopped = Vec::new();
        tasks.retain(|key, (check, handle)| {
            let keep = wanted.get(key) == Some(check);
            if !keep {
                handle.abort();
                if !wanted.contains_key(key) {
                    stopped.push(key.clone());
                }
            }
            keep
        });
        let mut started = Vec::new();
        for (key, check) in wanted {
            if tasks.contains_key(&key) {
                continue;
            }
            let handle = rt.spawn(run(control.clone(), key.clone(), check.clone()));
            tasks.insert(key.clone(), (check, handle));
            started.push(key);
        }
        (stopped, started)
    }

    /// Stops every task (shutdown).
    pub fn stop(&self) {
        let mut tasks = self
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (_, (_, handle)) in tasks.drain() {
            handle.abort();
        }
    }
}

fn probe_of(kind: &CheckKind) -> Probe {
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

async fn run(control: Weak<Control>, (pool, backend): Key, check: HealthCheck) {
    let probe = probe_of(&check.kind);
    let target = SocketAddr::new(backend.ip(), check.port.unwrap_or(backend.port()));
    let mut r = crate::balance::mix(
        crate::balance::maglev::fnv1a(format!("{pool}/{backend}").as_bytes()) ^ seed(),
    );
    // The first probe soon, at a random point, so state is known quickly and spread out.
    let first = check.interval.min(Duration::from_millis(200));
    let mut delay = Duration::from_millis(r % (first.as_millis() as u64 + 1));
    loop {
        tokio::time::sleep(delay).await;
        let result = probe::run(&probe, target, check.timeout).await;
        let Some(control) = control.upgrade() else {
            return;
        };
        control.record_check(&pool, backend, result, check.rise, check.fall);
        drop(control);
        r = crate::balance::mix(r);
        delay = jittered(check.interval, r);
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
