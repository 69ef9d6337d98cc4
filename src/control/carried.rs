//! The control state a binary upgrade carries to the new process, as plain values: what the
//! operator set (drains, disables, weight overrides, runtime deny lists) and what the health
//! checks found, so that the new process serves exactly the backends the old one did from
//! its first connection: a drained backend stays drained, a dead one stays out, and a
//! recovering one keeps its slow start. Taken from the registry by the owner
//! (`Command::Carry`), seeded into the new registry before its first snapshot. The DNS
//! answers in force come along (`crate::discovery::CarriedName`), so that a pool of names
//! has its backends from the first connection, and so do what limited sources owe their
//! rates (`super::carried_limits`), so that an upgrade hands no source a fresh burst.

use std::net::SocketAddr;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::carried_limits::CarriedLimits;
use super::registry::{AdminState, Override, Registry};
use crate::discovery::CarriedName;
use crate::health::HealthState;
use crate::health::state::HealthParts;

/// Overrides, health, runtime deny lists and DNS answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Carried {
    pub backends: Vec<CarriedBackend>,
    pub deny: Vec<CarriedDeny>,
    // Left out when empty, so that a binary that knows neither (an earlier release, when
    // upgrading back to it) still reads the rest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<CarriedName>,
    /// What limited sources owe their rates, per listener.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<CarriedLimits>,
}

/// One backend with an override or a health state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarriedBackend {
    pub pool: String,
    pub address: SocketAddr,
    /// `draining` or `disabled`; absent when active.
    pub state: Option<String>,
    pub weight: Option<u32>,
    pub health: Option<HealthParts>,
}

/// One listener's runtime deny list (CIDR blocks as written).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarriedDeny {
    pub listener: String,
    pub blocks: Vec<String>,
}

impl Carried {
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
            && self.deny.is_empty()
            && self.names.is_empty()
            && self.limits.is_empty()
    }

    /// Its entries, as the handover bounds them (sources' debts are bounded on their own,
    /// [`Carried::debts`]).
    pub fn len(&self) -> usize {
        self.backends.len() + self.deny.len() + self.names.len() + self.limits.len()
    }

    /// The sources' debts it carries.
    pub fn debts(&self) -> usize {
        self.limits.iter().map(|l| l.sources.len()).sum()
    }

    /// Adds what `more` carries (a state sent in several messages).
    pub fn extend(&mut self, more: Carried) {
        self.backends.extend(more.backends);
        self.deny.extend(more.deny);
        self.names.extend(more.names);
        for part in more.limits {
            match self.limits.last_mut() {
                Some(last) if last.continues(&part) => last.sources.extend(part.sources),
                _ => self.limits.push(part),
            }
        }
    }

    /// Splits into parts of at most `per` entries each (backends and deny blocks).
    pub fn split(self, per: usize) -> Vec<Carried> {
        let per = per.max(1);
        let mut parts: Vec<Carried> = self
            .backends
            .chunks(per)
            .map(|b| Carried {
                backends: b.to_vec(),
                ..Carried::default()
            })
            .collect();
        // A name's state can hold many records: a few per part.
        for names in self.names.chunks(per.div_ceil(16)) {
            parts.push(Carried {
                names: names.to_vec(),
                ..Carried::default()
            });
        }
        for limits in self.limits {
            parts.extend(limits.split().into_iter().map(|l| Carried {
                limits: vec![l],
                ..Carried::default()
            }));
        }
        for list in self.deny {
            for blocks in list.blocks.chunks(per) {
                parts.push(Carried {
                    deny: vec![CarriedDeny {
                        listener: list.listener.clone(),
                        blocks: blocks.to_vec(),
                    }],
                    ..Carried::default()
                });
            }
        }
        parts
    }
}

impl Registry {
    /// What a binary upgrade carries of this registry.
    pub fn carry(&self) -> Carried {
        let now = Instant::now();
        let mut keys: Vec<_> = self
            .overrides()
            .keys()
            .chain(self.healths().keys())
            .collect();
        keys.sort();
        keys.dedup();
        let backends = keys
            .into_iter()
            .map(|key| {
                let o = self.override_of(key);
                CarriedBackend {
                    pool: key.0.clone(),
                    address: key.1,
                    state: (o.state != AdminState::Active).then(|| o.state.label().to_owned()),
                    weight: o.weight,
                    health: self.health(key).map(|h| h.parts(now)),
                }
            })
            .collect();
        let deny = self
            .deny_lists()
            .map(|(listener, blocks)| CarriedDeny {
                listener: listener.to_owned(),
                blocks: blocks.iter().map(ToString::to_string).collect(),
            })
            .collect();
        Carried {
            backends,
            deny,
            ..Carried::default()
        }
    }

    /// Takes on what the previous process carried, before the first snapshot is built.
    /// Entries that do not parse are skipped; the config decides later (at its first build
    /// and every reload) which identities stay.
    pub fn seed(&mut self, carried: Carried) {
        let now = Instant::now();
        for b in carried.backends {
            let key = (b.pool, b.address);
            let state = match b.state.as_deref() {
                Some("draining") => AdminState::Draining,
                Some("disabled") => AdminState::Disabled,
                _ => AdminState::Active,
            };
            let weight = b.weight;
            self.set_override(&key, |o| *o = Override { state, weight });
            if let Some(parts) = b.health {
                self.set_health(&key, HealthState::from_parts(parts, now));
            }
        }
        for list in carried.deny {
            for block in list.blocks.iter().filter_map(|b| b.parse().ok()) {
                let _ = self.set_deny(&list.listener, block, true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{CheckOutcome, Checked};

    #[test]
    fn what_a_registry_carries_seeds_an_equal_one() {
        let mut old = Registry::default();
        let (a, b) = (
            ("web".to_owned(), "10.0.0.1:80".parse().unwrap()),
            ("web".to_owned(), "10.0.0.2:80".parse().unwrap()),
        );
        old.set_override(&a, |o| o.state = AdminState::Draining);
        old.set_override(&b, |o| o.weight = Some(7));
        let mut health = HealthState::default();
        let failed = CheckOutcome {
            result: Checked::Failed,
            detail: "connection refused".into(),
            at: std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_796_000_000_000),
        };
        health.record(failed, 2, 3);
        old.set_health(&b, health.clone());
        old.set_deny("front", "10.9.0.0/16".parse().unwrap(), true)
            .unwrap();
        let carried = old.carry();
        assert_eq!(carried.backends.len(), 2);
        // Through JSON, as the handover sends it, and in parts, as a large state goes.
        let parts: Vec<Carried> = carried
            .clone()
            .split(1)
            .into_iter()
            .map(|p| serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap())
            .collect();
        let mut again = Carried::default();
        for part in parts {
            again.extend(part);
        }
        let mut new = Registry::default();
        new.seed(again);
        assert_eq!(new.carry(), carried);
        assert_eq!(new.override_of(&a).state, AdminState::Draining);
        assert_eq!(new.override_of(&b).weight, Some(7));
        assert_eq!(new.health(&b), Some(&health));
        assert_eq!(new.deny_list("front").len(), 1);
    }
}
