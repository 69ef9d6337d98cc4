//! The one-screen summary `tollgate check` prints of a valid config: what each listener
//! binds and where it sends connections, its limits and timeouts; each pool's balancing,
//! health check, failure policy and backends (literal and named in DNS); the resolver those
//! names use. Durations are shown in the file's own syntax (`10m`, not `600s`), so a value
//! reads the same here as in the file and in `check --diff`.

use std::fmt::Write;

use super::types::{
    CheckKind, Config, Forwarding, HealthCheck, Listener, Lookup, Pool, Protocol, Workers,
};
use super::values::format_duration as d;

impl Config {
    /// The summary, one line per fact, ending with a newline.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let workers = match self.workers {
            Workers::Auto => format!("auto ({})", self.workers.resolve()),
            Workers::Fixed(n) => n.to_string(),
        };
        let forwarding = match self.forwarding {
            Forwarding::Splice => "splice",
            Forwarding::Copy => "copy",
        };
        let _ = writeln!(out, "workers: {workers}, forwarding: {forwarding}");
        let _ = writeln!(out, "drain timeout: {}", d(self.drain_timeout));
        let access = match (self.logging.access, self.logging.access_rate) {
            (false, _) => "off".to_owned(),
            (true, None) => "on, every line".to_owned(),
            (true, Some((n, period))) => format!(
                "on, up to {} (lines beyond are counted, not written)",
                crate::admission::Rate::new(n, period, 0).label()
            ),
        };
        let _ = writeln!(out, "access log: {access}");
        if let Some(a) = &self.admin {
            let auth = if a.token.is_some() {
                "bearer token"
            } else {
                "no token"
            };
            let _ = writeln!(out, "admin: {} ({auth})", a.bind);
            if !a.allowed_hosts.is_empty() {
                let hosts: Vec<String> = a.allowed_hosts.iter().map(ToString::to_string).collect();
                let _ = writeln!(out, "  allowed hosts: {}", hosts.join(", "));
            }
        }
        let _ = writeln!(out, "listeners ({}):", self.listeners.len());
        for l in &self.listeners {
            listener(&mut out, l);
        }
        let _ = writeln!(out, "pools ({}):", self.pools.len());
        for p in &self.pools {
            // Connect retries and passive checks are about TCP connects: a pool only UDP
            // listeners use has neither.
            let tcp = self
                .listeners
                .iter()
                .any(|l| l.pools().any(|n| n == p.name) && !l.protocol.is_udp());
            pool(&mut out, p, tcp);
        }
        let names: usize = self.pools.iter().map(|p| p.named.len()).sum();
        if names > 0 {
            let r = &self.resolver;
            let servers = if r.nameservers.is_empty() {
                "from /etc/resolv.conf".to_owned()
            } else {
                r.nameservers
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                out,
                "resolver ({names} DNS name(s)): {servers}; TTL clamped to {}-{}; negative answers held {}; query timeout {}",
                d(r.min_ttl),
                d(r.max_ttl),
                d(r.negative_hold),
                d(r.timeout)
            );
        }
        out
    }
}

fn listener(out: &mut String, l: &Listener) {
    let binds: Vec<String> = l.bind.iter().map(ToString::to_string).collect();
    let to = l.pool.as_ref().map_or_else(
        || "by TLS server name".to_owned(),
        |pool| format!("pool {pool}"),
    );
    let _ = writeln!(
        out,
        "  {} {} {} -> {to}",
        l.name,
        l.protocol.name(),
        binds.join(", "),
    );
    if let Some(sni) = &l.sni {
        sni_routes(out, sni);
    }
    let sized = " (not set: as many as fit the open-file limit)";
    match l.protocol {
        Protocol::Tcp => {
            let sized = if l.max_connections_sized { sized } else { "" };
            let _ = writeln!(
                out,
                "    limits: at most {} connections open at once{sized}",
                l.max_connections
            );
            if let Some(v) = l.proxy_send {
                let v = if v == super::types::ProxyVersion::V1 {
                    "v1"
                } else {
                    "v2"
                };
                let _ = writeln!(
                    out,
                    "    proxy protocol: a {v} header with the client's address to each backend"
                );
            }
            if !l.proxy_accept.is_empty() {
                let from: Vec<String> = l.proxy_accept.iter().map(ToString::to_string).collect();
                let _ = writeln!(
                    out,
                    "    proxy protocol: a header required from {} within {}; its client address is the one limits and logs see",
                    from.join(", "),
                    d(l.proxy_header_timeout)
                );
            }
        }
        Protocol::Udp(u) => {
            let sized = if u.max_sessions_sized { sized } else { "" };
            let ends = u.responses.map_or_else(String::new, |n| {
                format!(", or after {n} repl{}", if n == 1 { "y" } else { "ies" })
            });
            let _ = writeln!(
                out,
                "    sessions: at most {} at once{sized}; each ends after {} without a datagram{ends}",
                u.max_sessions,
                d(u.session_idle)
            );
            if l.proxy_send.is_some() {
                let _ = writeln!(
                    out,
                    "    proxy protocol: a v2 header with the client's address on each session's first datagram"
                );
            }
        }
    }
    match &l.per_source {
        None => {
            let _ = writeln!(out, "    per source: no limits");
        }
        Some(ps) => {
            let rate = ps.connection_rate.map_or_else(
                || "no rate limit".to_owned(),
                |(n, period)| {
                    let r = crate::admission::Rate::new(n, period, ps.burst);
                    format!("{} burst {}", r.label(), ps.burst)
                },
            );
            let open = ps
                .max_connections
                .map_or_else(|| "no cap".to_owned(), |n| format!("at most {n} open"));
            let _ = writeln!(
                out,
                "    per source (/{} IPv4, /{} IPv6): {rate}, {open}, {} exempt block(s), {} sources tracked at most",
                ps.ipv4_prefix,
                ps.ipv6_prefix,
                ps.exempt.len(),
                ps.max_tracked_sources
            );
        }
    }
    if !l.protocol.is_udp() {
        let _ = writeln!(
            out,
            "    timeouts: connect {}, idle {}",
            d(l.connect_timeout),
            d(l.idle_timeout)
        );
    }
    if !l.access.allow.is_empty() || !l.access.deny.is_empty() {
        let _ = writeln!(
            out,
            "    access: allow {} block(s), deny {} block(s)",
            l.access.allow.len(),
            l.access.deny.len()
        );
    }
}

fn pool(out: &mut String, p: &Pool, tcp: bool) {
    let retries = if tcp {
        format!(", {} connect retries", p.connect_retries)
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "  {} {}, {} backend(s){retries}",
        p.name,
        p.balance.label(),
        p.backends.len() + p.named.len(),
    );
    let unchecked = if tcp {
        "none (backends are up unless passive checks fail)"
    } else {
        "none (backends are up)"
    };
    let check = p
        .health_check
        .as_ref()
        .map_or_else(|| unchecked.to_owned(), health_check);
    let _ = writeln!(out, "    health check: {check}");
    let slow_start = if p.slow_start.is_zero() {
        "off".to_owned()
    } else {
        d(p.slow_start)
    };
    let passive = if tcp {
        format!(
            "; passive: down after {} connect failures in a row",
            p.passive_failures
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "    when all down: {}; slow start: {slow_start}{passive}",
        if p.use_all_when_down {
            "use_all"
        } else {
            "reject"
        },
    );
    for b in &p.backends {
        let backup = if b.tier > 0 { ", backup" } else { "" };
        let _ = writeln!(out, "    {} weight {}{backup}", b.address, b.weight);
    }
    for n in &p.named {
        let backup = if n.backup { ", backup" } else { "" };
        let _ = match &n.lookup {
            Lookup::Host { .. } => writeln!(out, "    {} weight {}{backup}", n.lookup, n.weight),
            Lookup::Srv { .. } => {
                writeln!(out, "    {} (weights and ports from DNS){backup}", n.lookup)
            }
        };
    }
}

/// `http GET /healthz, status 200-399, every 2s (timeout 1s, rise 2, fall 3)`.
fn health_check(hc: &HealthCheck) -> String {
    let what = match &hc.kind {
        CheckKind::Tcp => "tcp connect".to_owned(),
        CheckKind::SendExpect { send, expect } => format!(
            "send_expect \"{}\", reply starts \"{}\"",
            send.escape_ascii(),
            expect.escape_ascii()
        ),
        CheckKind::Udp { send, expect } => format!(
            "udp \"{}\", reply starts \"{}\"",
            send.escape_ascii(),
            expect.escape_ascii()
        ),
        CheckKind::Http {
            path,
            host,
            expect_status,
        } => {
            let host = host
                .as_ref()
                .map_or_else(String::new, |h| format!(" (Host: {h})"));
            format!(
                "http GET {path}{host}, status {}",
                status_list(expect_status)
            )
        }
    };
    let port = hc
        .port
        .map_or_else(String::new, |p| format!(", on port {p}"));
    format!(
        "{what}{port}, every {} (timeout {}, rise {}, fall {})",
        d(hc.interval),
        d(hc.timeout),
        hc.rise,
        hc.fall
    )
}

/// `200-399` or `200,204`, as the file writes it.
pub(super) fn status_list(ranges: &[(u16, u16)]) -> String {
    ranges
        .iter()
        .map(|(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// An `sni` listener's routes, one line per pool in the order first named, then the rest.
fn sni_routes(out: &mut String, sni: &super::types::Sni) {
    for (pool, names) in sni.by_pool() {
        let _ = writeln!(out, "    sni: {} -> pool {pool}", names.join(", "));
    }
    let rest = sni.default_pool.as_deref().map_or_else(
        || "refused (no default_pool)".to_owned(),
        |p| format!("pool {p}"),
    );
    let _ = writeln!(
        out,
        "    sni: any other name, or none -> {rest}; the ClientHello must arrive within {}",
        d(sni.peek_timeout)
    );
}
