//! The facts the owner keeps by identity across snapshots, config generations and DNS
//! changes: each backend's live counters, health and operator override by (pool, address),
//! each pool's and listener's live counters by name, and each listener's runtime deny list.
//! [`Registry::retain`] forgets identities the config no longer has, so their metric series
//! disappear and their overrides do not linger.
//!
//! Only the owner holds this (no lock); the data plane sees it through snapshots built by
//! `build.rs`, the admin API through the published view.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::admission::Cidr;
use crate::config::Config;
use crate::health::{CheckOutcome, HealthState};
use crate::state::{BackendStats, ListenerLive, PoolLive};

/// A backend's identity: (pool name, address).
pub type BackendKey = (String, SocketAddr);

/// Blocks a listener's runtime deny list may hold. Each change rebuilds the sorted list the
/// accept path searches; past this, `access.deny` in the config is the place.
pub const MAX_RUNTIME_DENY: usize = 10_000;

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
            AdminState::Active => "active",
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

/// Why a runtime deny list change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenyListFull;

#[derive(Debug, Default)]
pub struct Registry {
    stats: HashMap<BackendKey, Arc<BackendStats>>,
    pools: HashMap<String, Arc<PoolLive>>,
    listeners: HashMap<String, Arc<ListenerLive>>,
    overrides: HashMap<BackendKey, Override>,
    /// Health by backend; absent means up (no check, or not checked yet and serving).
    health: HashMap<BackendKey, HealthState>,
    /// Runtime deny lists by listener name.
    deny: HashMap<String, Vec<Cidr>>,
    /// When each listener's deny list last changed (a counter), so a snapshot build can tell
    /// whether to rebuild a listener without comparing lists of thousands of blocks.
    deny_changed: HashMap<String, u64>,
    deny_changes: u64,
}

impl Registry {
    /// The live counters of a backend, made on first use.
    pub fn stats(&mut self, key: &BackendKey) -> Arc<BackendStats> {
        self.stats
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(BackendStats {
                    pool: key.0.as_str().into(),
                    ..BackendStats::default()
                })
            })
            .clone()
    }

    /// The live counters of a backend the config has now.
    pub fn stats_of(&self, key: &BackendKey) -> Option<&Arc<BackendStats>> {
        self.stats.get(key)
    }

    pub fn pool_live(&mut self, name: &str) -> Arc<PoolLive> {
        self.pools.entry(name.to_owned()).or_default().clone()
    }

    /// The live counters of a listener, made on first use with cap `max`; an existing
    /// one gets `max` as its new cap.
    pub fn listener_live(&mut self, name: &str, max: usize) -> Arc<ListenerLive> {
        match self.listeners.get(name) {
            Some(live) => {
                live.set_max_connections(max);
                live.clone()
            }
            None => {
                let live = Arc::new(ListenerLive::new(max));
                self.listeners.insert(name.to_owned(), live.clone());
                live
            }
        }
    }

    pub fn override_of(&self, key: &BackendKey) -> Override {
        self.overrides.get(key).copied().unwrap_or_default()
    }

    /// Every override in force.
    pub fn overrides(&self) -> &HashMap<BackendKey, Override> {
        &self.overrides
    }

    /// Changes a backend's override; the caller republishes.
    pub fn set_override(&mut self, key: &BackendKey, change: impl FnOnce(&mut Override)) {
        let entry = self.overrides.entry(key.clone()).or_default();
        change(entry);
        if *entry == Override::default() {
            self.overrides.remove(key);
        }
    }

    /// The health of a backend: absent (`None`) means up and never checked.
    pub fn health(&self, key: &BackendKey) -> Option<&HealthState> {
        self.health.get(key)
    }

    /// Every backend's health that differs from "up, never checked".
    pub fn healths(&self) -> &HashMap<BackendKey, HealthState> {
        &self.health
    }

    /// Records a probe result; `Some(up)` when the backend's health changed. A backend the
    /// config no longer has (removed while the probe ran) records nothing.
    pub fn record(
        &mut self,
        key: &BackendKey,
        outcome: CheckOutcome,
        rise: u32,
        fall: u32,
    ) -> Option<bool> {
        if !self.stats.contains_key(key) {
            return None;
        }
        let h = self.health.entry(key.clone()).or_default();
        let changed = h.record(outcome, rise, fall);
        if changed == Some(true) {
            h.up_since = Some(Instant::now());
        }
        changed
    }

    /// Backends about to be published for the first time in a checked pool: they take no
    /// traffic until their first result. Called before the snapshot that adds them.
    pub fn expect_pending(&mut self, keys: &[BackendKey]) {
        for k in keys {
            self.health
                .entry(k.clone())
                .or_insert_with(HealthState::pending);
        }
    }

    /// Marks a backend down without a probe (passive checks); true if it was up.
    pub fn force_down(&mut self, key: &BackendKey, detail: String) -> bool {
        if !self.stats.contains_key(key) {
            return false;
        }
        let h = self.health.entry(key.clone()).or_default();
        h.force_down(detail, SystemTime::now())
    }

    /// Forgets the health of backends that no longer have a check; true if one was not up.
    pub fn reset_health(&mut self, keys: &[BackendKey]) -> bool {
        let mut was_out = false;
        for k in keys {
            was_out |= self.health.remove(k).is_some_and(|h| !h.up);
        }
        was_out
    }

    /// Sets a backend's health outright (a binary upgrade carries it over).
    pub fn set_health(&mut self, key: &BackendKey, health: HealthState) {
        self.health.insert(key.clone(), health);
    }

    /// Every listener's runtime deny list.
    pub fn deny_lists(&self) -> impl Iterator<Item = (&str, &[Cidr])> {
        self.deny.iter().map(|(l, b)| (l.as_str(), b.as_slice()))
    }

    /// A number that changes whenever `listener`'s runtime deny list does.
    pub fn deny_version(&self, listener: &str) -> u64 {
        self.deny_changed.get(listener).copied().unwrap_or(0)
    }

    /// The runtime deny list of a listener.
    pub fn deny_list(&self, listener: &str) -> &[Cidr] {
        self.deny.get(listener).map_or(&[], Vec::as_slice)
    }

    /// Adds (or removes) `block` to `listener`'s runtime deny list; `Ok(true)` when it
    /// changed. Adding to a full list is refused.
    pub fn set_deny(
        &mut self,
        listener: &str,
        block: Cidr,
        add: bool,
    ) -> Result<bool, DenyListFull> {
        let list = self.deny.entry(listener.to_owned()).or_default();
        let had = list.contains(&block);
        if add && !had {
            if list.len() >= MAX_RUNTIME_DENY {
                return Err(DenyListFull);
            }
            list.push(block);
        } else if !add && had {
            list.retain(|b| *b != block);
        }
        if list.is_empty() {
            self.deny.remove(listener);
        }
        if add != had {
            self.deny_changes += 1;
            self.deny_changed
                .insert(listener.to_owned(), self.deny_changes);
        }
        Ok(add != had)
    }

    /// Forgets every identity `config` (an effective config) no longer has.
    pub fn retain(&mut self, config: &Config) {
        let keys: std::collections::HashSet<BackendKey> = config
            .pools
            .iter()
            .flat_map(|p| p.backends.iter().map(|b| (p.name.clone(), b.address)))
            .collect();
        self.stats.retain(|k, _| keys.contains(k));
        self.overrides.retain(|k, _| keys.contains(k));
        self.health.retain(|k, _| keys.contains(k));
        self.pools.retain(|n, _| config.pool(n).is_some());
        let has = |n: &str| config.listeners.iter().any(|l| l.name == n);
        self.listeners.retain(|n, _| has(n));
        self.deny.retain(|n, _| has(n));
        self.deny_changed.retain(|n, _| has(n));
    }
}
