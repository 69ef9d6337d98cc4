//! The JSON views the admin API serves: status, one backend, the effective config (secrets
//! left out) and explanations. Each answer is built from one published control view (and
//! the live counters of the snapshot in it), so it shows one instant.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;

use serde_json::{Value, json};

use std::time::{Instant, SystemTime};

use crate::config::{Config, Lookup};
use crate::control::view::unix_ms;
use crate::control::{AdminState, BackendView, Counts, Handle, MaskedBy, Reloaded, View};
use crate::discovery::NameState;

pub(crate) fn status(control: &Handle) -> Value {
    let view = control.view();
    let snapshot = &view.snapshot;
    let listeners: Vec<Value> = view
        .written
        .listeners
        .iter()
        .filter_map(|l| {
            let spec = snapshot.listener(&l.name)?;
            let live = &spec.live;
            if let Some(udp) = spec.udp {
                return Some(udp_listener_json(&view, l, spec, udp));
            }
            let rejected: serde_json::Map<String, Value> = [
                ("no_backend", &live.rejected_no_backend),
                ("proxy_protocol", &live.rejected_proxy_protocol),
                ("sni", &live.rejected_sni),
            ]
                .into_iter()
                .chain(crate::admission::Reason::ALL.iter().map(|r| (r.label(), live.rejected(*r))))
                .map(|(reason, n)| (reason.to_owned(), json!(n.load(Relaxed))))
                .collect();
            let aborted: serde_json::Map<String, Value> = crate::state::Side::ALL
                .iter()
                .map(|side| {
                    let by_failure: serde_json::Map<String, Value> = crate::state::Failure::ALL
                        .iter()
                        .map(|why| (why.label().to_owned(), json!(live.aborted(*side, *why).load(Relaxed))))
                        .collect();
                    (side.label().to_owned(), Value::Object(by_failure))
                })
                .collect();
            Some(json!({
                "name": l.name,
                "protocol": "tcp",
                "pool": l.pool,
                "sni": l.sni.as_ref().map(|s| s.to_json()),
                "bind": view.addrs(&l.name).iter().map(ToString::to_string).collect::<Vec<_>>(),
                "connections_active": live.active.load(Relaxed),
                "connections_accepted": live.accepted.load(Relaxed),
                "accept_errors": live.accept_errors.load(Relaxed),
                "max_connections": live.max_connections(),
                "rejected": rejected,
                "aborted": aborted,
                "deny": spec.admission.runtime_deny.blocks().iter().map(ToString::to_string).collect::<Vec<_>>(),
                "tracked_sources": spec.admission.per_source.as_ref().map(|ps| ps.table.tracked()),
            }))
        })
        .collect();
    let pools: Vec<Value> = view
        .effective
        .pools
        .iter()
        .filter_map(|p| {
            let pool = snapshot.pool(&p.name)?;
            let backends: Vec<Value> = view.backends(&p.name).iter().map(backend_json).collect();
            let names: Vec<Value> = p
                .named
                .iter()
                .map(|n| name_json(view.dns.states.get(&(p.name.clone(), n.lookup.clone())), &n.lookup))
                .collect();
            Some(json!({"name": p.name, "balance": pool.algorithm.label(), "backends": backends, "names": names}))
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": view.pid,
        "started_at_unix_ms": unix_ms(view.started_at),
        "generation": view.generation,
        "workers": view.workers,
        "draining": control.draining(),
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
        crate::control::view::unix_ms(at)
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

fn backend_json(b: &BackendView<'_>) -> Value {
    let stats = &b.backend.stats;
    let last_check = b.last_check.map(
        |o| json!({"result": o.result.label(), "detail": o.detail, "at_unix_ms": unix_ms(o.at)}),
    );
    json!({
        "address": b.backend.address.to_string(),
        "state": b.state,
        "health": b.health,
        "configured_weight": b.configured_weight,
        "overrides": overrides(b),
        "effective_weight": f64::from(b.backend.weight) / f64::from(crate::policy::SCALE),
        "connections_active": stats.active.load(Relaxed),
        "connections_total": stats.connections.load(Relaxed),
        "connect_failures": stats.failures(),
        "sent_bytes": stats.sent_bytes.load(Relaxed),
        "received_bytes": stats.received_bytes.load(Relaxed),
        "last_check": last_check,
        "tier": b.tier,
        "from_dns": b.from_dns,
    })
}

/// Every operator override in force on a backend, by what it replaces: `weight` (PUT
/// `.../weight`, dropped by DELETE) and `state` (`draining` or `disabled`, dropped by
/// `.../enable`); empty when the config alone decides.
fn overrides(b: &BackendView<'_>) -> Value {
    let mut o = serde_json::Map::new();
    if let Some(w) = b.weight_override {
        o.insert("weight".to_owned(), json!(w));
    }
    if b.admin != AdminState::Active {
        o.insert("state".to_owned(), json!(b.admin.label()));
    }
    Value::Object(o)
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
            // What a source holds open: connections, or a UDP listener's sessions.
            (if v.udp { "open_sessions" } else { "open_connections" }): s.open,
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
        (if v.udp { "listener_sessions" } else { "listener_connections" }): {"active": v.listener_active, "max": v.listener_max},
    })
}

/// One backend's status, after an admin action.
pub(crate) fn backend(control: &Handle, pool: &str, address: SocketAddr) -> Value {
    let view: std::sync::Arc<View> = control.view();
    view.backends(pool)
        .iter()
        .find(|b| b.backend.address == address)
        .map_or(Value::Null, backend_json)
}

/// A reload's answer: the new generation, what changed (counts of listeners, pools and
/// backend entries), and the overrides that mask a changed value, with the call that drops
/// each.
pub(crate) fn reloaded(r: &Reloaded) -> Value {
    let counts = |c: &Counts| json!({"added": c.added, "removed": c.removed, "changed": c.changed});
    let masked: Vec<Value> = r
        .masked
        .iter()
        .map(|m| {
            let by = match m.by {
                MaskedBy::Weight(w) => json!({"weight": w}),
                MaskedBy::State(s) => json!({"state": s.label()}),
            };
            json!({
                "pool": m.pool, "backend": m.backend.to_string(), "change": m.change,
                "override": by, "drop_with": m.drop_with(),
            })
        })
        .collect();
    let c = &r.changes;
    json!({
        "generation": r.generation,
        "changes": {"listeners": counts(&c.listeners), "pools": counts(&c.pools), "backends": counts(&c.backends)},
        "masked_by_overrides": masked,
    })
}

/// The effective config as JSON (see [`Config::to_json`]).
pub(crate) fn config(config: &Config) -> Value {
    config.to_json()
}

/// A UDP listener in status: sessions instead of connections.
fn udp_listener_json(
    view: &View,
    l: &crate::config::Listener,
    spec: &crate::state::ListenerSpec,
    settings: crate::state::UdpSpec,
) -> Value {
    use crate::state::{Direction, UdpRefusal};
    let udp = &spec.live.udp;
    let rejected: serde_json::Map<String, Value> = UdpRefusal::ALL
        .iter()
        .map(|r| (r.label().to_owned(), json!(udp.rejected(*r).load(Relaxed))))
        .collect();
    let way = |d: Direction| {
        json!({
            "datagrams": udp.datagrams(d).load(Relaxed),
            "bytes": udp.bytes(d).load(Relaxed),
            "dropped": udp.dropped[d as usize].load(Relaxed),
        })
    };
    json!({
        "name": l.name,
        "protocol": "udp",
        "pool": l.pool,
        "bind": view.addrs(&l.name).iter().map(ToString::to_string).collect::<Vec<_>>(),
        "sessions_active": udp.sessions_active.load(Relaxed),
        "sessions_total": udp.sessions_total.load(Relaxed),
        "max_sessions": settings.max_sessions,
        "rejected": rejected,
        "to_backend": way(Direction::ToBackend),
        "to_client": way(Direction::ToClient),
        "deny": spec.admission.runtime_deny.blocks().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "tracked_sources": spec.admission.per_source.as_ref().map(|ps| ps.table.tracked()),
    })
}
