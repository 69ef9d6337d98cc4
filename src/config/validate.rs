//! [`FileConfig`] → [`Config`]: every value checked and typed, every problem collected (not
//! just the first), each with its line, column and key path.
//!
//! The schema of DESIGN.md §3.3 is checked here; a key that is not in it (`logging`, until it
//! is built) is refused as unknown — a setting that would be silently ignored is worse than
//! an error. Pools and backends live in `validate_pool.rs`, SNI routes in `validate_sni.rs`.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use serde_saphyr::Location;

use super::error::{ConfigError, ConfigErrors};
use super::file::{self, FileConfig, ListenerFile, S};
use super::types::*;
use super::values;
use crate::admission::Cidr;

/// Collects errors while walking the file.
pub(super) struct Checker<'a> {
    label: &'a str,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    pub(super) fn at_loc(&mut self, loc: Location, key: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.label.to_owned(),
            line: loc.line(),
            column: loc.column(),
            key: key.to_owned(),
            message: message.into(),
        });
    }

    pub(super) fn at<T>(&mut self, spanned: &S<T>, key: &str, message: impl Into<String>) {
        self.at_loc(spanned.referenced, key, message);
    }

    /// A duration setting, or `default` when absent; `min` rejects values that make no sense
    /// (a zero connect timeout).
    pub(super) fn duration(
        &mut self,
        value: &Option<S<String>>,
        key: &str,
        default: Duration,
        min: Duration,
    ) -> Duration {
        let Some(v) = value else { return default };
        match values::duration(&v.value) {
            Ok(d) if d < min => {
                self.at(
                    v,
                    key,
                    format!("`{}` is too short; the minimum is {min:?}", v.value),
                );
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.at(v, key, e);
                default
            }
        }
    }

    /// A whole-number setting within `range`, or `default` when absent.
    pub(super) fn number(
        &mut self,
        value: &Option<S<u64>>,
        key: &str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> u64 {
        let Some(v) = value else { return default };
        if range.contains(&v.value) {
            v.value
        } else {
            let (lo, hi) = (range.start(), range.end());
            self.at(v, key, format!("{} is out of range ({lo}-{hi})", v.value));
            default
        }
    }

    /// A list of CIDR blocks; the ones that parse (every bad one is reported).
    pub(super) fn cidrs(&mut self, list: &Option<S<Vec<String>>>, key: &str) -> Vec<Cidr> {
        let Some(list) = list else { return Vec::new() };
        let mut out = Vec::with_capacity(list.value.len());
        for (i, c) in list.value.iter().enumerate() {
            match values::cidr(c) {
                Ok(block) => out.push(block),
                Err(e) => self.at(list, &format!("{key}[{i}]"), e),
            }
        }
        out
    }
}

pub fn validate(raw: FileConfig, label: &str) -> Result<Config, ConfigErrors> {
    let mut c = Checker {
        label,
        errors: Vec::new(),
    };
    let workers = match &raw.workers {
        None => Workers::Auto,
        Some(w) => match w.value {
            file::Workers::Auto => Workers::Auto,
            file::Workers::Count(n) => match usize::try_from(n).ok().and_then(NonZeroUsize::new) {
                Some(n) if n.get() <= 1024 => Workers::Fixed(n),
                _ => {
                    c.at(
                        w,
                        "workers",
                        format!("{n} is out of range (1-1024, or auto)"),
                    );
                    Workers::Auto
                }
            },
        },
    };
    let forwarding = match raw.forwarding.as_ref().map(|f| (f, f.value.as_str())) {
        None | Some((_, "splice")) => Forwarding::Splice,
        Some((_, "copy")) => Forwarding::Copy,
        Some((f, other)) => {
            c.at(
                f,
                "forwarding",
                format!("`{other}` is not one of: splice, copy"),
            );
            Forwarding::Splice
        }
    };
    let admin = raw
        .admin
        .as_ref()
        .and_then(|a| super::validate_admin::admin(&mut c, a));
    let resolver = super::validate_dns::resolver(&mut c, raw.resolver.as_ref());
    let drain_timeout = c.duration(
        &raw.shutdown.as_ref().and_then(|s| s.drain_timeout.clone()),
        "shutdown.drain_timeout",
        defaults::DRAIN_TIMEOUT,
        Duration::ZERO,
    );
    let logging = super::validate_logging::logging(&mut c, raw.logging.as_ref());
    let pool_names: Vec<&str> = raw
        .pools
        .as_ref()
        .map_or(Vec::new(), |m| m.value.keys().map(String::as_str).collect());
    let listeners = listeners(&mut c, raw.listeners.as_ref(), &pool_names);
    let binds: Vec<SocketAddr> = listeners
        .iter()
        .flat_map(|l| l.bind.iter().copied())
        .collect();
    let pools = super::validate_pool::pools(&mut c, raw.pools.as_ref(), &binds);
    if c.errors.is_empty() {
        Ok(Config {
            workers,
            admin,
            forwarding,
            drain_timeout,
            resolver,
            logging,
            listeners,
            pools,
        })
    } else {
        c.errors.sort_by_key(|e| (e.line, e.column));
        Err(ConfigErrors(c.errors))
    }
}

type Map<T> = std::collections::BTreeMap<String, S<T>>;

fn listeners(c: &mut Checker, raw: Option<&S<Map<ListenerFile>>>, pools: &[&str]) -> Vec<Listener> {
    let Some(raw) = raw.filter(|m| !m.value.is_empty()) else {
        let loc = raw.map_or(Location::UNKNOWN, |m| m.referenced);
        c.at_loc(loc, "listeners", "at least one listener is required");
        return Vec::new();
    };
    // TCP and UDP ports are separate: a tcp and a udp listener may share an address.
    let mut seen_binds: Vec<(SocketAddr, bool, String)> = Vec::new();
    let mut out = Vec::new();
    for (name, l) in &raw.value {
        let key = format!("listeners.{name}");
        if let Err(e) = values::name(name) {
            c.at(l, &key, e);
        }
        if let Some(listener) = listener(c, &key, name, l, pools) {
            let udp = listener.protocol.is_udp();
            for addr in &listener.bind {
                if let Some((theirs, _, other)) = seen_binds
                    .iter()
                    .find(|(b, u, _)| *u == udp && overlaps(*b, *addr))
                {
                    let msg = format!("{addr} overlaps {theirs} of listener `{other}`");
                    c.at(l, &format!("{key}.bind"), msg);
                }
                seen_binds.push((*addr, udp, name.clone()));
            }
            out.push(listener);
        }
    }
    out
}

fn listener(
    c: &mut Checker,
    key: &str,
    name: &str,
    l: &S<ListenerFile>,
    pools: &[&str],
) -> Option<Listener> {
    let f = &l.value;
    let udp = match f.protocol.as_ref().map(|p| (p, p.value.as_str())) {
        None | Some((_, "tcp")) => None,
        Some((_, "udp")) => {
            super::validate_udp::refuse_tcp_settings(c, key, f);
            Some(super::validate_udp::settings(c, key, f))
        }
        Some((p, other)) => {
            c.at(
                p,
                &format!("{key}.protocol"),
                format!("`{other}` is not one of: tcp, udp"),
            );
            None
        }
    };
    let bind = binds(c, key, l);
    // A TCP listener with `sni` routes by server name instead of to one pool (a UDP
    // listener refuses `sni` in validate_udp.rs).
    let sni = f.sni.as_ref().filter(|_| udp.is_none());
    let routes = sni.map(|s| super::validate_sni::sni(c, key, f, s, pools));
    let pool = match &f.pool {
        _ if sni.is_some() => None,
        Some(p) if pools.contains(&p.value.as_str()) => Some(p.value.clone()),
        Some(p) => {
            c.at(p, &format!("{key}.pool"), unknown_pool(&p.value, pools));
            None
        }
        None => {
            let why = if udp.is_none() {
                "a pool is required (or `sni` routes by server name)"
            } else {
                "a pool is required"
            };
            c.at(l, &format!("{key}.pool"), why);
            None
        }
    };

    if let Some(section) = &f.udp
        && udp.is_none()
    {
        c.at(
            section,
            &format!("{key}.udp"),
            "udp settings apply only to `protocol: udp` listeners",
        );
    }
    let mut proxy_send = None;
    let mut proxy_accept = Vec::new();
    if let Some(pp) = &f.proxy_protocol {
        if let Some(send) = &pp.send {
            let k = format!("{key}.proxy_protocol.send");
            match send.value.as_str() {
                "none" => {}
                "v1" if udp.is_some() => c.at(
                    send,
                    &k,
                    "a UDP session's first datagram takes a v2 header (v1 has no datagram family)",
                ),
                "v1" => proxy_send = Some(ProxyVersion::V1),
                "v2" => proxy_send = Some(ProxyVersion::V2),
                other => c.at(send, &k, format!("`{other}` is not one of: none, v1, v2")),
            }
        }
        let k = format!("{key}.proxy_protocol.accept_from");
        let from = c.cidrs(&pp.accept_from, &k);
        // A UDP listener refuses the key itself (validate_udp.rs).
        if udp.is_none() {
            proxy_accept = from;
        }
    }
    let access = super::validate_limits::access(c, key, f);
    let per_source = super::validate_limits::per_source(c, key, f);
    let t = f.timeouts.as_ref();
    let ms = Duration::from_millis(1);
    let connect_timeout = c.duration(
        &t.and_then(|t| t.connect.clone()),
        &format!("{key}.timeouts.connect"),
        defaults::CONNECT_TIMEOUT,
        ms,
    );
    let idle_timeout = c.duration(
        &t.and_then(|t| t.idle.clone()),
        &format!("{key}.timeouts.idle"),
        defaults::IDLE_TIMEOUT,
        ms,
    );
    let proxy_header_timeout = c.duration(
        &t.and_then(|t| t.proxy_header.clone()),
        &format!("{key}.timeouts.proxy_header"),
        defaults::PROXY_HEADER_TIMEOUT,
        ms,
    );
    let max_connections_set = f.limits.as_ref().and_then(|l| l.max_connections.clone());
    let max_connections_sized = max_connections_set.is_none();
    let max_connections = c.number(
        &max_connections_set,
        &format!("{key}.limits.max_connections"),
        defaults::max_connections(crate::sys::rlimit::reachable_nofile()),
        1..=10_000_000,
    );
    // What a source can hold open: connections, or a UDP listener's sessions.
    let (held, held_key) = match &udp {
        Some(u) => (u.max_sessions as u64, "udp.max_sessions"),
        None => (max_connections, "limits.max_connections"),
    };
    if let Some(ps) = &per_source
        && (ps.max_tracked_sources as u64) < held.saturating_mul(2)
        && let Some(l) = &f.limits
        && let Some(p) = &l.per_source
    {
        c.at(
            p,
            &format!("{key}.limits.per_source.max_tracked_sources"),
            format!(
                "{} is below twice {held_key} ({held}): a source with open connections is never forgotten, so held connections could fill the table (its shards unevenly) and lock new sources out; raise it or lower {held_key}",
                ps.max_tracked_sources
            ),
        );
    }
    // Only now, so that every other setting has been checked and reported too.
    let (pool, sni) = match routes {
        Some(routes) => (None, Some(routes?)),
        None => (Some(pool?), None),
    };
    Some(Listener {
        name: name.to_owned(),
        protocol: udp.map_or(Protocol::Tcp, Protocol::Udp),
        bind: bind?,
        pool,
        sni,
        max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
        max_connections_sized,
        connect_timeout,
        idle_timeout,
        proxy_header_timeout,
        proxy_send,
        proxy_accept,
        access,
        per_source,
    })
}

/// "no pool named …", with the pool that was probably meant and the ones that exist.
pub(super) fn unknown_pool(name: &str, pools: &[&str]) -> String {
    let missing = format!("no pool named `{name}` is defined");
    match super::suggest::closest(name, pools) {
        _ if pools.is_empty() => format!("{missing}, and the file defines no pools"),
        Some(meant) => format!(
            "{missing}; did you mean `{meant}`? (the pools: {})",
            super::suggest::list(pools)
        ),
        None => format!("{missing} (the pools: {})", super::suggest::list(pools)),
    }
}

/// Two binds collide when they share a port and family and one address covers the other
/// (equal, or either is the wildcard). Port 0 asks for a fresh port and collides with nothing.
pub fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn binds(c: &mut Checker, key: &str, l: &S<ListenerFile>) -> Option<Vec<SocketAddr>> {
    let key = format!("{key}.bind");
    let Some(bind) = &l.value.bind else {
        c.at(l, &key, "at least one bind address is required");
        return None;
    };
    let items: Vec<(String, Location, String)> = match &bind.value {
        file::Bind::One(s) => vec![(s.clone(), bind.referenced, key.clone())],
        file::Bind::Many(list) => list
            .iter()
            .enumerate()
            .map(|(i, s)| (s.value.clone(), s.referenced, format!("{key}[{i}]")))
            .collect(),
    };
    if items.is_empty() {
        c.at(bind, &key, "at least one bind address is required");
        return None;
    }
    let mut out = Vec::new();
    for (text, loc, k) in items {
        match values::socket_addr(&text, true) {
            Ok(a) if out.contains(&a) => c.at_loc(loc, &k, format!("{a} is listed twice")),
            Ok(a) => out.push(a),
            Err(e) => c.at_loc(loc, &k, e),
        }
    }
    Some(out)
}
