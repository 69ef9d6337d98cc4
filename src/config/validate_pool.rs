//! Checks `pools.*`: balancing, retries and every backend. Literal `address:` backends are
//! built here; `host:` and `srv:` entries are checked by `validate_dns.rs` and resolved at
//! run time.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::file::{BackendFile, PoolFile, S};
use super::types::*;
use super::validate::Checker;
use super::values;

/// `binds` are every listener's bind addresses: a backend that is one of them would loop.
pub(super) fn pools(
    c: &mut Checker,
    raw: Option<&S<BTreeMap<String, S<PoolFile>>>>,
    binds: &[SocketAddr],
) -> Vec<Pool> {
    let Some(raw) = raw else { return Vec::new() };
    let mut out = Vec::new();
    for (name, p) in &raw.value {
        let key = format!("pools.{name}");
        if let Err(e) = values::name(name) {
            c.at(p, &key, e);
        }
        if let Some(pool) = pool(c, &key, name, p, binds) {
            out.push(pool);
        }
    }
    out
}

fn pool(
    c: &mut Checker,
    key: &str,
    name: &str,
    p: &S<PoolFile>,
    binds: &[SocketAddr],
) -> Option<Pool> {
    let f = &p.value;
    let balance = balance(c, key, f);
    let use_all_when_down = match &f.when_all_down {
        None => false,
        Some(w) => match w.value.as_str() {
            "reject" => false,
            "use_all" => true,
            other => {
                let k = format!("{key}.when_all_down");
                c.at(w, &k, format!("`{other}` is not one of: reject, use_all"));
                false
            }
        },
    };
    let retries = c.number(
        &f.connect_retries,
        &format!("{key}.connect_retries"),
        defaults::CONNECT_RETRIES,
        0..=100,
    );
    let slow_start = c.duration(
        &f.slow_start,
        &format!("{key}.slow_start"),
        Duration::ZERO,
        Duration::ZERO,
    );
    let health_check = f
        .health_check
        .as_ref()
        .and_then(|hc| super::validate_health::health_check(c, &format!("{key}.health_check"), hc));
    let passive_failures = c.number(
        &f.passive
            .as_ref()
            .and_then(|p| p.value.consecutive_failures.clone()),
        &format!("{key}.passive.consecutive_failures"),
        5,
        1..=1000,
    );
    let (backends, named) = backends(c, key, p, binds)?;
    Some(Pool {
        name: name.to_owned(),
        balance,
        health_check,
        connect_retries: u32::try_from(retries).unwrap_or(u32::MAX),
        backends,
        named,
        slow_start,
        use_all_when_down,
        passive_failures: u32::try_from(passive_failures).unwrap_or(5),
    })
}

fn balance(c: &mut Checker, key: &str, f: &PoolFile) -> Balance {
    let with_port = match &f.hash {
        None => false,
        Some(h) => match h.value.as_str() {
            "source_ip" => false,
            "source_ip_port" => true,
            other => {
                c.at(
                    h,
                    &format!("{key}.hash"),
                    format!("`{other}` is not one of: source_ip, source_ip_port"),
                );
                false
            }
        },
    };
    let chosen = match f.balance.as_ref().map(|b| (b, b.value.as_str())) {
        None | Some((_, "round_robin")) => Balance::RoundRobin,
        Some((_, "least_connections")) => Balance::LeastConnections,
        Some((_, "random_two")) => Balance::RandomTwo,
        Some((_, "maglev")) => Balance::Maglev { with_port },
        Some((b, other)) => {
            let msg = format!(
                "`{other}` is not one of: round_robin, least_connections, random_two, maglev"
            );
            c.at(b, &format!("{key}.balance"), msg);
            Balance::RoundRobin
        }
    };
    if let Some(h) = &f.hash
        && !matches!(chosen, Balance::Maglev { .. })
    {
        c.at(
            h,
            &format!("{key}.hash"),
            "`hash` applies only to `balance: maglev`",
        );
    }
    chosen
}

fn backends(
    c: &mut Checker,
    key: &str,
    p: &S<PoolFile>,
    binds: &[SocketAddr],
) -> Option<(Vec<Backend>, Vec<Named>)> {
    let k = format!("{key}.backends");
    let list = match &p.value.backends {
        Some(list) if !list.value.is_empty() => list,
        Some(list) => {
            c.at(list, &k, "at least one backend is required");
            return None;
        }
        None => {
            c.at(p, &k, "at least one backend is required");
            return None;
        }
    };
    let mut out: Vec<Backend> = Vec::new();
    let mut named: Vec<Named> = Vec::new();
    for (i, b) in list.value.iter().enumerate() {
        let k = format!("{k}[{i}]");
        match backend(c, &k, b, binds) {
            Some(Entry::Literal(backend)) => {
                if out.iter().any(|o| o.address == backend.address) {
                    let msg = format!("{} is listed twice in this pool", backend.address);
                    c.at(b, &k, msg);
                }
                out.push(backend);
            }
            Some(Entry::Named(n)) => {
                if named.iter().any(|o| o.lookup == n.lookup) {
                    c.at(b, &k, format!("{} is listed twice in this pool", n.lookup));
                }
                named.push(n);
            }
            None => {}
        }
    }
    let all_zero = out.iter().all(|b| b.weight == 0)
        && named
            .iter()
            .all(|n| matches!(n.lookup, Lookup::Host { .. }) && n.weight == 0);
    if (!out.is_empty() || !named.is_empty()) && all_zero {
        c.at(
            list,
            &k,
            "every backend has weight 0, so this pool could never take a connection",
        );
    }
    Some((out, named))
}

enum Entry {
    Literal(Backend),
    Named(Named),
}

fn backend(c: &mut Checker, key: &str, b: &S<BackendFile>, binds: &[SocketAddr]) -> Option<Entry> {
    let f = &b.value;
    let weight = c.number(
        &f.weight,
        &format!("{key}.weight"),
        defaults::WEIGHT,
        0..=defaults::MAX_WEIGHT,
    );
    let backup = f.backup.as_ref().is_some_and(|b| b.value);
    let kinds = [f.address.is_some(), f.host.is_some(), f.srv.is_some()];
    if kinds.iter().filter(|k| **k).count() != 1 {
        c.at(
            b,
            key,
            "each backend needs exactly one of `address`, `host` or `srv`",
        );
        return None;
    }
    if let Some(port) = &f.port {
        if let Err(e) = values::port(port.value) {
            c.at(port, &format!("{key}.port"), e);
        }
        if f.host.is_none() {
            c.at(
                port,
                &format!("{key}.port"),
                "`port` goes with `host`; write `address: IP:PORT`",
            );
        }
    }
    let weight = u32::try_from(weight).unwrap_or(1);
    if f.host.is_some() || f.srv.is_some() {
        return super::validate_dns::named(c, key, b, weight).map(Entry::Named);
    }
    let addr = f.address.as_ref()?;
    match values::socket_addr(&addr.value, false).and_then(|a| routable(a, binds)) {
        Ok(address) => Some(Entry::Literal(Backend {
            address,
            weight,
            tier: if backup { BACKUP_TIER } else { 0 },
            origin: None,
        })),
        Err(e) => {
            c.at(addr, &format!("{key}.address"), e);
            None
        }
    }
}

/// Refuses destinations that are not one host (wildcard, multicast, broadcast) and ones that
/// are tollgate's own listeners — a connection there would be proxied to itself, endlessly.
pub fn routable(a: SocketAddr, binds: &[SocketAddr]) -> Result<SocketAddr, String> {
    let ip = a.ip();
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_unspecified() || ip.is_multicast() || broadcast {
        return Err(format!(
            "{a} is not a single host (wildcard, multicast or broadcast address)"
        ));
    }
    let loops = binds.iter().any(|b| {
        b.port() == a.port()
            && b.is_ipv4() == a.is_ipv4()
            && (b.ip() == ip || (b.ip().is_unspecified() && ip.is_loopback()))
    });
    if loops {
        return Err(format!(
            "{a} is one of tollgate's own listeners; connections would loop back into it"
        ));
    }
    Ok(a)
}
