//! Backends named in DNS (`host:` and `srv:` entries), on the control plane only: one task
//! per (pool, entry) asks DNS (`resolve.rs`), the pure policy in `answer.rs` decides what
//! stays in force and when to ask again, and [`expand`] turns the written config plus the
//! answers in force into the effective config the control plane builds snapshots from.
//! Resolution never runs on the data path: a new connection uses the last published set.
//!
//! This module owns the answers, their schedule and the resolution counters. It never
//! publishes a snapshot itself: `Control::dns_round` does, under the same lock as reloads.

mod addresses;
pub mod answer;
#[cfg(test)]
mod answer_tests;
mod resolve;
#[cfg(test)]
mod srv_tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::config::{self, BACKUP_TIER, Backend, Config, Lookup};
use crate::control::Control;
pub use answer::{NameState, Round, Timing};
pub use resolve::Dns;

/// One entry: (pool name, what it looks up).
pub type Key = (String, Lookup);

/// What one round did.
#[derive(Debug)]
pub struct Applied {
    /// Until the next round.
    pub delay: Duration,
    /// The addresses in force changed.
    pub changed: bool,
    pub result: &'static str,
    /// The result of the round before (empty for the first).
    pub previous: &'static str,
    pub error: Option<String>,
    pub addresses: Vec<SocketAddr>,
}

#[derive(Default)]
struct Inner {
    states: HashMap<Key, NameState>,
    tasks: HashMap<Key, JoinHandle<()>>,
    /// The resolver settings the tasks run with, and the client built for them (or why
    /// none could be built).
    client: Option<(config::Resolver, Result<Dns, String>)>,
    /// Resolution rounds by (pool, result).
    rounds: HashMap<(String, &'static str), u64>,
    /// The next attempt to build a client that could not be built.
    retry: Option<JoinHandle<()>>,
}

/// How soon a resolver that could not be built (no readable nameserver) is tried again.
const RETRY_CLIENT: Duration = Duration::from_secs(5);

/// The DNS state of a running instance.
#[derive(Default)]
pub struct Discovery {
    inner: Mutex<Inner>,
}

impl Discovery {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Each critical section replaces whole values, so a poisoned lock is consistent.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes the tasks match `written`'s entries: new entries start (their first round at
    /// once), removed ones stop and are forgotten. Any change of the `resolver` section
    /// restarts every task (on a new client, each asking at once, so new TTL bounds apply
    /// now rather than after a sleep under the old ones); the answers in force are kept.
    pub fn sync(&self, written: &Config, control: Weak<Control>, rt: &tokio::runtime::Handle) {
        let wanted: Vec<Key> = written
            .pools
            .iter()
            .flat_map(|p| {
                p.named
                    .iter()
                    .map(move |n| (p.name.clone(), n.lookup.clone()))
            })
            .collect();
        let mut inner = self.lock();
        let want_client = written.resolver.clone();
        // A client that could not be built is tried again (resolv.conf may appear later).
        let same_client = inner
            .client
            .as_ref()
            .is_some_and(|(c, built)| *c == want_client && built.is_ok());
        if !same_client {
            for (_, t) in inner.tasks.drain() {
                t.abort();
            }
            inner.client = None;
        }
        if inner.client.is_none() && !wanted.is_empty() {
            let _runtime = rt.enter();
            let client = Dns::new(&want_client.nameservers, want_client.timeout);
            match &client {
                Ok(dns) => tracing::info!(servers = ?dns.servers, "DNS resolution started"),
                Err(e) => {
                    let again = inner.client.as_ref().is_some_and(|(_, b)| b.is_err());
                    if !again {
                        tracing::error!(error = %e, retry_in = ?RETRY_CLIENT, "DNS-named backends cannot be resolved");
                    }
                    let control = control.clone();
                    if let Some(t) = inner.retry.take() {
                        t.abort();
                    }
                    inner.retry = Some(rt.spawn(async move {
                        tokio::time::sleep(RETRY_CLIENT).await;
                        if let Some(c) = control.upgrade() {
                            c.sync_discovery();
                        }
                    }));
                }
            }
            inner.client = Some((want_client, client));
        }
        inner.tasks.retain(|k, t| {
            let keep = wanted.contains(k);
            if !keep {
                t.abort();
            }
            keep
        });
        inner.states.retain(|k, _| wanted.contains(k));
        let pools: Vec<&str> = written.pools.iter().map(|p| p.name.as_str()).collect();
        inner
            .rounds
            .retain(|(pool, _), _| pools.contains(&pool.as_str()));
        let Some((_, Ok(dns))) = &inner.client else {
            return;
        };
        let dns = dns.clone();
        for key in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = inner.tasks.entry(key) {
                let key = slot.key().clone();
                slot.insert(rt.spawn(run(control.clone(), dns.clone(), key)));
            }
        }
    }

    /// Stops every task (shutdown).
    pub fn stop(&self) {
        let mut inner = self.lock();
        for (_, t) in inner.tasks.drain() {
            t.abort();
        }
        if let Some(t) = inner.retry.take() {
            t.abort();
        }
    }

    /// Before a reload publishes `next`: a `host:` entry whose port changed starts from the
    /// addresses the same name has in force on the old port, so the reload opens no gap.
    pub fn adopt(&self, next: &Config) {
        let mut inner = self.lock();
        for p in &next.pools {
            for n in &p.named {
                let Lookup::Host { name, port } = &n.lookup else {
                    continue;
                };
                let key = (p.name.clone(), n.lookup.clone());
                if inner.states.contains_key(&key) {
                    continue;
                }
                let same_name = inner.states.iter().find(|((pool, l), _)| {
                    pool == &p.name
                        && matches!(l, Lookup::Host { name: other, .. } if other == name)
                });
                if let Some((_, state)) = same_name {
                    let moved = state.with_port(*port);
                    inner.states.insert(key, moved);
                }
            }
        }
    }

    /// Applies one round of `key`, or `None` when the entry is gone (its task then ends).
    pub fn apply(&self, key: &Key, round: Round, port: u16, t: Timing) -> Option<Applied> {
        let mut inner = self.lock();
        if !inner.tasks.contains_key(key) {
            return None;
        }
        let state = inner.states.entry(key.clone()).or_default();
        let before = (state.resolved.clone(), state.last_result);
        let delay = state.apply(round, port, Instant::now(), t);
        let applied = Applied {
            delay,
            changed: state.resolved != before.0,
            result: state.last_result,
            previous: before.1,
            error: state.last_error.clone(),
            addresses: state.resolved.iter().map(|r| r.address).collect(),
        };
        *inner
            .rounds
            .entry((key.0.clone(), applied.result))
            .or_default() += 1;
        Some(applied)
    }

    /// The SRV targets `key` holds, for its next round.
    fn srv_targets(&self, key: &Key) -> Vec<String> {
        self.lock()
            .states
            .get(key)
            .map(NameState::srv_targets)
            .unwrap_or_default()
    }

    /// Every entry's state, for status and readiness.
    pub fn states(&self) -> HashMap<Key, NameState> {
        self.lock().states.clone()
    }

    /// Why resolution cannot run at all, if it cannot.
    pub fn client_error(&self) -> Option<String> {
        match &self.lock().client {
            Some((_, Err(e))) => Some(e.clone()),
            _ => None,
        }
    }

    /// Resolution rounds by (pool, result), for metrics.
    pub fn rounds(&self) -> Vec<((String, &'static str), u64)> {
        let mut out: Vec<_> = self
            .lock()
            .rounds
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        out.sort();
        out
    }

    /// The effective config: `written` with every entry's addresses in force appended to
    /// its pool's backends.
    pub fn expand(&self, written: &Config) -> Config {
        expand(written, &self.lock().states)
    }
}

/// `written` with the resolved addresses added: in entry order, after the literal backends,
/// an address already present (listed, or resolved by an earlier entry) kept once, and an
/// address that is no single host or is one of tollgate's own listeners left out.
pub fn expand(written: &Config, states: &HashMap<Key, NameState>) -> Config {
    let mut out = written.clone();
    let binds: Vec<SocketAddr> = written
        .listeners
        .iter()
        .flat_map(|l| l.bind.iter().copied())
        .collect();
    for pool in &mut out.pools {
        let mut present: std::collections::HashSet<SocketAddr> =
            pool.backends.iter().map(|b| b.address).collect();
        for n in &pool.named {
            let Some(state) = states.get(&(pool.name.clone(), n.lookup.clone())) else {
                continue;
            };
            let origin: Arc<str> = n.lookup.name().into();
            for r in &state.resolved {
                if config::routable(r.address, &binds).is_err() || !present.insert(r.address) {
                    continue;
                }
                pool.backends.push(Backend {
                    address: r.address,
                    weight: r.weight.unwrap_or(n.weight),
                    tier: r
                        .rank
                        .saturating_add(if n.backup { BACKUP_TIER } else { 0 }),
                    origin: Some(origin.clone()),
                });
            }
        }
    }
    out
}

/// One entry's loop: a round, then sleep as the answer says. Ends when the entry leaves the
/// config (its task is aborted, or `apply` no longer knows it) or the control plane is gone.
async fn run(control: Weak<Control>, dns: Dns, key: Key) {
    loop {
        let round = match &key.1 {
            Lookup::Host { name, .. } => dns.host(name).await,
            Lookup::Srv { name } => {
                let held = match control.upgrade() {
                    Some(c) => c.discovery.srv_targets(&key),
                    None => return,
                };
                dns.srv(name, held).await
            }
        };
        let Some(c) = control.upgrade() else { return };
        let Some(delay) = c.dns_round(&key, round) else {
            return;
        };
        drop(c);
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::answer::{Reply, Timing};
    use super::*;

    fn state(ips: &[&str], port: u16) -> NameState {
        let mut s = NameState::default();
        let ips: Vec<IpAddr> = ips.iter().map(|i| i.parse().unwrap()).collect();
        let round = Round {
            srv: None,
            addresses: vec![("x".into(), Reply::Records(5, ips), Reply::NoData)],
        };
        let t = Timing {
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(9),
            negative_hold: Duration::ZERO,
        };
        s.apply(round, port, Instant::now(), t);
        s
    }

    #[test]
    fn expansion_appends_in_entry_order_once_each_and_never_loops_into_a_listener() {
        let yaml = "listeners:\n  web: { bind: \"127.0.0.1:8080\", pool: p }\npools:\n  p:\n    backends:\n      - address: \"10.0.0.1:80\"\n      - { host: a.test, port: 80, weight: 5 }\n      - { host: b.test, port: 80, backup: true }\n      - { host: c.test, port: 8080 }\n";
        let written = crate::config::load_str(yaml, "t").unwrap();
        let key = |name: &str, port| {
            let lookup = Lookup::Host {
                name: name.into(),
                port,
            };
            ("p".to_owned(), lookup)
        };
        let mut states = HashMap::new();
        states.insert(key("a.test", 80), state(&["10.0.0.1", "10.0.0.2"], 80));
        states.insert(
            key("b.test", 80),
            state(&["10.0.0.2", "10.0.0.3", "0.0.0.0"], 80),
        );
        states.insert(key("c.test", 8080), state(&["127.0.0.1", "10.0.0.4"], 8080));
        let effective = expand(&written, &states);
        let got: Vec<(String, u32, u32, Option<&str>)> = effective.pools[0]
            .backends
            .iter()
            .map(|b| (b.address.to_string(), b.weight, b.tier, b.origin.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("10.0.0.1:80".into(), 1, 0, None),
                ("10.0.0.2:80".into(), 5, 0, Some("a.test")),
                ("10.0.0.3:80".into(), 1, BACKUP_TIER, Some("b.test")),
                ("10.0.0.4:8080".into(), 1, 0, Some("c.test")),
            ],
            "literal first; duplicates, 0.0.0.0 and tollgate's own listener left out"
        );
        assert_eq!(effective.pools[0].named, written.pools[0].named);
        assert_eq!(
            expand(&written, &HashMap::new()),
            written,
            "no answer yet: as written"
        );
    }
}
