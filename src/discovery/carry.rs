//! The DNS answers a binary upgrade carries to the new process (`crate::upgrade`): every
//! entry's records in force per question, with their TTLs and ages, and the round's
//! outcome, as plain values (instants become ages). Seeded before the new process builds
//! its first snapshot, they make its DNS pools serve the same backends from its first
//! connection (a connection handed over finds its backend there), and its first rounds
//! follow the same TTLs, failures and negative holds as if nothing had restarted.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::answer::{Held, NameState, Resolved, Srv};
use super::{Key, Names};
use crate::config::Lookup;

/// One entry's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarriedName {
    pub pool: String,
    /// `host` or `srv`.
    pub kind: String,
    pub name: String,
    /// A `host:` entry's port.
    pub port: Option<u16>,
    pub srv: HeldParts<Srv>,
    pub a: Vec<(String, HeldParts<IpAddr>)>,
    pub aaaa: Vec<(String, HeldParts<IpAddr>)>,
    pub last_result: String,
    pub last_error: Option<String>,
    pub streak: u32,
    pub answered: bool,
    pub answered_age_ms: Option<u64>,
    pub ttl: Option<u32>,
    /// (address, SRV weight, SRV priority rank), in order.
    pub resolved: Vec<(SocketAddr, Option<u32>, u32)>,
}

/// One question's records in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldParts<T> {
    pub records: Vec<T>,
    pub ttl: u32,
    pub received_age_ms: Option<u64>,
    pub negative_age_ms: Option<u64>,
}

fn age(at: Option<Instant>, now: Instant) -> Option<u64> {
    at.map(|t| u64::try_from(now.saturating_duration_since(t).as_millis()).unwrap_or(u64::MAX))
}

fn at(age_ms: Option<u64>, now: Instant) -> Option<Instant> {
    // An age older than this process's clock can express is the oldest it can.
    age_ms.map(|ms| now.checked_sub(Duration::from_millis(ms)).unwrap_or(now))
}

impl<T: Clone> HeldParts<T> {
    fn of(held: &Held<T>, now: Instant) -> HeldParts<T> {
        HeldParts {
            records: held.records.clone(),
            ttl: held.ttl,
            received_age_ms: age(held.received_at, now),
            negative_age_ms: age(held.negative_since, now),
        }
    }

    fn held(self, now: Instant) -> Held<T> {
        Held {
            records: self.records,
            ttl: self.ttl,
            received_at: at(self.received_age_ms, now),
            negative_since: at(self.negative_age_ms, now),
        }
    }
}

/// The `result` labels a round can have, as the metrics name them.
const RESULTS: [&str; 7] = [
    "success", "nxdomain", "empty", "timeout", "servfail", "refused", "error",
];

impl Names {
    /// Every entry's state, for the new process.
    pub fn carry(&self) -> Vec<CarriedName> {
        let now = Instant::now();
        let mut names: Vec<CarriedName> = self
            .states
            .iter()
            .map(|((pool, lookup), s)| {
                let (kind, port) = match lookup {
                    Lookup::Host { port, .. } => ("host", Some(*port)),
                    Lookup::Srv { .. } => ("srv", None),
                };
                let questions = |map: &HashMap<String, Held<IpAddr>>| {
                    let mut v: Vec<_> = map
                        .iter()
                        .map(|(n, h)| (n.clone(), HeldParts::of(h, now)))
                        .collect();
                    v.sort_by(|a, b| a.0.cmp(&b.0));
                    v
                };
                CarriedName {
                    pool: pool.clone(),
                    kind: kind.to_owned(),
                    name: lookup.name().to_owned(),
                    port,
                    srv: HeldParts::of(&s.srv, now),
                    a: questions(&s.a),
                    aaaa: questions(&s.aaaa),
                    last_result: s.last_result.to_owned(),
                    last_error: s.last_error.clone(),
                    streak: s.streak,
                    answered: s.answered,
                    answered_age_ms: age(s.answered_at, now),
                    ttl: s.ttl,
                    resolved: s
                        .resolved
                        .iter()
                        .map(|r| (r.address, r.weight, r.rank))
                        .collect(),
                }
            })
            .collect();
        names.sort_by(|a, b| (&a.pool, &a.name, a.port).cmp(&(&b.pool, &b.name, b.port)));
        names
    }

    /// Takes on what the previous process carried, before the first snapshot. Entries the
    /// config does not have are dropped at the next `retain`; an unknown kind is skipped.
    pub fn seed(&mut self, carried: Vec<CarriedName>) {
        let now = Instant::now();
        for c in carried {
            let lookup = match (c.kind.as_str(), c.port) {
                ("host", Some(port)) => Lookup::Host { name: c.name, port },
                ("srv", _) => Lookup::Srv { name: c.name },
                _ => continue,
            };
            let key: Key = (c.pool, lookup);
            let questions = |v: Vec<(String, HeldParts<IpAddr>)>| {
                v.into_iter()
                    .map(|(n, h)| (n, h.held(now)))
                    .collect::<HashMap<_, _>>()
            };
            let state = NameState {
                srv: c.srv.held(now),
                a: questions(c.a),
                aaaa: questions(c.aaaa),
                last_result: RESULTS
                    .iter()
                    .find(|r| **r == c.last_result)
                    .copied()
                    .unwrap_or(""),
                last_error: c.last_error,
                streak: c.streak,
                answered: c.answered,
                answered_at: at(c.answered_age_ms, now),
                ttl: c.ttl,
                next_refresh: None,
                resolved: c
                    .resolved
                    .into_iter()
                    .map(|(address, weight, rank)| Resolved {
                        address,
                        weight,
                        rank,
                    })
                    .collect(),
            };
            self.states.insert(key, state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::answer::Reply;
    use crate::discovery::answer_tests::{T, host, ip};

    #[test]
    fn what_names_carry_seeds_the_same_answers_in_force() {
        let mut old = Names::default();
        let key: Key = (
            "web".to_owned(),
            Lookup::Host {
                name: "app.test".to_owned(),
                port: 8080,
            },
        );
        let round = host(Reply::Records(300, vec![ip(1), ip(2)]), Reply::NoData);
        old.apply(&key, round, 8080, T);
        let carried = old.carry();
        let json = serde_json::to_string(&carried).unwrap();
        let mut new = Names::default();
        new.seed(serde_json::from_str(&json).unwrap());
        let (was, is) = (&old.states()[&key], &new.states()[&key]);
        assert!(is.has_answer());
        assert_eq!(is.resolved, was.resolved);
        assert_eq!(is.ttl, Some(300));
        assert_eq!(is.a["app.test"].records, vec![ip(1), ip(2)]);
        // A round that fails keeps what was carried in force, as it would have in the old.
        let failed = host(
            Reply::Failed(crate::discovery::answer::Failure::Timeout),
            Reply::NoData,
        );
        new.apply(&key, failed, 8080, T);
        assert_eq!(new.states()[&key].resolved, was.resolved);
    }
}
