//! What a run measures: the workloads (their names for `TOLLGATE_COMPARE_ONLY`, which
//! contenders each measures and why the others show n/a, the names its results are recorded
//! under) and the settings read from the environment (see `main.rs` for the list).

use std::env;

use anyhow::{Context, Result, bail};

use crate::contenders::Contender;
use crate::{dns, http, tls, udp_bulk, upgrade};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Workload {
    Bulk,
    Conns,
    ReqResp,
    TlsSni,
    Memory,
    Startup,
    Reload,
    UdpDns,
    UdpBulk,
    UdpMemory,
    Upgrade,
}

impl Workload {
    pub const ALL: [Workload; 11] = [
        Workload::Bulk,
        Workload::Conns,
        Workload::ReqResp,
        Workload::TlsSni,
        Workload::Memory,
        Workload::Startup,
        Workload::Reload,
        Workload::UdpDns,
        Workload::UdpBulk,
        Workload::UdpMemory,
        Workload::Upgrade,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Bulk => "bulk",
            Workload::Conns => "conns",
            Workload::ReqResp => "reqresp",
            Workload::TlsSni => "tls-sni",
            Workload::Memory => "memory",
            Workload::Startup => "startup",
            Workload::Reload => "reload",
            Workload::UdpDns => "udp-dns",
            Workload::UdpBulk => "udp-bulk",
            Workload::UdpMemory => "udp-memory",
            Workload::Upgrade => "upgrade",
        }
    }

    fn parse(name: &str) -> Option<Workload> {
        let name = match name {
            "conns/s" => "conns",
            "req/resp" => "reqresp",
            other => other,
        };
        Workload::ALL.into_iter().find(|w| w.name() == name)
    }

    fn is_udp(self) -> bool {
        matches!(
            self,
            Workload::UdpDns | Workload::UdpBulk | Workload::UdpMemory
        )
    }

    /// Which contenders the workload measures (the others show n/a).
    pub fn measures(self, c: Contender) -> bool {
        match self {
            Workload::Bulk | Workload::Conns | Workload::ReqResp => self.unsupported(c).is_none(),
            Workload::Memory | Workload::Startup => {
                c != Contender::Direct && self.unsupported(c).is_none()
            }
            Workload::Reload => c == Contender::Tollgate,
            Workload::TlsSni | Workload::UdpDns | Workload::UdpBulk => {
                self.unsupported(c).is_none()
            }
            Workload::UdpMemory => c != Contender::Direct && self.unsupported(c).is_none(),
            Workload::Upgrade => matches!(c, Contender::Tollgate | Contender::Haproxy),
        }
    }

    /// Why a contender cannot take part at all, shown in its cells instead of a bare n/a.
    pub fn unsupported(self, c: Contender) -> Option<&'static str> {
        let haproxy = matches!(c, Contender::Haproxy | Contender::HaproxySplice);
        if self == Workload::Upgrade && c == Contender::Nginx {
            // nginx ignores USR2 while its master's parent is the one that started it (its
            // "changing binary signal is ignored"): only a daemonised master, which would
            // outlive the harness, can upgrade.
            return Some("n/a (not run: nginx upgrades its binary only when daemonised)");
        }
        if self == Workload::Upgrade && c == Contender::HaproxySplice {
            return Some("n/a (not run: splice changes nothing in a reload)");
        }
        if self == Workload::TlsSni && c == Contender::HaproxySplice {
            return Some("n/a (not run: a handshake has no bulk data to splice)");
        }
        // Where connections close after a short exchange; elsewhere nginx's half-close
        // setting changes nothing worth a run.
        if c == Contender::NginxHalfClose && !matches!(self, Workload::Conns | Workload::TlsSni) {
            return Some("n/a (run where connections close: conns/s, tls-sni)");
        }
        // A line per connection: the workload of many short connections shows its cost.
        if c == Contender::TollgateAccessLog && self != Workload::Conns {
            return Some("n/a (run on conns/s: a line per connection)");
        }
        (self.is_udp() && haproxy).then_some("n/a (no UDP in HAProxy community)")
    }

    /// The workload names its results are recorded under.
    pub fn recorded_as(self) -> &'static [&'static str] {
        match self {
            Workload::Bulk => &["bulk -P1", "bulk -P8"],
            Workload::Conns => &[http::CONNS.workload],
            Workload::ReqResp => &[http::REQRESP.workload],
            Workload::TlsSni => &[tls::WORKLOAD],
            Workload::Memory => &["memory"],
            Workload::Startup => &["startup"],
            Workload::Reload => &["reload"],
            Workload::UdpDns => &[dns::WORKLOAD, dns::FIXED_WORKLOAD],
            Workload::UdpBulk => &[udp_bulk::BULK_WORKLOAD],
            Workload::UdpMemory => &[udp_bulk::MEMORY_WORKLOAD],
            Workload::Upgrade => &[upgrade::WORKLOAD],
        }
    }
}

pub struct Settings {
    pub smoke: bool,
    /// Repetitions of bulk, conns, reqresp, tls-sni, udp-dns and udp-bulk; and of memory,
    /// startup, reload, udp-memory and upgrade.
    pub reps: (usize, usize),
    pub secs: u64,
    pub held: usize,
    /// UDP sessions opened by udp-memory.
    pub udp_sessions: usize,
    pub workloads: Vec<Workload>,
    pub contenders: Vec<Contender>,
}

impl Settings {
    pub fn from_env() -> Result<Settings> {
        let smoke = env::var("TOLLGATE_COMPARE_SMOKE").is_ok_and(|v| !v.is_empty() && v != "0");
        let number = |name: &str, default: u64| -> Result<u64> {
            match env::var(name) {
                Ok(v) => v
                    .trim()
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .with_context(|| format!("{name}={v:?}: want a whole number > 0")),
                Err(_) => Ok(default),
            }
        };
        let reps = match number("TOLLGATE_COMPARE_REPS", 0)? as usize {
            0 if smoke => (1, 1),
            0 => (5, 3),
            n => (n, n),
        };
        let workloads = list(
            "TOLLGATE_COMPARE_ONLY",
            &Workload::ALL,
            Workload::parse,
            Workload::name,
        )?;
        let contenders = list(
            "TOLLGATE_COMPARE_CONTENDERS",
            &Contender::ALL,
            Contender::parse,
            Contender::name,
        )?;
        let sessions_default = if smoke { 300 } else { 10_000 };
        Ok(Settings {
            smoke,
            reps,
            secs: number("TOLLGATE_COMPARE_SECS", if smoke { 1 } else { 5 })?,
            held: number("TOLLGATE_COMPARE_HELD", if smoke { 300 } else { 9000 })? as usize,
            udp_sessions: number("TOLLGATE_COMPARE_UDP_SESSIONS", sessions_default)? as usize,
            workloads,
            contenders,
        })
    }

    pub fn reps(&self, w: Workload) -> usize {
        match w {
            Workload::Bulk
            | Workload::Conns
            | Workload::ReqResp
            | Workload::TlsSni
            | Workload::UdpDns
            | Workload::UdpBulk => self.reps.0,
            _ => self.reps.1,
        }
    }

    pub fn wants(&self, c: Contender) -> bool {
        self.workloads.iter().any(|w| w.measures(c)) && self.contenders.contains(&c)
    }

    pub fn uses(&self, w: Workload) -> bool {
        self.workloads.contains(&w)
    }

    pub fn uses_udp(&self) -> bool {
        self.workloads.iter().any(|w| w.is_udp())
    }

    pub fn uses_tcp(&self) -> bool {
        self.workloads.iter().any(|w| !w.is_udp())
    }
}

/// A comma-separated subset of `all` from the environment (all of them when unset), kept in
/// `all`'s order.
fn list<T: Copy + PartialEq>(
    var: &str,
    all: &[T],
    parse: fn(&str) -> Option<T>,
    name: fn(T) -> &'static str,
) -> Result<Vec<T>> {
    let Ok(text) = env::var(var) else {
        return Ok(all.to_vec());
    };
    let mut chosen = Vec::new();
    for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let valid: Vec<&str> = all.iter().map(|&t| name(t)).collect();
        chosen.push(parse(word).with_context(|| {
            format!("{var}: unknown `{word}`; choose from {}", valid.join(","))
        })?);
    }
    let chosen: Vec<T> = all.iter().copied().filter(|t| chosen.contains(t)).collect();
    if chosen.is_empty() {
        bail!("{var} selects nothing");
    }
    Ok(chosen)
}
