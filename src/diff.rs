//! `tollgate check --diff`: what a reload of a file would change in the running instance —
//! listeners, pools, backends, limits and timeouts — and how many open connections the
//! change touches. It asks the running instance's admin API for its effective config and
//! status (`GET /api/v1/config`, `/api/v1/status`) and compares them with the file's, both
//! in the same JSON form (`Config::to_json`). An operator override (a weight set through the
//! API, a drain) that would keep a changed value from applying is named, with the call that
//! drops it, in the words the reload's own log line uses (`control::Masked`).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::admin_client;
use crate::config::Config;
use crate::control::{AdminState, Masked, MaskedBy};

const TIMEOUT: Duration = Duration::from_secs(3);

/// Fetches the running instance's config and status from the admin API at `admin`.
pub fn fetch_running(admin: SocketAddr) -> Result<(Value, Value), String> {
    admin_client::block_on(async {
        let config = admin_client::get_json(admin, "/api/v1/config", TIMEOUT).await?;
        let status = admin_client::get_json(admin, "/api/v1/status", TIMEOUT).await?;
        Ok((config, status))
    })
}

/// The lines describing how `next` differs from the running config; empty when identical.
pub fn describe(running: &Value, status: &Value, next_cfg: &Config) -> Vec<String> {
    let next = next_cfg.to_json();
    let mut out = Vec::new();
    for key in ["forwarding", "admin", "resolver", "shutdown", "logging"] {
        changes(key, &running[key], &next[key], &mut out);
    }
    if running["admin"]["bind"] != next["admin"]["bind"] {
        out.push(
            "  (a reload cannot move, add or remove the admin API: restart to apply it)".to_owned(),
        );
    }
    // What matters is the number of threads: `auto` and the core count are the same thing.
    let resolved = next_cfg.workers.resolve();
    if status["workers"].as_u64() != Some(resolved as u64) {
        changes(
            "workers",
            &status["workers"],
            &serde_json::json!(resolved),
            &mut out,
        );
        out.push("  (a reload cannot change workers: restart to apply it)".to_owned());
    }
    named(
        "listener",
        "name",
        &running["listeners"],
        &next["listeners"],
        &mut out,
        |name| {
            let active = open_connections(find(&status["listeners"], "name", name));
            format!("{active} open connection(s) drain")
        },
    );
    let pool_load = |name: &str| {
        let backends = find(&status["pools"], "name", name)["backends"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        backends.iter().map(open_connections).sum::<u64>()
    };
    for (old, new) in pairs(
        &running["pools"],
        &next["pools"],
        "name",
        &mut out,
        "pool",
        pool_load,
    ) {
        let pool = old["name"].as_str().unwrap_or_default();
        let live = find(&status["pools"], "name", pool);
        for key in POOL_SETTINGS {
            // An instance older than a setting does not serve it: that is no change.
            if let Some(was) = old.get(key) {
                changes(&format!("pool {pool}: {key}"), was, &new[key], &mut out);
            }
        }
        named(
            &format!("pool {pool}: backend"),
            "entry",
            &entries(&old["backends"]),
            &entries(&new["backends"]),
            &mut out,
            |entry| {
                let active: u64 = backends_of(live, entry).map(open_connections).sum();
                format!("{active} open connection(s) drain")
            },
        );
        for m in masked(
            pool,
            &entries(&old["backends"]),
            &entries(&new["backends"]),
            live,
        ) {
            out.push(format!("! {m}"));
        }
    }
    out
}

/// A pool's own settings, compared one by one (its backends are compared entry by entry).
const POOL_SETTINGS: [&str; 7] = [
    "balance",
    "hash",
    "connect_retries",
    "health_check",
    "when_all_down",
    "slow_start",
    "passive",
];

/// The overrides in force on the backends of entries the file changes (`live`: the pool in
/// the running instance's status) that would keep the change from applying after a reload.
fn masked(pool: &str, old: &Value, new: &Value, live: &Value) -> Vec<Masked> {
    let empty = Vec::new();
    let (olds, news) = (
        old.as_array().unwrap_or(&empty),
        new.as_array().unwrap_or(&empty),
    );
    let mut out = Vec::new();
    for n in news {
        let Some(o) = olds.iter().find(|o| o["entry"] == n["entry"]) else {
            continue;
        };
        let field =
            |k: &str| (o[k] != n[k]).then(|| format!("{k} {} -> {}", show(&o[k]), show(&n[k])));
        let weight = field("weight");
        let change: Vec<String> = [weight.clone(), field("backup")]
            .into_iter()
            .flatten()
            .collect();
        if change.is_empty() {
            continue;
        }
        for b in backends_of(live, n["entry"].as_str().unwrap_or_default()) {
            let Some(backend) = b["address"].as_str().and_then(|a| a.parse().ok()) else {
                continue;
            };
            let masked = |change: &str, by| Masked {
                pool: pool.to_owned(),
                backend,
                change: change.to_owned(),
                by,
            };
            // `weight_override` and `state` as an instance older than `overrides` serves them.
            let over = &b["overrides"];
            let w = over["weight"]
                .as_u64()
                .or_else(|| b["weight_override"].as_u64());
            if let (Some(w), Some(change)) = (w.and_then(|w| u32::try_from(w).ok()), &weight) {
                out.push(masked(change, MaskedBy::Weight(w)));
            }
            let state = over["state"].as_str().or_else(|| b["state"].as_str());
            let state = match state {
                Some("draining") => Some(AdminState::Draining),
                Some("disabled") => Some(AdminState::Disabled),
                _ => None,
            };
            if let Some(s) = state {
                out.push(masked(&change.join(", "), MaskedBy::State(s)));
            }
        }
    }
    out
}

/// The backends in a pool's status (`live`) that a config entry serves: a literal address,
/// or every address a `host:`/`srv:` entry resolved to.
fn backends_of<'a>(live: &'a Value, entry: &'a str) -> impl Iterator<Item = &'a Value> {
    let name = entry.split_whitespace().nth(1).unwrap_or(entry);
    live["backends"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter(move |b| b["address"] == entry || b["from_dns"] == name)
}

/// Backend entries keyed for comparison: `entry` is the address, `host NAME port P` or
/// `srv NAME` (the other fields stay and are compared).
fn entries(list: &Value) -> Value {
    let keyed = list.as_array().map(|l| {
        l.iter()
            .map(|b| {
                let id = if let Some(a) = b["address"].as_str() {
                    a.to_owned()
                } else if let Some(h) = b["host"].as_str() {
                    format!("host {h} port {}", b["port"])
                } else {
                    format!("srv {}", show(&b["srv"]))
                };
                let mut out = serde_json::Map::new();
                out.insert("entry".to_owned(), Value::String(id));
                if let Value::Object(fields) = b {
                    for (k, v) in fields
                        .iter()
                        .filter(|(k, _)| !["address", "host", "port", "srv"].contains(&k.as_str()))
                    {
                        out.insert(k.clone(), v.clone());
                    }
                }
                Value::Object(out)
            })
            .collect()
    });
    keyed.map_or(Value::Null, Value::Array)
}

/// Adds `~ what: old -> new` for every leaf that differs (objects are walked).
fn changes(what: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            for (k, nv) in n {
                // A list a running instance predates (`admin.allowed_hosts`) is no change
                // while the file leaves it empty.
                if !o.contains_key(k) && nv.as_array().is_some_and(Vec::is_empty) {
                    continue;
                }
                changes(
                    &format!("{what}.{k}"),
                    o.get(k).unwrap_or(&Value::Null),
                    nv,
                    out,
                );
            }
        }
        _ if old != new => out.push(format!("~ {what}: {} -> {}", show(old), show(new))),
        _ => {}
    }
}

/// Compares two lists of objects keyed by `key`: added, removed (with what draining
/// costs), and changed fields of those in both.
fn named(
    what: &str,
    key: &str,
    old: &Value,
    new: &Value,
    out: &mut Vec<String>,
    removed: impl Fn(&str) -> String,
) {
    let empty = Vec::new();
    let (olds, news) = (
        old.as_array().unwrap_or(&empty),
        new.as_array().unwrap_or(&empty),
    );
    for n in news {
        let id = n[key].as_str().unwrap_or_default();
        match olds.iter().find(|o| o[key] == n[key]) {
            None => {
                let mut fields = n.clone();
                if let Value::Object(f) = &mut fields {
                    f.remove(key);
                }
                out.push(format!("+ {what} {id}: {}", show(&fields)));
            }
            Some(o) if o != n => {
                if let (Value::Object(oo), Value::Object(nn)) = (o, n) {
                    for (k, nv) in nn.iter().filter(|(k, _)| k.as_str() != key) {
                        changes(
                            &format!("{what} {id}: {k}"),
                            oo.get(k).unwrap_or(&Value::Null),
                            nv,
                            out,
                        );
                    }
                }
            }
            Some(_) => {}
        }
    }
    for o in olds
        .iter()
        .filter(|o| !news.iter().any(|n| n[key] == o[key]))
    {
        let id = o[key].as_str().unwrap_or_default();
        out.push(format!("- {what} {id} ({})", removed(id)));
    }
}

/// Pools present in both (for a deeper look), reporting added and removed ones; `open`
/// counts the connections a removed one still has.
fn pairs<'a>(
    old: &'a Value,
    new: &'a Value,
    key: &str,
    out: &mut Vec<String>,
    what: &str,
    open: impl Fn(&str) -> u64,
) -> Vec<(&'a Value, &'a Value)> {
    let empty: &[Value] = &[];
    let olds = old.as_array().map_or(empty, Vec::as_slice);
    let news = new.as_array().map_or(empty, Vec::as_slice);
    let mut both = Vec::new();
    for n in news {
        match olds.iter().find(|o| o[key] == n[key]) {
            Some(o) => both.push((o, n)),
            None => {
                let backends = n["backends"].as_array().map_or(0, Vec::len);
                out.push(format!("+ {what} {}: {backends} backend(s)", show(&n[key])));
            }
        }
    }
    for o in olds
        .iter()
        .filter(|o| !news.iter().any(|n| n[key] == o[key]))
    {
        let id = show(&o[key]);
        out.push(format!(
            "- {what} {id} ({} open connection(s) drain)",
            open(&id)
        ));
    }
    both
}

fn find<'a>(list: &'a Value, key: &str, id: &str) -> &'a Value {
    list.as_array()
        .and_then(|l| l.iter().find(|x| x[key] == id))
        .unwrap_or(&Value::Null)
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The open connections a status entry (listener or backend) reports: `connections_active`,
/// or `active` from an instance older than that name, so a new `check --diff` still counts
/// right against an old instance during an upgrade.
fn open_connections(entry: &Value) -> u64 {
    entry["connections_active"]
        .as_u64()
        .or_else(|| entry["active"].as_u64())
        .unwrap_or(0)
}
