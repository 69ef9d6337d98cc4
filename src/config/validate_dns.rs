//! Checks what DNS-resolved backends need: the `resolver` section and the `host:` / `srv:`
//! backend entries (names only: nothing is looked up while validating, so `check` works
//! offline and a reload never waits on DNS).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::file::{BackendFile, ResolverFile, S};
use super::types::{Lookup, Named, Resolver};
use super::validate::Checker;
use super::values;

/// The `resolver` section; defaults when absent.
pub(super) fn resolver(c: &mut Checker, raw: Option<&S<ResolverFile>>) -> Resolver {
    let defaults = Resolver::default();
    let Some(raw) = raw else { return defaults };
    let f = &raw.value;
    let mut nameservers = Vec::new();
    for (i, ns) in f.nameservers.iter().flatten().enumerate() {
        match nameserver(&ns.value) {
            Ok(addr) if nameservers.contains(&addr) => {
                c.at(
                    ns,
                    &format!("resolver.nameservers[{i}]"),
                    format!("{addr} is listed twice"),
                );
            }
            Ok(addr) => nameservers.push(addr),
            Err(e) => c.at(ns, &format!("resolver.nameservers[{i}]"), e),
        }
    }
    let one_ms = Duration::from_millis(1);
    let min_ttl = c.duration(&f.min_ttl, "resolver.min_ttl", defaults.min_ttl, one_ms);
    let max_ttl = c.duration(&f.max_ttl, "resolver.max_ttl", defaults.max_ttl, one_ms);
    if max_ttl < min_ttl
        && let Some(v) = f.max_ttl.as_ref().or(f.min_ttl.as_ref())
    {
        let msg = format!("max_ttl ({max_ttl:?}) is below min_ttl ({min_ttl:?})");
        c.at(v, "resolver.max_ttl", msg);
    }
    let negative_hold = c.duration(
        &f.negative_hold,
        "resolver.negative_hold",
        defaults.negative_hold,
        Duration::ZERO,
    );
    let timeout = c.duration(&f.timeout, "resolver.timeout", defaults.timeout, one_ms);
    if timeout > Duration::from_secs(30)
        && let Some(v) = &f.timeout
    {
        c.at(
            v,
            "resolver.timeout",
            "at most 30s: a query waits this long, twice",
        );
    }
    Resolver {
        nameservers,
        min_ttl,
        max_ttl: max_ttl.max(min_ttl),
        negative_hold,
        timeout: timeout.min(Duration::from_secs(30)),
    }
}

/// `IP` (port 53) or `IP:PORT` / `[IPv6]:PORT`.
fn nameserver(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    values::socket_addr(s, false)
        .map_err(|_| format!("`{s}` is not a nameserver address (IP, or IP:PORT)"))
}

/// A `host:` or `srv:` entry (the caller made sure exactly one of address/host/srv is set).
pub(super) fn named(c: &mut Checker, key: &str, b: &S<BackendFile>, weight: u32) -> Option<Named> {
    let f = &b.value;
    let backup = f.backup.as_ref().is_some_and(|b| b.value);
    if let Some(host) = &f.host {
        let port = match &f.port {
            None => {
                c.at(host, &format!("{key}.port"), "`host` needs a `port`");
                None
            }
            Some(p) => values::port(p.value).ok(), // reported by the caller
        };
        let name = match dns_name(&host.value) {
            Ok(n) => Some(n),
            Err(e) => {
                c.at(host, &format!("{key}.host"), e);
                None
            }
        };
        return Some(Named {
            lookup: Lookup::Host {
                name: name?,
                port: port?,
            },
            weight,
            backup,
        });
    }
    let srv = f.srv.as_ref()?;
    if let Some(w) = &f.weight {
        c.at(
            w,
            &format!("{key}.weight"),
            "an `srv` entry takes its weights from the SRV records",
        );
    }
    match srv_name(&srv.value) {
        Ok(name) => Some(Named {
            lookup: Lookup::Srv { name },
            weight: 1,
            backup,
        }),
        Err(e) => {
            c.at(srv, &format!("{key}.srv"), e);
            None
        }
    }
}

/// A host name as DNS allows it: labels of 1-63 letters, digits, `-` or `_`, 253 characters
/// at most. Lower-cased, trailing dot removed; always treated as absolute.
pub(super) fn dns_name(s: &str) -> Result<String, String> {
    let trimmed = s.trim();
    if trimmed.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "`{trimmed}` is an IP address: write `address: IP:PORT`"
        ));
    }
    let name = trimmed
        .strip_suffix('.')
        .unwrap_or(trimmed)
        .to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 {
        return Err(format!("`{trimmed}` is not a DNS name (1-253 characters)"));
    }
    for label in name.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "`{trimmed}` is not a DNS name: label `{label}` must be 1-63 letters, digits, `-` or `_`"
            ));
        }
    }
    Ok(name)
}

/// `_service._proto.name`, as RFC 2782 writes SRV owner names.
fn srv_name(s: &str) -> Result<String, String> {
    let name = dns_name(s)?;
    let labels: Vec<&str> = name.split('.').collect();
    let shaped = labels.len() >= 3 && labels[0].starts_with('_') && labels[1].starts_with('_');
    if !shaped {
        return Err(format!(
            "`{}` is not an SRV name: write `_service._proto.domain`, like `_app._tcp.example.com`",
            s.trim()
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(dns_name("App.Internal."), Ok("app.internal".to_owned()));
        assert_eq!(
            dns_name("a-1.b_c.example"),
            Ok("a-1.b_c.example".to_owned())
        );
        assert!(dns_name("10.0.0.1").unwrap_err().contains("address:"));
        assert!(dns_name("a..b").is_err());
        assert!(dns_name("-a.b").is_err());
        assert!(dns_name("a b").is_err());
        assert!(dns_name(&"a".repeat(64)).is_err());
        assert!(dns_name(&["a"; 130].join(".")).is_err());
        assert_eq!(
            srv_name("_app._tcp.example.com."),
            Ok("_app._tcp.example.com".to_owned())
        );
        assert!(
            srv_name("app.example.com")
                .unwrap_err()
                .contains("_service._proto")
        );
    }

    #[test]
    fn nameservers() {
        assert_eq!(nameserver("10.0.0.2"), Ok("10.0.0.2:53".parse().unwrap()));
        assert_eq!(nameserver("::1"), Ok("[::1]:53".parse().unwrap()));
        assert_eq!(
            nameserver("127.0.0.1:5353"),
            Ok("127.0.0.1:5353".parse().unwrap())
        );
        assert!(nameserver("dns.example").is_err());
    }
}
