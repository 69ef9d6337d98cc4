//! Checks `listeners.*.access` and `listeners.*.limits.per_source`: their values are validated
//! in full now; admission itself (ACLs, per-source limits) is not built yet, so any setting
//! that would change who gets in is refused as "not supported yet" rather than ignored.

use super::file::{ListenerFile, NoneOr, PerSourceFile, S};
use super::validate::Checker;
use super::values;

pub(super) fn access_and_limits(c: &mut Checker, key: &str, f: &ListenerFile) {
    if let Some(access) = &f.access {
        for (list, name) in [(&access.allow, "allow"), (&access.deny, "deny")] {
            let k = format!("{key}.access.{name}");
            if c.cidrs(list, &k) > 0
                && let Some(l) = list
            {
                c.unsupported(l, &k, "access control lists");
            }
        }
    }
    if let Some(ps) = f.limits.as_ref().and_then(|l| l.per_source.as_ref()) {
        per_source(c, &format!("{key}.limits.per_source"), ps);
    }
}

fn per_source(c: &mut Checker, key: &str, ps: &S<PerSourceFile>) {
    let f = &ps.value;
    let mut limits_something = false;
    if let Some(rate) = &f.connection_rate {
        match values::rate(&rate.value) {
            Ok(Some(_)) => limits_something = true,
            Ok(None) => {}
            Err(e) => c.at(rate, &format!("{key}.connection_rate"), e),
        }
    }
    if c.number(&f.burst, &format!("{key}.burst"), 0, 0..=1_000_000) > 0 {
        limits_something = true;
    }
    if let Some(max) = &f.max_connections
        && let NoneOr::Some(n) = max.value
    {
        if n == 0 {
            c.at(
                max,
                &format!("{key}.max_connections"),
                "0 refuses everyone; use access.deny instead",
            );
        }
        limits_something = true;
    }
    for (v, name, max) in [
        (&f.ipv4_prefix, "ipv4_prefix", 32u8),
        (&f.ipv6_prefix, "ipv6_prefix", 128),
    ] {
        if let Some(p) = v
            && !(1..=max).contains(&p.value)
        {
            c.at(
                p,
                &format!("{key}.{name}"),
                format!("{} is out of range (1-{max})", p.value),
            );
        }
    }
    if c.cidrs(&f.exempt, &format!("{key}.exempt")) > 0 {
        limits_something = true;
    }
    c.number(
        &f.max_tracked_sources,
        &format!("{key}.max_tracked_sources"),
        1_000_000,
        1..=100_000_000,
    );
    if limits_something {
        c.unsupported(ps, key, "per-source connection limits");
    }
}
