//! The JSON views the admin API serves: status, one backend, the effective config (secrets
//! left out) and readiness. Built from the published snapshot and the live registry, read
//! at request time.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;

use serde_json::{Value, json};

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::config::{Config, Lookup};
use crate::control::Control;
use crate::discovery::NameState;
use crate::state::Backend;

pub(crate) fn status(control: &Control) -> Value {
    let snapshot = control.plane.snapshot.load_full();
    let config = control.config();
    let listeners: Vec<Value> = config
        .listeners
        .iter()
        .filter_map(|l| {
            let spec = snapshot.listener(&l.name)?;
            let live = &spec.live;
            Some(json!({
                "name": l.name,
                "pool": l.pool,
                "bind": control.addrs(&l.name).iter().map(ToString::to_string).collect::<Vec<_>>(),
                "active": live.active.load(Relaxed),
                "accepted": live.accepted.load(Relaxed),
                "accept_errors": live.accept_errors.load(Relaxed),
                "rejected_no_backend": live.rejected_no_backend.load(Relaxed),
                "max_connections": live.max_connections(),
                "rejected_acl": live.rejected_acl.load(Relaxed),
                "rejected": crate::admission::Reason::ALL
                    .iter()
                    .map(|r| (r.label().to_owned(), json!(live.rejected(*r).load(Relaxed))))
                    .collect::<serde_json::Map<_, _>>(),
                "deny": spec.admission.runtime_deny.blocks().iter().map(ToString::to_string).collect::<Vec<_>>(),
                "tracked_sources": spec.admission.per_source.as_ref().map(|ps| ps.table.tracked()),
            }))
        })
        .collect();
    let dns = control.discovery.states();
    let pools: Vec<Value> = config
        .pools
        .iter()
        .filter_map(|p| {
            let pool = snapshot.pool(&p.name)?;
            let backends: Vec<Value> = pool
                .backends
                .iter()
                .map(|b| backend_json(control, &p.name, b))
                .collect();
            let names: Vec<Value> = p
                .named
                .iter()
                .map(|n| name_json(dns.get(&(p.name.clone(), n.lookup.clone())), &n.lookup))
                .collect();
            Some(json!({"name": p.name, "balance": pool.algorithm.label(), "backends": backends, "names": names}))
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "generation": control.generation(),
        "workers": control.worker_count(),
        "draining": control.draining.load(Relaxed),
        "listeners": listeners,
        "pools": pools,
    })
}

/// One DNS entry: the answer in force, its TTL and age, and when it is asked again.
fn name_json(state: Option<&NameState>, lookup: &Lookup) -> Value {
    let (now, wall) = (Instant::now(), SystemTime::now());
    let unix_ms = |at: Instant| {
        let at = if at >= now {
            wall + (at - now)
        } else {
            wall - (now - at)
        };
        at.duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    };
    let port = match lookup {
        Lookup::Host { port, .. } => Some(*port),
        Lookup::Srv { .. } => None,
    };
    let Some(s) = state else {
        return json!({"name": lookup.name(), "type": lookup.kind(), "port": port, "result": null, "addresses": []});
    };
    json!({
        "name": lookup.name(),
        "type": lookup.kind(),
        "port": port,
        "result": (!s.last_result.is_empty()).then_some(s.last_result),
        "error": s.last_error,
        "addresses": s.resolved.iter().map(|r| json!({
            "address": r.address.to_string(),
            "weight": r.weight,
            "priority_rank": r.rank,
        })).collect::<Vec<_>>(),
        "ttl_seconds": s.ttl,
        "answered_at_unix_ms": s.answered_at.map(unix_ms),
        "age_seconds": s.answered_at.map(|at| now.saturating_duration_since(at).as_secs_f64().floor()),
        "next_refresh_unix_ms": s.next_refresh.map(unix_ms),
        "next_refresh_in_ms": s.next_refresh.map(|at| at.saturating_duration_since(now).as_millis() as u64),
    })
}

fn backend_json(control: &Control, pool: &str, b: &Backend) -> Value {
    let ov = control.live.override_of(pool, b.address);
    let health = control.live.health_of(pool, b.address);
    let config = control.config();
    let entry = config
        .pool(pool)
        .and_then(|p| p.backends.iter().find(|c| c.address == b.address));
    let configured = entry.map_or(0, |c| c.weight);
    let state = match ov.state {
        crate::live::AdminState::Active if !health.up => "down",
        other => other.label(),
    };
    let last_check = health.last.as_ref().map(|o| {
        let at = o.at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        json!({"result": if o.ok { "success" } else { "failure" }, "detail": o.detail, "at_unix_ms": at})
    });
    json!({
        "address": b.address.to_string(),
        "state": state,
        "weight": ov.weight.unwrap_or(configured),
        "configured_weight": configured,
        "effective_weight": f64::from(b.weight) / f64::from(crate::policy::SCALE),
        "active": b.stats.active.load(Relaxed),
        "connections": b.stats.connections.load(Relaxed),
        "connect_failures": b.stats.failures(),
        "sent_bytes": b.stats.sent_bytes.load(Relaxed),
        "received_bytes": b.stats.received_bytes.load(Relaxed),
        "last_check": last_check,
        "tier": entry.map_or(0, |c| c.tier),
        "from_dns": entry.and_then(|c| c.origin.as_deref()),
    })
}

/// Why a source would be admitted or refused (`GET /api/v1/listeners/{l}/sources/{ip}`).
pub(crate) fn verdict(
    listener: &str,
    source: std::net::IpAddr,
    v: &crate::control::Verdict,
) -> Value {
    let e = &v.explanation;
    let per_source = e.source.as_ref().map(|s| {
        json!({
            "group": s.group.to_string(),
            "tracked": s.tracked,
            "connection_rate": s.rate.map(|r| r.label()),
            "burst": s.rate.map(|r| r.burst),
            "tokens": s.tokens.map(|t| (t * 1000.0).floor() / 1000.0),
            "next_token_in_ms": s.next_token_in.map(|d| d.as_secs_f64() * 1000.0),
            "open_connections": s.open,
            "max_connections": s.max_connections,
            "tracked_sources": s.tracked_sources,
            "max_tracked_sources": s.max_tracked_sources,
        })
    });
    json!({
        "listener": listener,
        "source": source.to_canonical().to_string(),
        "admitted": e.admitted,
        "reason": e.reason.map(|r| r.label()),
        "rule": {"kind": e.rule.kind(), "cidr": e.rule.cidr().map(|c| c.to_string())},
        "allowed_by": e.allowed_by.map(|c| c.to_string()),
        "per_source": per_source,
        "listener_connections": {"active": v.listener_active, "max": v.listener_max},
    })
}

/// One backend's status, after an admin action.
pub(crate) fn backend(control: &Control, pool: &str, address: SocketAddr) -> Value {
    let snapshot = control.plane.snapshot.load_full();
    snapshot
        .pool(pool)
        .and_then(|p| p.backends.iter().find(|b| b.address == address))
        .map_or(Value::Null, |b| backend_json(control, pool, b))
}

/// Why the instance should not take traffic now; empty when ready.
pub(crate) fn unready_reasons(control: &Control) -> Vec<String> {
    let mut reasons = Vec::new();
    if control.draining.load(Relaxed) {
        reasons.push("draining: shutting down".to_owned());
    }
    let config = control.config();
    let bound = control.bound().clone();
    for l in &config.listeners {
        for addr in &l.bind {
            if !bound.contains_key(&(l.name.clone(), *addr)) {
                reasons.push(format!("listener {}: {addr} is not bound", l.name));
            }
        }
    }
    let snapshot = control.plane.snapshot.load_full();
    let dns = control.discovery.states();
    let dns_error = control.discovery.client_error();
    for p in &config.pools {
        if snapshot
            .pool(&p.name)
            .is_some_and(|pool| pool.has_selectable())
        {
            continue;
        }
        reasons.push(format!("pool {}: no backend is up", p.name));
        for n in &p.named {
            let state = dns.get(&(p.name.clone(), n.lookup.clone()));
            let why = match (state, &dns_error) {
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
    reasons
}

/// The effective config as JSON (see [`Config::to_json`]).
pub(crate) fn config(config: &Config) -> Value {
    config.to_json()
}
