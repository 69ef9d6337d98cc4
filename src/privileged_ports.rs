//! Ports below `net.ipv4.ip_unprivileged_port_start` (1024 unless changed): whether this
//! process may bind them, and what an operator needs to hear when it may not.
//!
//! The kernel lets a process bind such a port only with `CAP_NET_BIND_SERVICE` in its
//! effective set (root has it; a service user gets it from systemd's
//! `AmbientCapabilities=`). Both facts are read from `/proc`, never guessed from the user
//! id. Nothing here binds a socket; `app.rs` and `reload.rs` word their bind errors with
//! [`bind_failure`], and `check` warns with [`check_warnings`].

use std::io;
use std::net::SocketAddr;

use crate::config::Config;

/// The bit of `CAP_NET_BIND_SERVICE` in the capability sets of `/proc/self/status`.
const CAP_NET_BIND_SERVICE: u32 = 10;
/// The kernel's default when the sysctl cannot be read.
const DEFAULT_UNPRIVILEGED_START: u16 = 1024;

const SYSTEMD_HINT: &str = "run as root, or under systemd give the service user the \
                            capability with AmbientCapabilities=CAP_NET_BIND_SERVICE in the \
                            unit's [Service] section";

/// `cannot bind ADDR: ERROR`, with the likely cause: the capability for a privileged port
/// refused with EACCES, another process for an address in use.
pub fn bind_failure(addr: SocketAddr, error: &io::Error) -> String {
    explain(addr, error, unprivileged_start())
}

fn explain(addr: SocketAddr, error: &io::Error, start: u16) -> String {
    let hint = match error.raw_os_error() {
        Some(libc::EACCES) if addr.port() < start => format!(
            "ports below {start} need the CAP_NET_BIND_SERVICE capability, which this \
             process lacks; {SYSTEMD_HINT}"
        ),
        Some(libc::EADDRINUSE) => "is another process using it?".to_owned(),
        _ => return format!("cannot bind {addr}: {error}"),
    };
    format!("cannot bind {addr}: {error}: {hint}")
}

/// One warning per configured address this process could not bind for want of the
/// capability, as `key.path: warning: ...` lines (the caller puts the file in front).
pub fn check_warnings(cfg: &Config) -> Vec<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if may_bind_privileged(&status) {
        return Vec::new();
    }
    let start = unprivileged_start();
    let uid = effective_uid(&status).map_or_else(String::new, |u| format!(" (uid {u})"));
    let admin = cfg.admin.iter().map(|a| ("admin.bind".to_owned(), a.bind));
    let listeners = cfg.listeners.iter().flat_map(|l| {
        l.bind
            .iter()
            .map(move |addr| (format!("listeners.{}.bind", l.name), *addr))
    });
    admin
        .chain(listeners)
        .filter(|(_, addr)| addr.port() != 0 && addr.port() < start)
        .map(|(key, addr)| {
            format!(
                "{key}: warning: {addr} is below port {start}, and this process{uid} lacks \
                 CAP_NET_BIND_SERVICE, so `run` would fail to bind it; {SYSTEMD_HINT}"
            )
        })
        .collect()
}

/// The first port any process may bind: `net.ipv4.ip_unprivileged_port_start` of this
/// process's network namespace (it covers IPv6 too).
fn unprivileged_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .map_or(DEFAULT_UNPRIVILEGED_START, |p| {
            u16::try_from(p).unwrap_or(u16::MAX)
        })
}

/// Whether the effective capability set in a `/proc/self/status` text has
/// `CAP_NET_BIND_SERVICE`. Unreadable means no: a warning that may be wrong beats silence
/// before a failed start.
fn may_bind_privileged(status: &str) -> bool {
    field(status, "CapEff:")
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_BIND_SERVICE) != 0)
}

/// The effective user id (the second number of `Uid:`).
fn effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn field<'s>(status: &'s str, name: &str) -> Option<&'s str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "Name:\ttollgate\nUid:\t0\t0\t0\t0\nCapEff:\t000001fffeffffff\n";
    const NOBODY: &str = "Uid:\t65534\t65534\t65534\t65534\nCapEff:\t0000000000000000\n";
    const SERVICE: &str = "Uid:\t998\t998\t998\t998\nCapEff:\t0000000000000400\n";

    #[test]
    fn the_capability_is_read_from_the_effective_set() {
        assert!(may_bind_privileged(ROOT));
        assert!(!may_bind_privileged(NOBODY));
        assert!(may_bind_privileged(SERVICE));
        assert!(!may_bind_privileged(""));
        assert_eq!(effective_uid(NOBODY), Some(65534));
    }

    #[test]
    fn a_refused_bind_names_its_cause() {
        let low: SocketAddr = "127.0.0.1:81".parse().unwrap();
        let e = explain(low, &io::Error::from_raw_os_error(libc::EACCES), 1024);
        assert!(
            e.starts_with("cannot bind 127.0.0.1:81: Permission denied"),
            "{e}"
        );
        assert!(
            e.contains("CAP_NET_BIND_SERVICE")
                && e.contains("AmbientCapabilities=CAP_NET_BIND_SERVICE"),
            "{e}"
        );
        let e = explain(low, &io::Error::from_raw_os_error(libc::EADDRINUSE), 1024);
        assert!(e.ends_with("is another process using it?"), "{e}");
        let high: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let e = explain(high, &io::Error::from_raw_os_error(libc::EACCES), 1024);
        assert!(!e.contains("CAP_NET_BIND_SERVICE"), "{e}");
    }
}
