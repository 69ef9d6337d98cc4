//! What the owner publishes for everyone who reads control state (the admin API, metrics,
//! the supervisor, tests): one immutable [`View`] per applied change, swapped in whole, so a
//! reader loads it once and sees one consistent state (the snapshot the data plane uses, the
//! configs, health, overrides, DNS answers and bound sockets of the same instant), never a
//! lock per field. The questions every reader asks (a backend's state, readiness) are
//! answered here, once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use super::registry::{AdminState, BackendKey, Override};

/// A wall-clock time as milliseconds since the Unix epoch (0 before it), as the admin API
/// and the binary upgrade's state write the view's times.
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
use crate::config::Config;
use crate::discovery::{self, NameState};
use crate::health::HealthState;
use crate::proxy::listener::BindKey;
use crate::reload::BoundMap;
use crate::state::{Backend, Snapshot};

/// DNS answers and counters, as of one view.
#[derive(Debug, Default)]
pub struct DnsView {
    pub states: HashMap<discovery::Key, NameState>,
    /// Why resolution cannot run at all, if it cannot.
    pub client_error: Option<String>,
    /// Resolution rounds by (pool, result).
    pub rounds: Vec<((String, &'static str), u64)>,
}

/// Config loads so far: start-up counts as the first successful one. Kept by the owner,
/// which applies every reload and hears of every refused one, so these change in the same
/// view as the generation they produce.
#[derive(Debug, Clone, Copy)]
pub struct Reloads {
    pub succeeded: u64,
    pub failed: u64,
    /// Whether the last reload (or, before any, start-up) was applied.
    pub last_successful: bool,
    /// When the config in force was loaded: start-up or the last successful reload.
    pub last_success_at: SystemTime,
}

impl Reloads {
    pub(super) fn started(at: SystemTime) -> Reloads {
        Reloads {
            succeeded: 0,
            failed: 0,
            last_successful: true,
            last_success_at: at,
        }
    }

    pub(super) fn record(&mut self, applied: bool, at: SystemTime) {
        self.last_successful = applied;
        if applied {
            self.succeeded += 1;
            self.last_success_at = at;
        } else {
            self.failed += 1;
        }
    }
}

/// The control state of one instant.
#[derive(Debug)]
pub struct View {
    /// 1 at start, +1 per successful reload.
    pub generation: u64,
    /// The config in force as written (`host:`/`srv:` entries unresolved).
    pub written: Arc<Config>,
    /// `written` plus the addresses DNS resolved: what snapshots are built from.
    pub effective: Arc<Config>,
    /// The snapshot the data plane uses.
    pub snapshot: Arc<Snapshot>,
    /// Health of every backend that has been checked or is pending; absent = up.
    pub health: Arc<HashMap<BackendKey, HealthState>>,
    pub overrides: Arc<HashMap<BackendKey, Override>>,
    pub dns: Arc<DnsView>,
    /// (listener, configured address) → the address bound.
    pub bound: Arc<BoundMap>,
    pub workers: usize,
    pub reloads: Reloads,
    pub pid: u32,
    pub started_at: SystemTime,
}

/// One backend as an operator sees it.
#[derive(Debug, Clone)]
pub struct BackendView<'v> {
    pub backend: &'v Arc<Backend>,
    /// `up`, `down`, `pending`, `draining` or `disabled`: what the operator did first, then
    /// what the checks say.
    pub state: &'static str,
    /// `up`, `down` or `pending`: what the checks say, whatever the operator did. `pending`
    /// until a check of a checked pool has answered (a backend there serves meanwhile).
    pub health: &'static str,
    /// `health` is `up`: what `tollgate_backend_up` and readiness count.
    pub healthy: bool,
    pub last_check: Option<&'v crate::health::CheckOutcome>,
    pub configured_weight: u32,
    pub weight_override: Option<u32>,
    pub admin: AdminState,
    pub tier: u32,
    pub from_dns: Option<&'v str>,
}

impl View {
    /// Health of one backend (up and unchecked when nothing is recorded).
    pub fn health_of(&self, pool: &str, address: SocketAddr) -> HealthState {
        self.health
            .get(&(pool.to_owned(), address))
            .cloned()
            .unwrap_or_default()
    }

    /// Every backend of `pool` as the snapshot has it, in config order.
    pub fn backends(&self, pool: &str) -> Vec<BackendView<'_>> {
        let Some(p) = self.snapshot.pool(pool) else {
            return Vec::new();
        };
        let config = self.effective.pool(pool);
        let checked_pool = config.is_some_and(|c| c.health_check.is_some());
        let entries = config.map(|p| p.backends.as_slice());
        p.backends
            .iter()
            .map(|b| {
                let key = (pool.to_owned(), b.address);
                let entry = entries.and_then(|e| e.iter().find(|c| c.address == b.address));
                let ov = self.overrides.get(&key).copied().unwrap_or_default();
                let health = self.health.get(&key);
                // What happens to new connections: a backend of a checked pool serves from
                // the start, before its first check answers...
                let serving = health.map_or("up", HealthState::label);
                // ...but the checks only say it is up once one has answered.
                let (health_label, healthy) = match health {
                    Some(h) if h.checked() => (if h.up { "up" } else { "down" }, h.up),
                    Some(h) if !h.up => ("pending", false),
                    _ if checked_pool => ("pending", false),
                    _ => ("up", true),
                };
                BackendView {
                    backend: b,
                    state: match ov.state {
                        AdminState::Active => serving,
                        other => other.label(),
                    },
                    health: health_label,
                    healthy,
                    last_check: health.and_then(|h| h.last.as_ref()),
                    configured_weight: entry.map_or(0, |c| c.weight),
                    weight_override: ov.weight,
                    admin: ov.state,
                    tier: entry.map_or(0, |c| c.tier),
                    from_dns: entry.and_then(|c| c.origin.as_deref()),
                }
            })
            .collect()
    }

    /// The real addresses of a listener's sockets, in configured order.
    pub fn addrs(&self, listener: &str) -> Vec<SocketAddr> {
        self.written
            .listeners
            .iter()
            .filter(|l| l.name == listener)
            .flat_map(|l| {
                l.bind.iter().filter_map(|b| {
                    self.bound
                        .get(&BindKey::new(&l.name, l.protocol.transport(), *b))
                        .copied()
                })
            })
            .collect()
    }

    /// Why the instance should not take traffic now; empty when ready. Ready means: every
    /// listener is bound, and every pool has a backend that its checks call up and that the
    /// operator lets take new connections (not drained, not disabled, weight above 0). That
    /// `when_all_down: use_all` would still pick a dead backend does not make it ready.
    pub fn unready_reasons(&self, draining: bool) -> Vec<String> {
        let mut reasons = Vec::new();
        if draining {
            reasons.push("draining: shutting down".to_owned());
        }
        for l in &self.written.listeners {
            for addr in &l.bind {
                if !self
                    .bound
                    .contains_key(&BindKey::new(&l.name, l.protocol.transport(), *addr))
                {
                    reasons.push(format!("listener {}: {addr} is not bound", l.name));
                }
            }
        }
        for p in &self.effective.pools {
            let backends = self.backends(&p.name);
            let serving = |b: &BackendView<'_>| {
                b.healthy
                    && b.admin == AdminState::Active
                    && b.weight_override.unwrap_or(b.configured_weight) > 0
            };
            if backends.iter().any(serving) {
                continue;
            }
            if backends.iter().any(|b| b.healthy) {
                reasons.push(format!(
                    "pool {}: every backend that is up is drained, disabled or weighted 0",
                    p.name
                ));
                continue;
            }
            if backends.iter().any(|b| b.health == "pending") {
                reasons.push(format!(
                    "pool {}: no backend is up yet: waiting for the first health check",
                    p.name
                ));
                continue;
            }
            reasons.push(format!("pool {}: no backend is up", p.name));
            self.dns_reasons(p, &mut reasons);
        }
        reasons
    }

    /// Why a pool with no backend up has none from DNS, when DNS is the reason.
    fn dns_reasons(&self, p: &crate::config::Pool, reasons: &mut Vec<String>) {
        for n in &p.named {
            let state = self.dns.states.get(&(p.name.clone(), n.lookup.clone()));
            let why = match (state, &self.dns.client_error) {
                (_, Some(e)) => format!("DNS cannot run: {e}"),
                (Some(s), _) if s.has_answer() && s.resolved.is_empty() => {
                    format!("DNS answered no address ({})", s.last_result)
                }
                (Some(s), _) if s.has_answer() => continue,
                (Some(s), _) => format!(
                    "no DNS answer yet (last: {})",
                    s.last_error.as_deref().unwrap_or(s.last_result)
                ),
                (None, None) => "no DNS answer yet".to_owned(),
            };
            reasons.push(format!("pool {}: {}: {why}", p.name, n.lookup));
        }
    }
}
