//! What a reload changed, as the owner reports it once the reload is in force: how many
//! listeners, pools and backend entries the file added, removed and changed, and the
//! operator overrides that keep a changed config value from taking effect (the file says
//! weight 4, the API said 5: 5 stays). The reload's log line and `POST /api/v1/reload`
//! answer say both, and `check --diff` words masked overrides the same way ([`Masked`]).
//!
//! Pure: configs and overrides in, a report out.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;

use super::registry::{AdminState, BackendKey, Override};
use crate::config::{Config, Pool};

/// Things of one kind the new file added, removed and changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
}

/// What a reload changed in the config as written. A pool counts as changed when a setting
/// of its own changed (balance, health check, ...), not when only its backends did; backends
/// are entries as written (an address, a `host:` or an `srv:`), counted in `backends`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    pub listeners: Counts,
    pub pools: Counts,
    pub backends: Counts,
}

/// What keeps a changed config value from applying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskedBy {
    /// A weight set through the API, which replaces the file's.
    Weight(u32),
    /// A drain or disable through the API: no new connections, whatever the file says.
    State(AdminState),
}

/// An operator override that masks a value the new file changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masked {
    pub pool: String,
    pub backend: SocketAddr,
    /// What the file changes, as `weight 1 -> 4`.
    pub change: String,
    pub by: MaskedBy,
}

/// A reload in force: its generation, what it changed, and what overrides mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub generation: u64,
    pub changes: Changes,
    pub masked: Vec<Masked>,
}

impl Changes {
    /// Compares two configs as written (`host:`/`srv:` entries unresolved).
    pub fn between(old: &Config, new: &Config) -> Changes {
        let mut c = Changes::default();
        for l in &new.listeners {
            match old.listeners.iter().find(|o| o.name == l.name) {
                None => c.listeners.added += 1,
                Some(o) if o != l => c.listeners.changed += 1,
                Some(_) => {}
            }
        }
        c.listeners.removed = old
            .listeners
            .iter()
            .filter(|o| !new.listeners.iter().any(|l| l.name == o.name))
            .count();
        for p in &new.pools {
            let o = old.pool(&p.name);
            match o {
                None => c.pools.added += 1,
                Some(o) if !same_settings(o, p) => c.pools.changed += 1,
                Some(_) => {}
            }
            c.backends
                .add(o.map(entries).unwrap_or_default(), entries(p));
        }
        for o in old.pools.iter().filter(|o| new.pool(&o.name).is_none()) {
            c.pools.removed += 1;
            c.backends.add(entries(o), Vec::new());
        }
        c
    }
}

impl Counts {
    /// Adds the entries (identity, value) of one pool, before and after.
    fn add(&mut self, old: Vec<(String, String)>, new: Vec<(String, String)>) {
        for (id, value) in &new {
            match old.iter().find(|(o, _)| o == id) {
                None => self.added += 1,
                Some((_, was)) if was != value => self.changed += 1,
                Some(_) => {}
            }
        }
        self.removed += old
            .iter()
            .filter(|(o, _)| !new.iter().any(|(id, _)| id == o))
            .count();
    }

    fn is_empty(self) -> bool {
        self == Counts::default()
    }
}

/// A pool's backend entries as written: (identity, everything else).
fn entries(p: &Pool) -> Vec<(String, String)> {
    let literal = p
        .backends
        .iter()
        .filter(|b| b.origin.is_none())
        .map(|b| (b.address.to_string(), format!("{} {}", b.weight, b.tier)));
    let named = p
        .named
        .iter()
        .map(|n| (n.lookup.to_string(), format!("{} {}", n.weight, n.backup)));
    literal.chain(named).collect()
}

/// Whether two pools have the same settings of their own, whatever their backends.
fn same_settings(a: &Pool, b: &Pool) -> bool {
    let bare = |p: &Pool| Pool {
        backends: Vec::new(),
        named: Vec::new(),
        ..p.clone()
    };
    bare(a) == bare(b)
}

/// The overrides in force that mask a value the reload from `before` to `after` (effective
/// configs: DNS answers expanded) changes, sorted by pool and backend.
pub fn masked(
    overrides: &HashMap<BackendKey, Override>,
    before: &Config,
    after: &Config,
) -> Vec<Masked> {
    let find = |c: &Config, (pool, addr): &BackendKey| {
        c.pool(pool)
            .and_then(|p| p.backends.iter().find(|b| b.address == *addr))
            .map(|b| (b.weight, b.tier > 0))
    };
    let mut out = Vec::new();
    for (key, ov) in overrides {
        let (Some(old), Some(new)) = (find(before, key), find(after, key)) else {
            continue;
        };
        let mut change = Vec::new();
        if old.0 != new.0 {
            change.push(format!("weight {} -> {}", old.0, new.0));
        }
        if old.1 != new.1 {
            change.push(format!("backup {} -> {}", old.1, new.1));
        }
        let masked = |by| Masked {
            pool: key.0.clone(),
            backend: key.1,
            change: change.join(", "),
            by,
        };
        if let Some(w) = ov.weight
            && old.0 != new.0
        {
            out.push(Masked {
                change: format!("weight {} -> {}", old.0, new.0),
                ..masked(MaskedBy::Weight(w))
            });
        }
        if ov.state != AdminState::Active && !change.is_empty() {
            out.push(masked(MaskedBy::State(ov.state)));
        }
    }
    out.sort_by(|a, b| (&a.pool, a.backend).cmp(&(&b.pool, b.backend)));
    out
}

impl Masked {
    /// The admin API call that drops the override: `DELETE /api/v1/pools/P/backends/B/weight`.
    pub fn drop_with(&self) -> String {
        let backend = self
            .backend
            .to_string()
            .replace(':', "%3A")
            .replace('[', "%5B")
            .replace(']', "%5D");
        let base = format!("/api/v1/pools/{}/backends/{backend}", self.pool);
        match self.by {
            MaskedBy::Weight(_) => format!("DELETE {base}/weight"),
            MaskedBy::State(_) => format!("POST {base}/enable"),
        }
    }
}

impl fmt::Display for Masked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (pool, backend, change) = (&self.pool, self.backend, &self.change);
        let kept = match self.by {
            MaskedBy::Weight(w) => format!("the weight override {w} set through the API stays"),
            MaskedBy::State(s) => format!("the backend stays {} through the API", s.label()),
        };
        write!(
            f,
            "pool {pool}: backend {backend}: the file changes {change}, but {kept}; `{}` drops it",
            self.drop_with()
        )
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = [
            (self.added, "added"),
            (self.removed, "removed"),
            (self.changed, "changed"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        f.write_str(&parts.join(", "))
    }
}

/// `listeners: 1 changed; backends: 1 added, 1 removed`, or `nothing`.
impl fmt::Display for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = [
            ("listeners", self.listeners),
            ("pools", self.pools),
            ("backends", self.backends),
        ]
        .iter()
        .filter(|(_, c)| !c.is_empty())
        .map(|(what, c)| format!("{what}: {c}"))
        .collect();
        if parts.is_empty() {
            f.write_str("nothing")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::load_str;

    /// Listeners `web` (+ `extra`), pool `web` over 10.0.0.1 (weight `w`), 10.0.0.2 and
    /// `more` more entries, plus pool `spare` when asked.
    fn config(w: u32, extra: bool, more: &str, spare: bool) -> Config {
        let mut y = String::from("listeners:\n  web: { bind: \"127.0.0.1:0\", pool: web }\n");
        if extra {
            y.push_str("  extra: { bind: \"127.0.0.1:0\", pool: web }\n");
        }
        y.push_str(&format!(
            "pools:\n  web:\n    backends:\n      - {{ address: \"10.0.0.1:80\", weight: {w} }}\n      - address: \"10.0.0.2:80\"\n{more}"
        ));
        if spare {
            y.push_str("  spare:\n    backends: [{ address: \"10.0.0.9:80\" }, { host: s.test, port: 80 }]\n");
        }
        load_str(&y, "t.yaml").unwrap()
    }

    #[test]
    fn counts_listeners_pools_and_backend_entries() {
        let old = config(1, true, "      - { host: a.test, port: 80 }\n", true);
        let same = Changes::between(&old, &old);
        assert_eq!(same, Changes::default());
        assert_eq!(same.to_string(), "nothing");
        // extra goes, spare (2 entries) goes, 10.0.0.1 changes, a.test changes port (a new
        // identity: one removed, one added), srv added.
        let new = config(
            4,
            false,
            "      - { host: a.test, port: 81 }\n      - srv: _x._tcp.b.test\n",
            false,
        );
        let c = Changes::between(&old, &new);
        assert_eq!(
            c,
            Changes {
                listeners: Counts {
                    added: 0,
                    removed: 1,
                    changed: 0
                },
                pools: Counts {
                    added: 0,
                    removed: 1,
                    changed: 0
                },
                backends: Counts {
                    added: 2,
                    removed: 3,
                    changed: 1
                },
            }
        );
        assert_eq!(
            c.to_string(),
            "listeners: 1 removed; pools: 1 removed; backends: 2 added, 3 removed, 1 changed"
        );
        // The other way round, and a pool setting of its own.
        let mut back = old.clone();
        back.pools[1].slow_start = std::time::Duration::from_secs(5);
        let c = Changes::between(&new, &back);
        assert_eq!(
            c.listeners,
            Counts {
                added: 1,
                removed: 0,
                changed: 0
            }
        );
        assert_eq!(
            c.pools,
            Counts {
                added: 1,
                removed: 0,
                changed: 1
            }
        );
        assert_eq!(
            c.backends,
            Counts {
                added: 3,
                removed: 2,
                changed: 1
            }
        );
    }

    #[test]
    fn only_overrides_that_mask_a_changed_value_are_reported() {
        let (a, b): (SocketAddr, SocketAddr) = (
            "10.0.0.1:80".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        );
        let key = |addr| ("web".to_owned(), addr);
        let mut overrides = HashMap::new();
        overrides.insert(
            key(a),
            Override {
                state: AdminState::Active,
                weight: Some(5),
            },
        );
        overrides.insert(
            key(b),
            Override {
                state: AdminState::Disabled,
                weight: Some(2),
            },
        );
        let (before, after) = (config(1, false, "", false), config(4, false, "", false));
        let masked = masked(&overrides, &before, &after);
        assert_eq!(masked.len(), 1, "b's entry did not change: {masked:?}");
        assert_eq!(masked[0].by, MaskedBy::Weight(5));
        assert_eq!(
            masked[0].to_string(),
            "pool web: backend 10.0.0.1:80: the file changes weight 1 -> 4, but the weight \
             override 5 set through the API stays; `DELETE /api/v1/pools/web/backends/10.0.0.1%3A80/weight` drops it"
        );
        // A disabled backend whose entry changes: the disable masks it.
        overrides.insert(
            key(a),
            Override {
                state: AdminState::Disabled,
                weight: None,
            },
        );
        let masked = super::masked(&overrides, &before, &after);
        assert_eq!(masked.len(), 1);
        assert_eq!(masked[0].by, MaskedBy::State(AdminState::Disabled));
        assert_eq!(
            masked[0].drop_with(),
            "POST /api/v1/pools/web/backends/10.0.0.1%3A80/enable"
        );
        // An override of a removed backend masks nothing: it goes with the backend.
        let gone = config(4, false, "", false);
        let mut gone_b = gone.clone();
        gone_b.pools[0].backends.retain(|x| x.address != b);
        overrides.insert(
            key(b),
            Override {
                state: AdminState::Active,
                weight: Some(2),
            },
        );
        assert!(super::masked(&overrides, &gone, &gone_b).is_empty());
    }
}
