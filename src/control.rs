//! The control plane's handle on a running tollgate: the current config, the live registry,
//! the data plane it publishes to, and the operations the admin API and signals perform —
//! backend overrides here, reload in `reload.rs`. Everything here runs off the data path.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use tokio::sync::mpsc;

use crate::admission::Cidr;
use crate::config::{Config, Lookup};
use crate::discovery::{Discovery, Key, Round, Timing};
use crate::health::checker::Checks;
use crate::live::{AdminState, Live};
use crate::proxy::DataPlane;
use crate::proxy::listener::BoundSocket;

/// (listener name, bind address as configured) → the address actually bound.
pub type BoundMap = HashMap<(String, SocketAddr), SocketAddr>;

pub struct Control {
    pub plane: Arc<DataPlane>,
    pub live: Live,
    /// The config in force as written (`host:`/`srv:` entries unresolved).
    written: Mutex<Arc<Config>>,
    /// The effective config: `written` plus the addresses DNS resolved, which everything
    /// that walks backends (snapshots, health checks, admin actions) reads.
    config: Mutex<Arc<Config>>,
    /// DNS-named backends: their answers and resolver tasks.
    pub discovery: Discovery,
    /// Where `reload` reads from; `None` for a config built in memory (tests, the demo).
    pub config_path: Option<PathBuf>,
    generation: AtomicU64,
    pub reloads_succeeded: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub draining: AtomicBool,
    /// One channel per worker, for listening sockets bound after start.
    pub(crate) workers: Vec<mpsc::UnboundedSender<BoundSocket>>,
    pub(crate) bound: Mutex<BoundMap>,
    /// Serialises reloads and overrides, so each builds on the last.
    pub(crate) changes: Mutex<()>,
    /// Health-check tasks, on the control-plane runtime.
    pub(crate) checks: Checks,
    pub(crate) runtime: OnceLock<tokio::runtime::Handle>,
    pub(crate) this: OnceLock<Weak<Control>>,
    /// When the slow-start ticker may stop; `None` when none runs.
    pub(crate) ramp_end: Mutex<Option<std::time::Instant>>,
}

/// What an operator can do to one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendAction {
    Drain,
    Disable,
    Enable,
    Weight(u32),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActionError {
    #[error("no pool named `{0}`")]
    NoPool(String),
    #[error("pool `{0}` has no backend {1}")]
    NoBackend(String, SocketAddr),
    #[error("no listener named `{0}`")]
    NoListener(String),
}

/// Why a source would be admitted or refused by a listener right now.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub explanation: crate::admission::Explanation,
    /// Connections open on the listener now, and its cap.
    pub listener_active: u64,
    pub listener_max: usize,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here replaces whole values, so a poisoned lock is consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Control {
    pub(crate) fn new(
        plane: Arc<DataPlane>,
        live: Live,
        config: Arc<Config>,
        config_path: Option<PathBuf>,
        workers: Vec<mpsc::UnboundedSender<BoundSocket>>,
        bound: BoundMap,
    ) -> Control {
        Control {
            plane,
            live,
            written: Mutex::new(config.clone()),
            config: Mutex::new(config),
            discovery: Discovery::default(),
            config_path,
            generation: AtomicU64::new(1),
            reloads_succeeded: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            workers,
            bound: Mutex::new(bound),
            changes: Mutex::new(()),
            checks: Checks::default(),
            runtime: OnceLock::new(),
            this: OnceLock::new(),
            ramp_end: Mutex::new(None),
        }
    }

    /// Starts the control plane's background work (health checks) on `rt`; called once, from
    /// the control-plane thread, with the `Arc` this control lives in.
    pub(crate) fn attach(self: &Arc<Self>, rt: tokio::runtime::Handle) {
        let _ = self.this.set(Arc::downgrade(self));
        let _ = self.runtime.set(rt);
        self.sync_checks(&[]);
        self.sync_discovery();
    }

    /// Makes the DNS tasks match the written config.
    pub(crate) fn sync_discovery(&self) {
        let _serial = lock(&self.changes);
        self.sync_discovery_serialised();
    }

    /// [`Control::sync_discovery`] for a caller that holds `changes` (so that the tasks
    /// always end up matching the newest written config).
    pub(crate) fn sync_discovery_serialised(&self) {
        if let (Some(rt), Some(this)) = (self.runtime.get(), self.this.get()) {
            self.discovery.sync(&self.written(), this.clone(), rt);
        }
    }

    /// Applies one DNS round of `key` (from its task); returns the delay until the next, or
    /// `None` when the entry left the config. A changed answer publishes a snapshot; new
    /// addresses of a checked pool wait for their first passing check.
    pub(crate) fn dns_round(&self, key: &Key, round: Round) -> Option<std::time::Duration> {
        let serial = lock(&self.changes);
        let written = self.written();
        let entry = written
            .pool(&key.0)?
            .named
            .iter()
            .find(|n| n.lookup == key.1)?;
        let port = match entry.lookup {
            Lookup::Host { port, .. } => port,
            Lookup::Srv { .. } => 0,
        };
        let r = &written.resolver;
        let timing = Timing {
            min_ttl: r.min_ttl,
            max_ttl: r.max_ttl,
            negative_hold: r.negative_hold,
        };
        let applied = self.discovery.apply(key, round, port, timing)?;
        let (pool, name) = (&key.0, key.1.name());
        if applied.result != applied.previous {
            match &applied.error {
                Some(error) if applied.previous.is_empty() || applied.previous == "success" => {
                    tracing::warn!(pool, name, result = applied.result, %error, retry_in = ?applied.delay, "DNS lookup failing; the last answer stays in force")
                }
                _ => tracing::info!(
                    pool,
                    name,
                    result = applied.result,
                    "DNS lookup result changed"
                ),
            }
        }
        if applied.changed {
            tracing::info!(pool, name, addresses = ?applied.addresses, "DNS answer in force changed");
            let added = self.install(self.discovery.expand(&written), self.generation());
            drop(serial);
            // Checks start for the new addresses and stop for the removed ones.
            self.sync_checks(&added);
        }
        Some(applied.delay)
    }

    /// Publishes the snapshot of `next` (an effective config) and makes it the config in
    /// force; returns the backends it adds. Added backends of a pool with an active check
    /// are marked pending before the snapshot is published, so none takes a connection
    /// before its first passing check. The caller holds `changes`.
    pub(crate) fn install(&self, next: Config, generation: u64) -> Vec<(String, SocketAddr)> {
        let current = self.config();
        let known: std::collections::HashSet<(&str, SocketAddr)> = current
            .pools
            .iter()
            .flat_map(|p| p.backends.iter().map(move |b| (p.name.as_str(), b.address)))
            .collect();
        let added: Vec<(String, SocketAddr)> = next
            .pools
            .iter()
            .flat_map(|p| p.backends.iter().map(move |b| (p.name.clone(), b.address)))
            .filter(|(pool, addr)| !known.contains(&(pool.as_str(), *addr)))
            .collect();
        let checked: Vec<(String, SocketAddr)> = added
            .iter()
            .filter(|(pool, _)| next.pool(pool).is_some_and(|p| p.health_check.is_some()))
            .cloned()
            .collect();
        self.live.expect_pending(&checked);
        self.plane
            .snapshot
            .publish(self.live.build(&next, generation));
        self.set_config(Arc::new(next));
        added
    }

    /// The effective config in force: the written one plus the addresses DNS resolved.
    pub fn config(&self) -> Arc<Config> {
        lock(&self.config).clone()
    }

    /// The config in force as written (what `GET /api/v1/config` shows).
    pub fn written(&self) -> Arc<Config> {
        lock(&self.written).clone()
    }

    fn set_config(&self, config: Arc<Config>) {
        *lock(&self.config) = config;
    }

    pub(crate) fn set_written(&self, config: Arc<Config>) {
        *lock(&self.written) = config;
    }

    /// Data-plane worker threads running.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// 1 at start, +1 per successful reload.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn bump_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The real addresses of a listener's sockets, in configured order.
    pub fn addrs(&self, listener: &str) -> Vec<SocketAddr> {
        let config = self.config();
        let bound = lock(&self.bound);
        config
            .listeners
            .iter()
            .filter(|l| l.name == listener)
            .flat_map(|l| {
                l.bind
                    .iter()
                    .filter_map(|b| bound.get(&(l.name.clone(), *b)).copied())
            })
            .collect()
    }

    pub(crate) fn bound(&self) -> MutexGuard<'_, BoundMap> {
        lock(&self.bound)
    }

    /// Adds `block` to (or removes it from) `listener`'s runtime deny list and publishes the
    /// result; true when the list changed. The list lasts while the listener exists.
    pub fn deny(&self, listener: &str, block: Cidr, add: bool) -> Result<bool, ActionError> {
        let _serial = lock(&self.changes);
        let config = self.config();
        if !config.listeners.iter().any(|l| l.name == listener) {
            return Err(ActionError::NoListener(listener.to_owned()));
        }
        let changed = self.live.set_deny(listener, block, add);
        if changed {
            self.plane
                .snapshot
                .publish(self.live.build(&config, self.generation()));
            tracing::info!(listener, %block, add, "runtime deny list changed");
        }
        Ok(changed)
    }

    /// What `listener` would do with a new connection from `source` now.
    pub fn explain(&self, listener: &str, source: IpAddr) -> Result<Verdict, ActionError> {
        let snapshot = self.plane.snapshot.load_full();
        let spec = snapshot
            .listener(listener)
            .ok_or_else(|| ActionError::NoListener(listener.to_owned()))?;
        Ok(Verdict {
            explanation: spec.admission.explain(source, std::time::Instant::now()),
            listener_active: spec.live.active.load(Ordering::Relaxed),
            listener_max: spec.live.max_connections(),
        })
    }

    /// The runtime deny list of a listener.
    pub fn deny_list(&self, listener: &str) -> Vec<Cidr> {
        let snapshot = self.plane.snapshot.load_full();
        snapshot
            .listener(listener)
            .map(|l| l.admission.runtime_deny.blocks().to_vec())
            .unwrap_or_default()
    }

    /// Drains, disables, enables or re-weights one backend and publishes the result. The
    /// override lasts while the backend exists, across reloads.
    pub fn backend_action(
        &self,
        pool: &str,
        address: SocketAddr,
        action: BackendAction,
    ) -> Result<(), ActionError> {
        let _serial = lock(&self.changes);
        let config = self.config();
        let p = config
            .pool(pool)
            .ok_or_else(|| ActionError::NoPool(pool.to_owned()))?;
        if !p.backends.iter().any(|b| b.address == address) {
            return Err(ActionError::NoBackend(pool.to_owned(), address));
        }
        self.live.set_override(pool, address, |o| match action {
            BackendAction::Drain => o.state = AdminState::Draining,
            BackendAction::Disable => o.state = AdminState::Disabled,
            BackendAction::Enable => o.state = AdminState::Active,
            BackendAction::Weight(w) => o.weight = Some(w),
        });
        self.plane
            .snapshot
            .publish(self.live.build(&config, self.generation()));
        tracing::info!(pool, backend = %address, ?action, "backend override applied");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::ForwardMode;
    use crate::state::Published;
    use crate::sys::PipePool;

    fn pool(backends: &[&str]) -> Config {
        let mut yaml = "listeners:\n  web: { bind: \"127.0.0.1:0\", pool: back }\npools:\n  back:\n    health_check: { type: tcp, interval: 1s }\n    backends:\n".to_owned();
        for b in backends {
            yaml.push_str(&format!("      - address: \"{b}\"\n"));
        }
        crate::config::load_str(&yaml, "t").unwrap()
    }

    /// No check runs here (the control is never attached), so only `install` itself can
    /// keep the new backend out of the snapshot that first contains it.
    #[test]
    fn a_backend_added_to_a_checked_pool_is_published_pending() {
        let one = pool(&["127.0.0.1:9001"]);
        let live = Live::default();
        let first = Published::new(live.build(&one, 1));
        let failing = tokio::sync::mpsc::channel(1).0;
        let plane = DataPlane::new(
            first,
            PipePool::new(2, 2, 65536),
            ForwardMode::Copy,
            failing,
        );
        let control = Control::new(
            Arc::new(plane),
            live,
            Arc::new(one),
            None,
            Vec::new(),
            BoundMap::new(),
        );
        let added = control.install(pool(&["127.0.0.1:9001", "127.0.0.1:9002"]), 2);
        let new: SocketAddr = "127.0.0.1:9002".parse().unwrap();
        assert_eq!(added, vec![("back".to_owned(), new)]);
        let snapshot = control.plane.snapshot.load_full();
        let weights: Vec<(SocketAddr, u32)> = snapshot.pools["back"]
            .backends
            .iter()
            .map(|b| (b.address, b.weight))
            .collect();
        assert_eq!(
            weights[1],
            (new, 0),
            "no connection before its first passing check"
        );
        assert!(
            weights[0].1 > 0,
            "the backend already serving keeps serving"
        );
        assert!(!control.live.health_of("back", new).up);
    }
}
