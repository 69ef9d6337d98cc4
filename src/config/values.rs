//! Parsers for the scalar forms the config uses: durations (`500ms`, `2s`, `5m`), rates
//! (`20/s`), socket addresses (`IP:PORT`, `[v6]:PORT`), CIDRs and names. Each returns a
//! message an operator can act on.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The longest duration any setting accepts: longer values are typos, and capping them keeps
/// every later `Instant + Duration` from overflowing.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

pub fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.starts_with('-') {
        return Err(format!("`{s}`: a duration cannot be negative"));
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let usage = || {
        format!("`{s}` is not a duration; write a whole number and a unit: 500ms, 2s, 5m, 1h, 1d")
    };
    let n: u64 = digits.parse().map_err(|_| usage())?;
    let per_unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(usage()),
    };
    let ms = n
        .checked_mul(per_unit_ms)
        .filter(|ms| *ms <= MAX_DURATION.as_millis() as u64)
        .ok_or_else(|| format!("`{s}` is longer than the maximum of 365d"))?;
    Ok(Duration::from_millis(ms))
}

/// The shortest exact form of `d` in the config's own syntax (`90s`, `5m`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, per) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms > 0 && ms.is_multiple_of(per) {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

/// A rate `N/s`, `N/m` or `N/h`, or `none`: returned as (count, period).
pub fn rate(s: &str) -> Result<Option<(u64, Duration)>, String> {
    let s = s.trim();
    if s == "none" {
        return Ok(None);
    }
    let usage =
        || format!("`{s}` is not a rate; write N/s, N/m or N/h (for example 20/s), or none");
    let (n, unit) = s.split_once('/').ok_or_else(usage)?;
    let n: u64 = n.trim().parse().map_err(|_| usage())?;
    let period = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return Err(usage()),
    };
    if n == 0 {
        return Err(format!(
            "`{s}`: a rate of 0 refuses everyone; use access.deny instead"
        ));
    }
    Ok(Some((n, period)))
}

/// `IP:PORT` or `[IPv6]:PORT`. Port 0 is allowed only where `allow_port_zero` (a listener
/// asking the kernel for a free port).
pub fn socket_addr(s: &str, allow_port_zero: bool) -> Result<SocketAddr, String> {
    let s = s.trim();
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("`{s}` is not IP:PORT (IPv6 as [::1]:PORT)"))?;
    let port: u64 = port
        .parse()
        .map_err(|_| format!("`{s}`: `{port}` is not a port number"))?;
    let port =
        u16::try_from(port).map_err(|_| format!("`{s}`: port {port} is out of range (0-65535)"))?;
    if port == 0 && !allow_port_zero {
        return Err(format!("`{s}`: port 0 is not a valid destination"));
    }
    let ip_text = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.contains(':') && !host.starts_with('[') {
        return Err(format!(
            "`{s}`: write an IPv6 address in brackets, like [::1]:{port}"
        ));
    }
    let ip: IpAddr = ip_text
        .parse()
        .map_err(|_| format!("`{s}`: `{ip_text}` is not an IP address (names go in `host:`)"))?;
    Ok(SocketAddr::new(ip, port))
}

pub fn port(n: u64) -> Result<u16, String> {
    match u16::try_from(n) {
        Ok(0) => Err("port 0 is not a valid destination".into()),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("port {n} is out of range (1-65535)")),
    }
}

/// `ADDR/LEN`, or a bare address meaning a single host; host bits must be zero, so that
/// `10.0.0.1/8` (probably a typo) is reported rather than silently widened.
pub fn cidr(s: &str) -> Result<crate::admission::Cidr, String> {
    s.parse()
}

/// Listener and pool names appear in metric labels and URLs: keep them short and plain.
pub fn name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a valid name: use 1-64 letters, digits, `_`, `-` or `.`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(duration("0s"), Ok(Duration::ZERO));
        assert!(duration("-1s").unwrap_err().contains("negative"));
        assert!(duration("5").is_err());
        assert!(duration("1.5s").is_err());
        assert!(duration("99999999999999999999d").is_err());
        assert!(duration("400d").unwrap_err().contains("maximum"));
    }

    #[test]
    fn rates() {
        assert_eq!(rate("20/s"), Ok(Some((20, Duration::from_secs(1)))));
        assert_eq!(rate("none"), Ok(None));
        assert!(rate("20").is_err());
        assert!(rate("0/s").is_err());
    }

    #[test]
    fn addresses() {
        assert_eq!(socket_addr("127.0.0.1:80", false).unwrap().port(), 80);
        assert!(socket_addr("[::1]:80", false).unwrap().is_ipv6());
        assert!(
            socket_addr("127.0.0.1:65536", false)
                .unwrap_err()
                .contains("out of range")
        );
        assert!(socket_addr("127.0.0.1:0", false).is_err());
        assert!(socket_addr("127.0.0.1:0", true).is_ok());
        assert!(
            socket_addr("::1:80", false)
                .unwrap_err()
                .contains("brackets")
        );
        assert!(
            socket_addr("example.com:80", false)
                .unwrap_err()
                .contains("host:")
        );
    }

    #[test]
    fn cidrs() {
        assert_eq!(cidr("10.0.0.0/8").unwrap().prefix_len(), 8);
        assert_eq!(cidr("2001:db8::/32").unwrap().prefix_len(), 32);
        assert_eq!(cidr("192.0.2.7").unwrap().prefix_len(), 32);
        assert!(cidr("10.0.0.1/8").unwrap_err().contains("host bits"));
        assert!(cidr("10.0.0.0/33").is_err());
        assert!(cidr("0.0.0.0/0").is_ok());
    }
}
