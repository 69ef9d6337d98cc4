//! The control plane's registry of live state kept by identity across snapshots — backend
//! counters by (pool, address), pool and listener facts by name — and the runtime overrides
//! an operator sets through the admin API (drain, disable, weight). [`Live::build`] turns a
//! validated config plus these into the next [`Snapshot`], and forgets identities the config
//! no longer has, so their metric series disappear and their overrides do not linger.
//!
//! Only the control plane touches this (under a mutex, never on the data path).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::admission::{Cidr, PerSource, Policy, PrefixSet, Rate, Shape, SourceTable};
use std::time::Instant;

use crate::config::{Balance, Config};
use crate::health::{CheckOutcome, HealthState};
use crate::policy::{Candidate, effective_weights};
use crate::state::{
    Algorithm, Backend, BackendStats, ListenerLive, ListenerSpec, Pool, PoolLive, Snapshot,
};

/// What an operator has said about one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdminState {
    #[default]
    Active,
    /// No new connections; open ones finish.
    Draining,
    /// No new connections until enabled again.
    Disabled,
}

impl AdminState {
    pub fn label(self) -> &'static str {
        match self {
            AdminState::Active => "up",
            AdminState::Draining => "draining",
            AdminState::Disabled => "disabled",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Override {
    pub state: AdminState,
    /// Replaces the configured weight while set.
    pub weight: Option<u32>,
}

type BackendKey = (String, SocketAddr);

#[derive(Debug, Default)]
struct Inner {
    backends: HashMap<BackendKey, Arc<BackendStats>>,
    pools: HashMap<String, Arc<PoolLive>>,
    listeners: HashMap<String, Arc<ListenerLive>>,
    overrides: HashMap<BackendKey, Override>,
    /// Runtime deny lists by listener name.
    deny: HashMap<String, Vec<Cidr>>,
    /// Per-source limiter state by listener name, with the rate last put in force; kept
    /// (or carried into a reshaped table) across reloads while the listener has limits.
    tables: HashMap<String, (Arc<SourceTable>, Option<Rate>)>,
    /// Health by backend; absent means up (no check, or no result yet).
    health: HashMap<BackendKey, HealthState>,
}

#[derive(Debug, Default)]
pub struct Live {
    inner: Mutex<Inner>,
}

impl Live {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the maps inconsistent (each update is
        // one insert or remove), so a poisoned lock is still safe to use.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The override of a backend, or the default when none is set.
    pub fn override_of(&self, pool: &str, address: SocketAddr) -> Override {
        self.lock()
            .overrides
            .get(&(pool.to_owned(), address))
            .copied()
            .unwrap_or_default()
    }

    /// Changes a backend's override; the caller republishes the snapshot.
    pub fn set_override(
        &self,
        pool: &str,
        address: SocketAddr,
        change: impl FnOnce(&mut Override),
    ) {
        let mut inner = self.lock();
        let entry = inner
            .overrides
            .entry((pool.to_owned(), address))
            .or_default();
        change(entry);
        if *entry == Override::default() {
            inner.overrides.remove(&(pool.to_owned(), address));
        }
    }

    /// Records a health-check result; `Some(up)` when the backend's state changed.
    pub fn record_health(
        &self,
        pool: &str,
        address: SocketAddr,
        outcome: CheckOutcome,
        rise: u32,
        fall: u32,
    ) -> Option<bool> {
        let mut inner = self.lock();
        if !inner.backends.contains_key(&(pool.to_owned(), address)) {
            return None; // removed by a reload while the probe ran
        }
        let h = inner.health.entry((pool.to_owned(), address)).or_default();
        let changed = h.record(outcome, rise, fall);
        if changed == Some(true) {
            h.up_since = Some(Instant::now());
        }
        changed
    }

    /// New checked backends take no traffic until their first result; true if any changed.
    pub fn mark_pending(&self, keys: &[(String, SocketAddr)]) -> bool {
        let mut inner = self.lock();
        let mut changed = false;
        for k in keys {
            if inner.backends.contains_key(k) && !inner.health.contains_key(k) {
                inner.health.insert(k.clone(), HealthState::pending());
                changed = true;
            }
        }
        changed
    }

    /// Backends about to be published for the first time in a checked pool: they take no
    /// traffic until their first result. Called before the snapshot that adds them.
    pub fn expect_pending(&self, keys: &[(String, SocketAddr)]) {
        let mut inner = self.lock();
        for k in keys {
            inner
                .health
                .entry(k.clone())
                .or_insert_with(HealthState::pending);
        }
    }

    /// Marks a backend down without a probe (passive checks); true if it was up.
    pub fn force_down(&self, pool: &str, address: SocketAddr, detail: String) -> bool {
        let mut inner = self.lock();
        if !inner.backends.contains_key(&(pool.to_owned(), address)) {
            return false;
        }
        let h = inner.health.entry((pool.to_owned(), address)).or_default();
        h.force_down(detail, std::time::SystemTime::now())
    }

    pub fn health_of(&self, pool: &str, address: SocketAddr) -> HealthState {
        self.lock()
            .health
            .get(&(pool.to_owned(), address))
            .cloned()
            .unwrap_or_default()
    }

    /// Forgets the health of backends that no longer have a check; true if one was down.
    pub fn reset_health(&self, keys: &[(String, SocketAddr)]) -> bool {
        let mut inner = self.lock();
        // Every key is removed: no short-circuit.
        let mut was_down = false;
        for k in keys {
            was_down |= inner.health.remove(k).is_some_and(|h| !h.up);
        }
        was_down
    }

    /// Adds (or removes) `block` to `listener`'s runtime deny list; true when it changed.
    pub fn set_deny(&self, listener: &str, block: Cidr, add: bool) -> bool {
        let mut inner = self.lock();
        let list = inner.deny.entry(listener.to_owned()).or_default();
        let had = list.contains(&block);
        if add && !had {
            list.push(block);
        } else if !add && had {
            list.retain(|b| *b != block);
        }
        if list.is_empty() {
            inner.deny.remove(listener);
        }
        add != had
    }

    /// Builds the snapshot for `config`, reusing live state by identity and applying the
    /// overrides; identities `config` no longer has are forgotten.
    pub fn build(&self, config: &Config, generation: u64) -> Snapshot {
        let mut inner = self.lock();
        let mut pools: HashMap<Arc<str>, Arc<Pool>> = HashMap::new();
        let mut keep_backends = HashMap::new();
        for p in &config.pools {
            let mut candidates = Vec::with_capacity(p.backends.len());
            let mut stats_of = Vec::with_capacity(p.backends.len());
            for b in &p.backends {
                let key = (p.name.clone(), b.address);
                let stats = inner.backends.get(&key).cloned().unwrap_or_default();
                let ov = inner.overrides.get(&key).copied().unwrap_or_default();
                let health = inner.health.get(&key);
                candidates.push(Candidate {
                    weight: ov.weight.unwrap_or(b.weight),
                    admitted: ov.state == AdminState::Active,
                    healthy: health.is_none_or(|h| h.up),
                    tier: b.tier,
                    up_since: health.and_then(|h| h.up_since),
                });
                stats_of.push(stats.clone());
                keep_backends.insert(key, stats);
            }
            let weights = effective_weights(
                &candidates,
                p.slow_start,
                p.use_all_when_down,
                Instant::now(),
            );
            let backends = p
                .backends
                .iter()
                .zip(weights)
                .zip(stats_of)
                .map(|((b, weight), stats)| {
                    Arc::new(Backend {
                        address: b.address,
                        weight,
                        stats,
                    })
                })
                .collect();
            let live = inner.pools.get(&p.name).cloned().unwrap_or_default();
            let algorithm = match p.balance {
                Balance::RoundRobin => Algorithm::RoundRobin,
                Balance::LeastConnections => Algorithm::LeastConnections,
                Balance::RandomTwo => Algorithm::RandomTwo,
                Balance::Maglev { with_port } => Algorithm::Maglev { with_port },
            };
            let mut pool = Pool::new(&p.name, backends, p.connect_retries, live, algorithm);
            pool.passive_failures = p.passive_failures;
            pools.insert(p.name.as_str().into(), Arc::new(pool));
        }
        let mut listeners = HashMap::new();
        let mut keep_listeners = HashMap::new();
        for l in &config.listeners {
            let Some(pool) = pools.get(l.pool.as_str()).cloned() else {
                continue;
            };
            let live = match inner.listeners.get(&l.name) {
                Some(live) => {
                    live.set_max_connections(l.max_connections);
                    live.clone()
                }
                None => Arc::new(ListenerLive::new(l.max_connections)),
            };
            keep_listeners.insert(l.name.clone(), live.clone());
            let admission = policy(&mut inner, l);
            let spec = ListenerSpec {
                name: l.name.as_str().into(),
                bind: l.bind.clone(),
                pool,
                connect_timeout: l.connect_timeout,
                idle_timeout: l.idle_timeout,
                live,
                admission,
            };
            listeners.insert(spec.name.clone(), Arc::new(spec));
        }
        inner.overrides.retain(|k, _| keep_backends.contains_key(k));
        inner.health.retain(|k, _| keep_backends.contains_key(k));
        inner.backends = keep_backends;
        inner.pools = pools
            .iter()
            .map(|(n, p)| (n.to_string(), p.live.clone()))
            .collect();
        inner
            .deny
            .retain(|name, _| keep_listeners.contains_key(name));
        inner.tables.retain(|name, _| {
            config
                .listeners
                .iter()
                .any(|l| l.name == *name && l.per_source.is_some())
        });
        inner.listeners = keep_listeners;
        Snapshot {
            generation,
            listeners,
            pools,
        }
    }
}

/// A listener's admission policy: its ACLs, runtime deny list and per-source limits. The
/// limiter's state carries over: a new rate caps what sources owe, and a new grouping or
/// table size moves the state into a new table (see `admission/reshape.rs`).
fn policy(inner: &mut Inner, l: &crate::config::Listener) -> Policy {
    let per_source = l.per_source.as_ref().map(|ps| {
        let shape = Shape {
            ipv4_prefix: ps.ipv4_prefix,
            ipv6_prefix: ps.ipv6_prefix,
            max_tracked: ps.max_tracked_sources,
        };
        let rate = ps
            .connection_rate
            .map(|(n, period)| Rate::new(n, period, ps.burst));
        let now = Instant::now();
        let table = match inner.tables.get(&l.name) {
            Some((t, before)) if t.shape() == shape => {
                if *before != rate {
                    t.set_rate(now, rate);
                }
                t.clone()
            }
            Some((t, before)) => {
                let (next, carried) = t.reshape(shape, now);
                if *before != rate {
                    next.set_rate(now, rate);
                }
                tracing::info!(
                    listener = %l.name,
                    kept = carried.kept,
                    split = carried.split,
                    no_room = carried.no_room,
                    took = ?carried.took,
                    longest_hold = ?carried.longest_hold,
                    "per-source limiter moved to a new table (prefix or max_tracked_sources changed)"
                );
                next
            }
            None => Arc::new(SourceTable::new(shape, rate)),
        };
        inner.tables.insert(l.name.clone(), (table.clone(), rate));
        PerSource {
            rate,
            max_connections: ps.max_connections,
            exempt: PrefixSet::new(ps.exempt.iter().copied()),
            table,
        }
    });
    Policy {
        runtime_deny: PrefixSet::new(inner.deny.get(&l.name).into_iter().flatten().copied()),
        deny: PrefixSet::new(l.access.deny.iter().copied()),
        allow: PrefixSet::new(l.access.allow.iter().copied()),
        per_source,
    }
}
