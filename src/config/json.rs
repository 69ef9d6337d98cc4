//! The effective config as JSON — every default filled in, durations in the file's own
//! syntax, the admin token left out. `GET /api/v1/config` serves it and `check --diff`
//! compares two of them, so both sides speak the same form.

use serde_json::{Value, json};

use super::types::{Balance, Config, Forwarding, Workers};
use super::values::format_duration as d;

impl Config {
    pub fn to_json(&self) -> Value {
        let listeners: Vec<Value> = self
            .listeners
            .iter()
            .map(|l| {
                json!({
                    "name": l.name, "protocol": "tcp", "pool": l.pool,
                    "bind": l.bind.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "limits": {"max_connections": l.max_connections},
                    "timeouts": {"connect": d(l.connect_timeout), "idle": d(l.idle_timeout), "proxy_header": d(l.proxy_header_timeout)},
                })
            })
            .collect();
        let pools: Vec<Value> = self
            .pools
            .iter()
            .map(|p| {
                let backends: Vec<Value> = p
                    .backends
                    .iter()
                    .map(|b| json!({"address": b.address.to_string(), "weight": b.weight}))
                    .collect();
                let hash = match p.balance {
                    Balance::Maglev { with_port: true } => json!("source_ip_port"),
                    Balance::Maglev { with_port: false } => json!("source_ip"),
                    _ => Value::Null,
                };
                json!({
                    "name": p.name, "balance": p.balance.label(), "hash": hash,
                    "connect_retries": p.connect_retries, "backends": backends,
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
            json!({"bind": a.bind.to_string(), "token_file": a.token_file.as_ref().map(|p| p.display().to_string())})
        });
        json!({
            "workers": workers,
            "forwarding": forwarding,
            "admin": admin,
            "shutdown": {"drain_timeout": d(self.drain_timeout)},
            "listeners": listeners,
            "pools": pools,
        })
    }
}
