//! The effective config as JSON — every default filled in, durations in the file's own
//! syntax, the admin token left out. `GET /api/v1/config` serves it and `check --diff`
//! compares two of them, so both sides speak the same form.

use serde_json::{Value, json};

use super::types::{
    Balance, CheckKind, Config, Forwarding, HealthCheck, Lookup, Protocol, ProxyVersion, Workers,
};
use super::values::format_duration as d;

impl Config {
    pub fn to_json(&self) -> Value {
        let listeners: Vec<Value> = self
            .listeners
            .iter()
            .map(|l| {
                let list = |v: &[crate::admission::Cidr]| {
                    v.iter().map(ToString::to_string).collect::<Vec<_>>()
                };
                let per_source = l.per_source.as_ref().map(|ps| {
                    json!({
                        "connection_rate": ps.connection_rate.map_or_else(
                            || "none".to_owned(),
                            |(n, period)| crate::admission::Rate::new(n, period, 0).label(),
                        ),
                        "burst": ps.burst,
                        "max_connections": ps.max_connections.map_or(json!("none"), |n| json!(n)),
                        "ipv4_prefix": ps.ipv4_prefix,
                        "ipv6_prefix": ps.ipv6_prefix,
                        "exempt": list(&ps.exempt),
                        "max_tracked_sources": ps.max_tracked_sources,
                    })
                });
                let mut out = json!({
                    "name": l.name, "protocol": l.protocol.name(), "pool": l.pool,
                    "bind": l.bind.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "access": {"allow": list(&l.access.allow), "deny": list(&l.access.deny)},
                });
                // Each protocol shows the settings it uses: what a UDP listener refuses
                // (connection caps and timeouts) would only mislead here.
                match l.protocol {
                    Protocol::Tcp => {
                        out["limits"] = json!({"max_connections": l.max_connections, "per_source": per_source});
                        out["timeouts"] = json!({"connect": d(l.connect_timeout), "idle": d(l.idle_timeout), "proxy_header": d(l.proxy_header_timeout)});
                        out["proxy_protocol"] = json!({
                            "send": proxy_name(l.proxy_send),
                            "accept_from": list(&l.proxy_accept),
                        });
                        out["sni"] = l.sni.as_ref().map_or(Value::Null, |s| s.to_json());
                    }
                    Protocol::Udp(u) => {
                        out["limits"] = json!({"per_source": per_source});
                        out["proxy_protocol"] = json!({"send": proxy_name(l.proxy_send)});
                        out["udp"] = json!({
                            "session_idle": d(u.session_idle),
                            "max_sessions": u.max_sessions,
                            "responses": u.responses,
                        });
                    }
                }
                out
            })
            .collect();
        let pools: Vec<Value> = self
            .pools
            .iter()
            .map(|p| {
                let literal = p.backends.iter().filter(|b| b.origin.is_none()).map(|b| {
                    json!({"address": b.address.to_string(), "weight": b.weight, "backup": b.tier > 0})
                });
                let named = p.named.iter().map(|n| match &n.lookup {
                    Lookup::Host { name, port } => {
                        json!({"host": name, "port": port, "weight": n.weight, "backup": n.backup})
                    }
                    Lookup::Srv { name } => json!({"srv": name, "backup": n.backup}),
                });
                let backends: Vec<Value> = literal.chain(named).collect();
                let hash = match p.balance {
                    Balance::Maglev { with_port: true } => json!("source_ip_port"),
                    Balance::Maglev { with_port: false } => json!("source_ip"),
                    _ => Value::Null,
                };
                json!({
                    "name": p.name, "balance": p.balance.label(), "hash": hash,
                    "connect_retries": p.connect_retries, "backends": backends,
                    "health_check": p.health_check.as_ref().map(health_check),
                    "when_all_down": if p.use_all_when_down { "use_all" } else { "reject" },
                    "slow_start": d(p.slow_start),
                    "passive": {"consecutive_failures": p.passive_failures},
                })
            })
            .collect();
        let workers = match self.workers {
            Workers::Auto => json!("auto"),
            Workers::Fixed(n) => json!(n.get()),
        };
        let forwarding = match self.forwarding {
            Forwarding::Splice => "splice",
            Forwarding::Copy => "copy",
        };
        let admin = self.admin.as_ref().map(|a| {
            json!({
                "bind": a.bind.to_string(),
                "token_file": a.token_file.as_ref().map(|p| p.display().to_string()),
                "allowed_hosts": a.allowed_hosts.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })
        });
        let r = &self.resolver;
        let resolver = json!({
            "nameservers": r.nameservers.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "min_ttl": d(r.min_ttl), "max_ttl": d(r.max_ttl),
            "negative_hold": d(r.negative_hold), "timeout": d(r.timeout),
        });
        json!({
            "workers": workers,
            "forwarding": forwarding,
            "admin": admin,
            "resolver": resolver,
            "shutdown": {"drain_timeout": d(self.drain_timeout)},
            "logging": {
                "access": self.logging.access,
                "access_rate": self.logging.access_rate.map_or_else(
                    || "none".to_owned(),
                    |(n, period)| crate::admission::Rate::new(n, period, 0).label(),
                ),
            },
            "listeners": listeners,
            "pools": pools,
        })
    }
}

/// A pool's `health_check` with every default filled in; probe bytes escaped as in a YAML
/// double-quoted string.
fn health_check(hc: &HealthCheck) -> Value {
    let bytes = |b: &[u8]| b.escape_ascii().to_string();
    let (kind, send, expect, http) = match &hc.kind {
        CheckKind::Tcp => ("tcp", None, None, None),
        CheckKind::SendExpect { send, expect } => {
            ("send_expect", Some(bytes(send)), Some(bytes(expect)), None)
        }
        CheckKind::Udp { send, expect } => ("udp", Some(bytes(send)), Some(bytes(expect)), None),
        CheckKind::Http {
            path,
            host,
            expect_status,
        } => {
            let status = super::summary::status_list(expect_status);
            let http = json!({"path": path, "host": host, "expect_status": status});
            ("http", None, None, Some(http))
        }
    };
    json!({
        "type": kind, "interval": d(hc.interval), "timeout": d(hc.timeout),
        "rise": hc.rise, "fall": hc.fall, "port": hc.port,
        "send": send, "expect": expect, "http": http,
        "proxy_protocol": proxy_name(hc.proxy_protocol),
    })
}

/// `proxy_protocol` values as the file writes them.
fn proxy_name(v: Option<ProxyVersion>) -> &'static str {
    match v {
        None => "none",
        Some(ProxyVersion::V1) => "v1",
        Some(ProxyVersion::V2) => "v2",
    }
}
