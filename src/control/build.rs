//! Turning an effective config plus the registry's facts into the next [`Snapshot`], reusing
//! what did not change: a pool whose backends, weights and settings are the same keeps its
//! `Arc<Pool>` (a Maglev table is 256 KiB and takes milliseconds to build), and a listener
//! whose settings, pool, deny list and limiter table are the same keeps its spec. When
//! nothing changed at all, no snapshot is published and accept loops are not woken.
//!
//! It also keeps each listener's per-source limiter table. A reload that changes a table's
//! shape (prefixes, `max_tracked_sources`) does not move the state here: the build keeps
//! publishing the current table and hands back a [`Reshape`] for the owner to run off its
//! loop; when that is done, [`Builder::moved`] installs the new table and the next build
//! publishes it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::registry::Registry;
use crate::admission::{PerSource, Policy, PrefixSet, Rate, Shape, SourceTable};
use crate::config::{self, Balance, Config};
use crate::policy::{Candidate, effective_weights};
use crate::sni::Routes;
use crate::state::{Algorithm, Backend, ListenerSpec, Pool, Snapshot, SniSpec, UdpSpec};

/// A limiter table to move into a new shape, off the owner's loop.
#[derive(Debug)]
pub struct Reshape {
    pub listener: String,
    pub from: Arc<SourceTable>,
    pub shape: Shape,
}

/// One listener's limiter table and the rate last put in force on it.
#[derive(Debug)]
struct Table {
    table: Arc<SourceTable>,
    rate: Option<Rate>,
    /// A reshape of this table is running.
    moving: bool,
    /// A shape a reshape failed to reach: not asked again until the config wants another.
    failed: Option<Shape>,
}

/// What the last build made of one listener, to reuse when nothing changed.
#[derive(Debug)]
struct BuiltListener {
    config: config::Listener,
    /// The pools it was built with (`config::Listener::pools`).
    pools: Vec<Arc<Pool>>,
    /// The registry's deny-list version it was built with.
    deny: u64,
    spec: Arc<ListenerSpec>,
}

#[derive(Debug, Default)]
pub struct Builder {
    /// The generation of the last build.
    generation: u64,
    pools: HashMap<String, Arc<Pool>>,
    listeners: HashMap<String, BuiltListener>,
    tables: HashMap<String, Table>,
}

/// The result of a build.
#[derive(Debug)]
pub struct Built {
    pub snapshot: Snapshot,
    /// Something differs from the previous build (a pool, a listener, or the generation).
    pub changed: bool,
    pub reshapes: Vec<Reshape>,
}

impl Builder {
    /// Builds the snapshot of `config` (effective) at `generation`, reusing what did not
    /// change; identities `config` no longer has are forgotten by `registry`.
    pub fn build(&mut self, config: &Config, registry: &mut Registry, generation: u64) -> Built {
        registry.retain(config);
        let now = Instant::now();
        let mut changed = std::mem::replace(&mut self.generation, generation) != generation;
        let mut pools = HashMap::with_capacity(config.pools.len());
        for p in &config.pools {
            let (pool, reused) = self.pool(p, registry, now);
            changed |= !reused;
            pools.insert(Arc::<str>::from(p.name.as_str()), pool);
        }
        changed |= self.pools.len() != config.pools.len();
        self.pools = pools
            .iter()
            .map(|(n, p)| (n.to_string(), p.clone()))
            .collect();
        let mut reshapes = Vec::new();
        let mut listeners = HashMap::with_capacity(config.listeners.len());
        for l in &config.listeners {
            // Every pool it names, in the config's order: a validated config has them all.
            let Some(used) = l
                .pools()
                .map(|n| pools.get(n).cloned())
                .collect::<Option<Vec<_>>>()
            else {
                continue;
            };
            let table = self.table(l, now, &mut reshapes);
            let (spec, reused) = self.listener(l, &pools, used, table, registry);
            changed |= !reused;
            listeners.insert(spec.name.clone(), spec);
        }
        changed |= self.listeners.len() != listeners.len();
        self.listeners
            .retain(|n, _| listeners.contains_key(n.as_str()));
        self.tables.retain(|name, _| {
            config
                .listeners
                .iter()
                .any(|l| l.name == *name && l.per_source.is_some())
        });
        Built {
            snapshot: Snapshot {
                generation,
                listeners,
                pools,
            },
            changed,
            reshapes,
        }
    }

    /// Each limited listener's limiter table.
    pub fn limiter_tables(&self) -> impl Iterator<Item = (&str, &Arc<SourceTable>)> {
        self.tables
            .iter()
            .map(|(name, t)| (name.as_str(), &t.table))
    }

    /// The limiter table of `listener`, when it is limited per source.
    pub fn limiter_table(&self, listener: &str) -> Option<&Arc<SourceTable>> {
        self.tables.get(listener).map(|t| &t.table)
    }

    /// A reshape finished: `to` holds what `from` held. Ignored when the listener's table
    /// is no longer `from` (the listener lost its limits meanwhile).
    pub fn moved(&mut self, listener: &str, from: &Arc<SourceTable>, to: Arc<SourceTable>) {
        if let Some(t) = self.tables.get_mut(listener)
            && Arc::ptr_eq(&t.table, from)
        {
            t.table = to;
            t.moving = false;
        }
    }

    /// A reshape of `from` into `shape` failed: the table stays as it is until the config
    /// asks for yet another shape.
    pub fn unmoved(&mut self, listener: &str, from: &Arc<SourceTable>, shape: Shape) {
        if let Some(t) = self.tables.get_mut(listener)
            && Arc::ptr_eq(&t.table, from)
        {
            t.moving = false;
            t.failed = Some(shape);
        }
    }

    /// The pool for `p`: the last one when its backends, weights and settings are the same.
    fn pool(&self, p: &config::Pool, registry: &mut Registry, now: Instant) -> (Arc<Pool>, bool) {
        let mut candidates = Vec::with_capacity(p.backends.len());
        let mut stats = Vec::with_capacity(p.backends.len());
        for b in &p.backends {
            let key = (p.name.clone(), b.address);
            let ov = registry.override_of(&key);
            let health = registry.health(&key);
            candidates.push(Candidate {
                weight: ov.weight.unwrap_or(b.weight),
                admitted: ov.state == super::registry::AdminState::Active,
                healthy: health.is_none_or(|h| h.up),
                tier: b.tier,
                up_since: health.and_then(|h| h.up_since),
            });
            stats.push(registry.stats(&key));
        }
        let weights = effective_weights(&candidates, p.slow_start, p.use_all_when_down, now);
        let algorithm = match p.balance {
            Balance::RoundRobin => Algorithm::RoundRobin,
            Balance::LeastConnections => Algorithm::LeastConnections,
            Balance::RandomTwo => Algorithm::RandomTwo,
            Balance::Maglev { with_port } => Algorithm::Maglev { with_port },
        };
        if let Some(last) = self.pools.get(&p.name)
            && last.algorithm == algorithm
            && last.connect_retries == p.connect_retries
            && last.passive_failures == p.passive_failures
            && last.backends.len() == p.backends.len()
            && last
                .backends
                .iter()
                .zip(&p.backends)
                .zip(&weights)
                .zip(&stats)
                .all(|(((old, b), w), s)| {
                    old.address == b.address && old.weight == *w && Arc::ptr_eq(&old.stats, s)
                })
        {
            return (last.clone(), true);
        }
        let backends = p
            .backends
            .iter()
            .zip(weights)
            .zip(stats)
            .map(|((b, weight), stats)| {
                Arc::new(Backend {
                    address: b.address,
                    weight,
                    stats,
                })
            })
            .collect();
        let live = registry.pool_live(&p.name);
        let mut pool = Pool::new(&p.name, backends, p.connect_retries, live, algorithm);
        pool.passive_failures = p.passive_failures;
        (Arc::new(pool), false)
    }

    /// The spec of `l`: the last one when nothing it is made of changed. `used` holds the
    /// pools it names (`config::Listener::pools`), `pools` all of them by name.
    fn listener(
        &mut self,
        l: &config::Listener,
        pools: &HashMap<Arc<str>, Arc<Pool>>,
        used: Vec<Arc<Pool>>,
        table: Option<(Arc<SourceTable>, Option<Rate>)>,
        registry: &mut Registry,
    ) -> (Arc<ListenerSpec>, bool) {
        let deny = registry.deny_version(&l.name);
        if let Some(last) = self.listeners.get(&l.name)
            && last.config == *l
            && last.deny == deny
            && last.pools.len() == used.len()
            && last.pools.iter().zip(&used).all(|(a, b)| Arc::ptr_eq(a, b))
            && match (&last.spec.admission.per_source, &table) {
                (Some(ps), Some((t, _))) => Arc::ptr_eq(&ps.table, t),
                (None, None) => true,
                _ => false,
            }
        {
            return (last.spec.clone(), true);
        }
        let per_source = l
            .per_source
            .as_ref()
            .zip(table)
            .map(|(ps, (table, rate))| PerSource {
                rate,
                max_connections: ps.max_connections,
                exempt: PrefixSet::new(ps.exempt.iter().copied()),
                table,
            });
        let by_name = |n: &str| pools.get(n).cloned();
        let pool = l.pool.as_deref().and_then(by_name);
        let sni = l.sni.as_ref().map(|s| SniSpec {
            routes: Routes::new(
                s.routes
                    .iter()
                    .filter_map(|r| Some((r.pattern.clone(), by_name(&r.pool)?))),
                s.default_pool.as_deref().and_then(by_name),
            ),
            peek_timeout: s.peek_timeout,
        });
        let spec = Arc::new(ListenerSpec {
            name: l.name.as_str().into(),
            bind: l.bind.clone(),
            pool,
            sni,
            connect_timeout: l.connect_timeout,
            idle_timeout: l.idle_timeout,
            live: registry.listener_live(&l.name, l.max_connections),
            admission: Policy {
                runtime_deny: PrefixSet::new(registry.deny_list(&l.name).iter().copied()),
                deny: PrefixSet::new(l.access.deny.iter().copied()),
                allow: PrefixSet::new(l.access.allow.iter().copied()),
                per_source,
            },
            udp: match l.protocol {
                config::Protocol::Tcp => None,
                config::Protocol::Udp(u) => Some(UdpSpec {
                    session_idle: u.session_idle,
                    max_sessions: u.max_sessions,
                    responses: u.responses,
                }),
            },
            proxy_send: l.proxy_send,
            proxy_accept: (!l.proxy_accept.is_empty())
                .then(|| PrefixSet::new(l.proxy_accept.iter().copied())),
            proxy_header_timeout: l.proxy_header_timeout,
        });
        let built = BuiltListener {
            config: l.clone(),
            pools: used,
            deny,
            spec: spec.clone(),
        };
        self.listeners.insert(l.name.clone(), built);
        (spec, false)
    }

    /// The limiter table of `l`, and its rate. Its state carries over: a new rate caps what
    /// sources owe (at once, here), and a new shape asks for a [`Reshape`] while the current
    /// table stays in force.
    fn table(
        &mut self,
        l: &config::Listener,
        now: Instant,
        reshapes: &mut Vec<Reshape>,
    ) -> Option<(Arc<SourceTable>, Option<Rate>)> {
        let ps = l.per_source.as_ref()?;
        let shape = Shape {
            ipv4_prefix: ps.ipv4_prefix,
            ipv6_prefix: ps.ipv6_prefix,
            max_tracked: ps.max_tracked_sources,
        };
        let rate = ps
            .connection_rate
            .map(|(n, period)| Rate::new(n, period, ps.burst));
        let t = self.tables.entry(l.name.clone()).or_insert_with(|| Table {
            table: Arc::new(SourceTable::new(shape, rate)),
            rate,
            moving: false,
            failed: None,
        });
        if t.rate != rate {
            t.table.set_rate(now, rate);
            t.rate = rate;
        }
        if t.table.shape() != shape && !t.moving && t.failed != Some(shape) {
            t.moving = true;
            reshapes.push(Reshape {
                listener: l.name.clone(),
                from: t.table.clone(),
                shape,
            });
        }
        Some((t.table.clone(), rate))
    }
}
