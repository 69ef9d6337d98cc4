//! Backends named in DNS (`host:` and `srv:` entries), on the control plane only: one task
//! per (pool, entry) asks DNS (`resolve.rs`) and sends the [`Answer`] to the owner, which
//! applies it to [`Names`] (the pure policy in `answer.rs` decides what stays in force and
//! when to ask again) and tells the task when to ask next. [`expand`] turns the written
//! config plus the answers in force into the effective config snapshots are built from.
//! Resolution never runs on the data path: a new connection uses the last published set.
//!
//! This module owns the answers, their schedule and the resolution counters; it never
//! imports the owner, never publishes a snapshot and never spawns a task itself.

mod addresses;
pub mod answer;
#[cfg(test)]
mod answer_tests;
mod carry;
mod resolve;
#[cfg(test)]
mod srv_tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::config::{self, BACKUP_TIER, Backend, Config, Lookup};
pub use answer::{NameState, Round, Timing};
pub use carry::CarriedName;
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

/// One round's answer, from an entry's task to the owner; the owner replies with when to
/// ask again (dropping `next` ends the task).
#[derive(Debug)]
pub struct Answer {
    pub key: Key,
    pub round: Round,
    pub next: oneshot::Sender<Next>,
}

/// The owner's reply to an [`Answer`].
#[derive(Debug)]
pub struct Next {
    pub delay: Duration,
    /// The SRV targets in force, which the next round asks about even if the SRV question
    /// fails.
    pub srv_targets: Vec<String>,
}

/// How soon a resolver that could not be built (no readable nameserver) is tried again.
pub const RETRY_CLIENT: Duration = Duration::from_secs(5);

/// What [`Names::client`] found.
#[derive(Debug)]
pub enum Client {
    /// The client the running tasks already use.
    Same,
    /// A new client: every task must restart on it.
    New(Box<Dns>),
    /// No client can be built; `first` is true when the last attempt had not failed too.
    Failed { error: String, first: bool },
}

/// The DNS state of a running instance, owned by the control plane's owner.
#[derive(Debug, Default)]
pub struct Names {
    states: HashMap<Key, NameState>,
    /// The resolver settings the tasks run with, and the client built for them (or why
    /// none could be built).
    client: Option<(config::Resolver, Result<Dns, String>)>,
    /// Resolution rounds by (pool, result).
    rounds: HashMap<(String, &'static str), u64>,
}

impl Names {
    /// The client for `resolver`: kept while the settings stay the same and it was built;
    /// otherwise built again (a resolv.conf may have appeared). Must run inside a tokio
    /// runtime. The answers in force are kept either way.
    pub fn client(&mut self, resolver: &config::Resolver) -> Client {
        if let Some((r, Ok(_))) = &self.client
            && r == resolver
        {
            return Client::Same;
        }
        let failed_before = matches!(&self.client, Some((_, Err(_))));
        let built = Dns::new(&resolver.nameservers, resolver.timeout);
        let out = match &built {
            Ok(dns) => Client::New(Box::new(dns.clone())),
            Err(e) => Client::Failed {
                error: e.clone(),
                first: !failed_before,
            },
        };
        self.client = Some((resolver.clone(), built));
        out
    }

    /// Forgets the entries (and the pools' counters) that `written` no longer has.
    pub fn retain(&mut self, written: &Config) {
        let wanted = entries(written);
        self.states.retain(|k, _| wanted.contains(k));
        let pools: Vec<&str> = written.pools.iter().map(|p| p.name.as_str()).collect();
        self.rounds
            .retain(|(pool, _), _| pools.contains(&pool.as_str()));
    }

    /// Before a reload publishes `next`: a `host:` entry whose port changed starts from the
    /// addresses the same name has in force on the old port, so the reload opens no gap.
    pub fn adopt(&mut self, next: &Config) {
        for p in &next.pools {
            for n in &p.named {
                let Lookup::Host { name, port } = &n.lookup else {
                    continue;
                };
                let key = (p.name.clone(), n.lookup.clone());
                if self.states.contains_key(&key) {
                    continue;
                }
                let same_name = self.states.iter().find(|((pool, l), _)| {
                    pool == &p.name
                        && matches!(l, Lookup::Host { name: other, .. } if other == name)
                });
                if let Some((_, state)) = same_name {
                    let moved = state.with_port(*port);
                    self.states.insert(key, moved);
                }
            }
        }
    }

    /// Applies one round of `key` at `now`.
    pub fn apply(&mut self, key: &Key, round: Round, port: u16, t: Timing) -> Applied {
        let state = self.states.entry(key.clone()).or_default();
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
        *self
            .rounds
            .entry((key.0.clone(), applied.result))
            .or_default() += 1;
        applied
    }

    /// Applies an entry task's answer as `written` (the config in force) says, replies to the
    /// task when to ask again, and logs what changed. `Some(changed)`: whether the addresses
    /// in force changed; `None` when `written` has no such entry (the reply is dropped, which
    /// ends the task).
    pub fn answer(&mut self, answer: Answer, written: &Config) -> Option<bool> {
        let Answer { key, round, next } = answer;
        let entry = written
            .pool(&key.0)
            .and_then(|p| p.named.iter().find(|n| n.lookup == key.1))?;
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
        let applied = self.apply(&key, round, port, timing);
        let _ = next.send(Next {
            delay: applied.delay,
            srv_targets: self.srv_targets(&key),
        });
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
        }
        Some(applied.changed)
    }

    /// The SRV targets `key` holds, for its next round.
    pub fn srv_targets(&self, key: &Key) -> Vec<String> {
        self.states
            .get(key)
            .map(NameState::srv_targets)
            .unwrap_or_default()
    }

    /// Every entry's state, for status and readiness.
    pub fn states(&self) -> &HashMap<Key, NameState> {
        &self.states
    }

    /// Why resolution cannot run at all, if it cannot.
    pub fn client_error(&self) -> Option<String> {
        match &self.client {
            Some((_, Err(e))) => Some(e.clone()),
            _ => None,
        }
    }

    /// Resolution rounds by (pool, result), for metrics.
    pub fn rounds(&self) -> Vec<((String, &'static str), u64)> {
        let mut out: Vec<_> = self.rounds.iter().map(|(k, v)| (k.clone(), *v)).collect();
        out.sort();
        out
    }

    /// The effective config: `written` with every entry's addresses in force appended to
    /// its pool's backends.
    pub fn expand(&self, written: &Config) -> Config {
        expand(written, &self.states)
    }
}

/// Every (pool, entry) of `written`, in order.
pub fn entries(written: &Config) -> Vec<Key> {
    written
        .pools
        .iter()
        .flat_map(|p| {
            p.named
                .iter()
                .map(move |n| (p.name.clone(), n.lookup.clone()))
        })
        .collect()
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

/// One entry's loop: a round, the answer to the owner, then sleep as the owner says. Ends
/// when the owner drops the reply (the entry left the config) or is gone, or when aborted.
pub async fn run(dns: Dns, key: Key, mut srv_targets: Vec<String>, answers: mpsc::Sender<Answer>) {
    loop {
        let round = match &key.1 {
            Lookup::Host { name, .. } => dns.host(name).await,
            Lookup::Srv { name } => dns.srv(name, std::mem::take(&mut srv_targets)).await,
        };
        let (tx, rx) = oneshot::channel();
        let answer = Answer {
            key: key.clone(),
            round,
            next: tx,
        };
        if answers.send(answer).await.is_err() {
            return;
        }
        let Ok(next) = rx.await else { return };
        srv_targets = next.srv_targets;
        tokio::time::sleep(next.delay).await;
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
