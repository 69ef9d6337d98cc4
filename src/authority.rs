//! `host[:port]` authorities, as HTTP's `Host` and `Origin` headers carry them and the
//! config's `admin.allowed_hosts` lists them. Parsed strictly into an IP address or a
//! lower-cased DNS name, so that comparing two of them compares what a browser would connect
//! to, not two spellings: `LOCALHOST:80` and `localhost:80` are one authority, while `127.1`
//! (which a browser would turn into `127.0.0.1` before sending it) is no authority at all.
//!
//! Pure functions over untrusted text, fuzzed with the admin inputs
//! (`fuzz/fuzz_targets/admin_input.rs`). Deciding which authorities the admin API answers to
//! is `admin/guard.rs`'s business, not this module's.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Longest DNS name (RFC 1035), without a trailing dot.
const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

/// The host part: an IP literal, or a DNS name in lower case without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

/// A host and, when one was given, a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Authority {
    pub host: Host,
    pub port: Option<u16>,
}

impl FromStr for Authority {
    type Err = String;

    /// `name`, `name:port`, `IPv4`, `IPv4:port`, `[IPv6]` or `[IPv6]:port`.
    fn from_str(s: &str) -> Result<Authority, String> {
        let bad = || {
            format!(
                "`{s}` is not a host or host:port (a DNS name, an IPv4 address, or an IPv6 address in brackets)"
            )
        };
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (v6, after) = rest.split_once(']').ok_or_else(bad)?;
            let ip = v6.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
            let port = match after {
                "" => None,
                p => Some(port(p.strip_prefix(':').ok_or_else(bad)?).ok_or_else(bad)?),
            };
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = match s.split_once(':') {
                None => (s, None),
                Some((h, p)) => (h, Some(port(p).ok_or_else(bad)?)),
            };
            (parse_host(host).ok_or_else(bad)?, port)
        };
        Ok(Authority { host, port })
    }
}

/// Decimal digits only (no sign, no spaces), at most 65535.
fn port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// An IPv4 literal or a DNS name (letters, digits, `-` and `_`; one trailing dot dropped).
fn parse_host(s: &str) -> Option<Host> {
    if let Ok(ip) = s.parse::<std::net::Ipv4Addr>() {
        return Some(Host::Ip(IpAddr::V4(ip)));
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.is_empty() || name.len() > MAX_NAME {
        return None;
    }
    let labels_ok = name.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= MAX_LABEL
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    // A name whose last label is a number is an address in a form browsers rewrite (`127.1`,
    // `0x7f.1`): never a name anyone registered.
    let last = name.rsplit('.').next().unwrap_or(name);
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || (last.len() > 2 && last[..2].eq_ignore_ascii_case("0x"));
    (labels_ok && !numeric).then(|| Host::Name(name.to_ascii_lowercase()))
}

impl Authority {
    /// The port, or `default` when none was given (80 for an `http:` Host).
    pub fn port_or(&self, default: u16) -> u16 {
        self.port.unwrap_or(default)
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// An `Origin` header's value (RFC 6454): `http://` or `https://` and an authority, the
/// scheme's default port filled in. `None` for `null`, another scheme, a path or garbage:
/// nothing that could be this API's own origin.
pub fn parse_origin(s: &str) -> Option<Authority> {
    let (rest, default) = if let Some(rest) = s.strip_prefix("http://") {
        (rest, 80)
    } else if let Some(rest) = s.strip_prefix("https://") {
        (rest, 443)
    } else {
        return None;
    };
    let mut a = rest.parse::<Authority>().ok()?;
    a.port = Some(a.port_or(default));
    Some(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(s: &str) -> Option<String> {
        s.parse::<Authority>().ok().map(|a| a.to_string())
    }

    #[test]
    fn parses_names_addresses_and_ports() {
        assert_eq!(auth("LocalHost:9100").as_deref(), Some("localhost:9100"));
        assert_eq!(
            auth("admin.example.com.").as_deref(),
            Some("admin.example.com")
        );
        assert_eq!(auth("127.0.0.1:80").as_deref(), Some("127.0.0.1:80"));
        assert_eq!(auth("[::1]:9100").as_deref(), Some("[::1]:9100"));
        assert_eq!(auth("[::1]").as_deref(), Some("[::1]"));
        assert_eq!(auth("my_host-1").as_deref(), Some("my_host-1"));
    }

    #[test]
    fn refuses_what_is_not_one_authority() {
        for s in [
            "",
            ":80",
            "a:",
            "a:+1",
            "a:65536",
            "a: 1",
            "::1",
            "[::1",
            "[::1]x",
            "[1.2.3.4]",
            "a b",
            "a..b",
            "-a",
            "a-",
            "127.1",
            "0x7f.0.0.1",
            "1.2.3.4.5",
            "a/b",
            "user@a",
            "a:80:80",
            "*.example.com",
        ] {
            assert_eq!(auth(s), None, "{s:?}");
        }
        assert_eq!(auth(&"a".repeat(64)), None, "label too long");
    }

    #[test]
    fn origins_carry_their_default_port() {
        let o = |s| parse_origin(s).map(|a| a.to_string());
        assert_eq!(
            o("http://127.0.0.1:9100").as_deref(),
            Some("127.0.0.1:9100")
        );
        assert_eq!(o("http://evil.example").as_deref(), Some("evil.example:80"));
        assert_eq!(
            o("https://Admin.Example").as_deref(),
            Some("admin.example:443")
        );
        assert_eq!(o("null"), None);
        assert_eq!(o("file://"), None);
        assert_eq!(o("http://a/path"), None);
    }
}
