//! Checks `pools.*.health_check` and turns it into a typed [`HealthCheck`]: the probe type
//! and the bytes or HTTP request it needs, timings (a timeout no longer than the interval),
//! rise/fall thresholds and an optional probe port.

use std::time::Duration;

use super::file::{HealthCheckFile, S};
use super::types::{CheckKind, HealthCheck, ProxyVersion};
use super::validate::Checker;
use super::values;

pub(super) fn health_check(
    c: &mut Checker,
    key: &str,
    hc: &S<HealthCheckFile>,
) -> Option<HealthCheck> {
    let f = &hc.value;
    let ms = Duration::from_millis(1);
    // Below 50 ms a pool of hundreds of backends would probe thousands of times a second.
    let interval = c.duration(
        &f.interval,
        &format!("{key}.interval"),
        Duration::from_secs(2),
        Duration::from_millis(50),
    );
    let timeout = c.duration(
        &f.timeout,
        &format!("{key}.timeout"),
        Duration::from_secs(1),
        ms,
    );
    if timeout > interval
        && let Some(t) = &f.timeout
    {
        c.at(
            t,
            &format!("{key}.timeout"),
            format!("must not exceed the interval ({interval:?})"),
        );
    }
    let rise = c.number(&f.rise, &format!("{key}.rise"), 2, 1..=100);
    let fall = c.number(&f.fall, &format!("{key}.fall"), 3, 1..=100);
    let port = match &f.port {
        None => None,
        Some(p) => match values::port(p.value) {
            Ok(port) => Some(port),
            Err(e) => {
                c.at(p, &format!("{key}.port"), e);
                None
            }
        },
    };
    let kind = kind(c, key, hc)?;
    let proxy_protocol = match &f.proxy_protocol {
        None => None,
        Some(v) => {
            let k = format!("{key}.proxy_protocol");
            match v.value.as_str() {
                "none" => None,
                "v1" | "v2" if matches!(kind, CheckKind::Udp { .. }) => {
                    c.at(v, &k, "a udp check sends datagrams, without PROXY headers");
                    None
                }
                "v1" => Some(ProxyVersion::V1),
                "v2" => Some(ProxyVersion::V2),
                other => {
                    c.at(v, &k, format!("`{other}` is not one of: none, v1, v2"));
                    None
                }
            }
        }
    };
    Some(HealthCheck {
        kind,
        interval,
        timeout,
        rise: u32::try_from(rise).unwrap_or(2),
        fall: u32::try_from(fall).unwrap_or(3),
        port,
        proxy_protocol,
    })
}

fn kind(c: &mut Checker, key: &str, hc: &S<HealthCheckFile>) -> Option<CheckKind> {
    let f = &hc.value;
    let name = f.kind.as_ref().map_or("tcp", |k| k.value.as_str());
    let bytes = |c: &mut Checker, v: &Option<S<String>>, field: &str| -> Option<Vec<u8>> {
        match v {
            Some(s) if !s.value.is_empty() => Some(to_bytes(&s.value)),
            Some(s) => {
                c.at(s, &format!("{key}.{field}"), "must not be empty");
                None
            }
            None => {
                c.at(
                    hc,
                    &format!("{key}.{field}"),
                    format!("`type: {name}` needs `{field}`"),
                );
                None
            }
        }
    };
    let unused = |c: &mut Checker, v: &Option<S<String>>, field: &str| {
        if let Some(s) = v {
            c.at(
                s,
                &format!("{key}.{field}"),
                format!("`{field}` does not apply to `type: {name}`"),
            );
        }
    };
    match name {
        "tcp" => {
            unused(c, &f.send, "send");
            unused(c, &f.expect, "expect");
            Some(CheckKind::Tcp)
        }
        "send_expect" | "udp" => {
            let send = bytes(c, &f.send, "send");
            let expect = bytes(c, &f.expect, "expect");
            let (send, expect) = (send?, expect?);
            Some(if name == "udp" {
                CheckKind::Udp { send, expect }
            } else {
                CheckKind::SendExpect { send, expect }
            })
        }
        "http" => {
            unused(c, &f.send, "send");
            unused(c, &f.expect, "expect");
            http(c, key, f)
        }
        other => {
            let at = f.kind.as_ref().map_or(hc.referenced, |k| k.referenced);
            c.at_loc(
                at,
                &format!("{key}.type"),
                format!("`{other}` is not one of: tcp, send_expect, http, udp"),
            );
            None
        }
    }
}

fn http(c: &mut Checker, key: &str, f: &HealthCheckFile) -> Option<CheckKind> {
    let http = f.http.as_ref();
    let path = match http.and_then(|h| h.path.as_ref()) {
        None => "/healthz".to_owned(),
        Some(p)
            if p.value.starts_with('/')
                && !p
                    .value
                    .chars()
                    .any(|ch| ch.is_whitespace() || ch.is_control()) =>
        {
            p.value.clone()
        }
        Some(p) => {
            c.at(
                p,
                &format!("{key}.http.path"),
                "must start with `/` and hold no spaces",
            );
            return None;
        }
    };
    let host = http.and_then(|h| h.host.as_ref()).map(|h| h.value.clone());
    let expect_status = match http.and_then(|h| h.expect_status.as_ref()) {
        None => vec![(200, 399)],
        Some(s) => match status_ranges(&s.value) {
            Ok(r) => r,
            Err(e) => {
                c.at(s, &format!("{key}.http.expect_status"), e);
                return None;
            }
        },
    };
    Some(CheckKind::Http {
        path,
        host,
        expect_status,
    })
}

/// `"200-399"`, `"200,204"` or a mix of both.
pub(super) fn status_ranges(s: &str) -> Result<Vec<(u16, u16)>, String> {
    let bad = || format!("`{s}` is not a status list like \"200-399\" or \"200,204\"");
    s.split(',')
        .map(|part| {
            let part = part.trim();
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let (lo, hi): (u16, u16) = (
                lo.trim().parse().map_err(|_| bad())?,
                hi.trim().parse().map_err(|_| bad())?,
            );
            if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
                return Err(bad());
            }
            Ok((lo, hi))
        })
        .collect()
}

/// Probe bytes from a YAML string (where `\x00`-style escapes are allowed): characters up to
/// U+00FF stand for one byte each, so `"\xff"` is the byte 0xFF; a string with any character
/// above that is taken as UTF-8.
pub(super) fn to_bytes(s: &str) -> Vec<u8> {
    if s.chars().all(|ch| u32::from(ch) <= 0xFF) {
        s.chars()
            .map(|ch| u8::try_from(u32::from(ch)).unwrap_or(b'?'))
            .collect()
    } else {
        s.as_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lists() {
        assert_eq!(status_ranges("200-399"), Ok(vec![(200, 399)]));
        assert_eq!(
            status_ranges("200, 204,300-302"),
            Ok(vec![(200, 200), (204, 204), (300, 302)])
        );
        assert!(status_ranges("399-200").is_err());
        assert!(status_ranges("2xx").is_err());
        assert!(status_ranges("700").is_err());
    }

    #[test]
    fn probe_bytes() {
        assert_eq!(to_bytes("PING\r\n"), b"PING\r\n");
        assert_eq!(to_bytes("\u{ff}\u{0}"), vec![0xff, 0]);
        assert_eq!(to_bytes("é€"), "é€".as_bytes());
    }
}
