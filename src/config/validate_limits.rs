//! Checks `listeners.*.access` and `listeners.*.limits.per_source` and turns them into typed
//! values. Settings that would do nothing or refuse everyone (`burst` without a rate, a
//! limit of 0) are errors, so a typo cannot quietly turn a limit off.

use super::file::{ListenerFile, NoneOr, PerSourceFile, S};
use super::types::{Access, PerSource};
use super::validate::Checker;
use super::values;

pub(super) const DEFAULT_IPV4_PREFIX: u8 = 32;
pub(super) const DEFAULT_IPV6_PREFIX: u8 = 64;
pub(super) const DEFAULT_MAX_TRACKED: u64 = 1_000_000;

pub(super) fn access(c: &mut Checker, key: &str, f: &ListenerFile) -> Access {
    let Some(access) = &f.access else {
        return Access::default();
    };
    Access {
        allow: c.cidrs(&access.allow, &format!("{key}.access.allow")),
        deny: c.cidrs(&access.deny, &format!("{key}.access.deny")),
    }
}

/// `None` when no per-source limit is set (then nothing is tracked per source).
pub(super) fn per_source(c: &mut Checker, key: &str, f: &ListenerFile) -> Option<PerSource> {
    let ps = f.limits.as_ref()?.per_source.as_ref()?;
    let key = format!("{key}.limits.per_source");
    let f: &PerSourceFile = &ps.value;
    let connection_rate = f.connection_rate.as_ref().and_then(|rate| {
        values::rate(&rate.value).unwrap_or_else(|e| {
            c.at(rate, &format!("{key}.connection_rate"), e);
            None
        })
    });
    let burst = c.number(&f.burst, &format!("{key}.burst"), 0, 0..=1_000_000);
    if burst > 0
        && connection_rate.is_none()
        && let Some(b) = &f.burst
    {
        c.at(
            b,
            &format!("{key}.burst"),
            "burst needs a connection_rate to be extra to",
        );
    }
    let max_connections = match &f.max_connections {
        Some(max) => match max.value {
            NoneOr::None => None,
            NoneOr::Some(0) => {
                c.at(
                    max,
                    &format!("{key}.max_connections"),
                    "0 refuses everyone; use access.deny instead",
                );
                None
            }
            NoneOr::Some(n) => match u32::try_from(n).ok().filter(|n| *n <= 10_000_000) {
                Some(n) => Some(n),
                None => {
                    c.at(
                        max,
                        &format!("{key}.max_connections"),
                        format!("{n} is out of range (1-10000000)"),
                    );
                    None
                }
            },
        },
        None => None,
    };
    let mut prefix = |v: &Option<S<u8>>, name: &str, max: u8, default: u8| match v {
        Some(p) if !(1..=max).contains(&p.value) => {
            c.at(
                p,
                &format!("{key}.{name}"),
                format!("{} is out of range (1-{max})", p.value),
            );
            default
        }
        Some(p) => p.value,
        None => default,
    };
    let ipv4_prefix = prefix(&f.ipv4_prefix, "ipv4_prefix", 32, DEFAULT_IPV4_PREFIX);
    let ipv6_prefix = prefix(&f.ipv6_prefix, "ipv6_prefix", 128, DEFAULT_IPV6_PREFIX);
    let exempt = c.cidrs(&f.exempt, &format!("{key}.exempt"));
    let max_tracked = c.number(
        &f.max_tracked_sources,
        &format!("{key}.max_tracked_sources"),
        DEFAULT_MAX_TRACKED,
        1..=100_000_000,
    );
    if connection_rate.is_none() && max_connections.is_none() {
        return None;
    }
    Some(PerSource {
        connection_rate,
        burst: u32::try_from(burst).unwrap_or(u32::MAX),
        max_connections,
        ipv4_prefix,
        ipv6_prefix,
        exempt,
        max_tracked_sources: usize::try_from(max_tracked).unwrap_or(usize::MAX),
    })
}
