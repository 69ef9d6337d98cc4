//! `listeners.*.sni`: routes by the server name of the TLS ClientHello, to pools that exist,
//! by patterns that are host names or `*.` wildcards of them, each pattern once.

use std::time::Duration;

use super::file::{ListenerFile, S, SniFile};
use super::types::{Sni, SniRoute};
use super::validate::{Checker, unknown_pool};
use crate::sni::Pattern;

/// How long a ClientHello may take to arrive, unless `peek_timeout` says.
pub const PEEK_TIMEOUT: Duration = Duration::from_secs(5);

/// The listener's SNI routes, or `None` without an `sni` section (or with errors, reported).
pub(super) fn sni(
    c: &mut Checker,
    key: &str,
    f: &ListenerFile,
    sni: &S<SniFile>,
    pools: &[&str],
) -> Option<Sni> {
    if let Some(p) = &f.pool {
        c.at(
            p,
            &format!("{key}.pool"),
            format!(
                "a listener with `sni` has no `pool`: name the pool for unmatched names as `sni.default_pool` (`default_pool: {}`)",
                p.value
            ),
        );
    }
    let key = format!("{key}.sni");
    let s = &sni.value;
    let mut ok = true;
    let pool = |c: &mut Checker, p: &S<String>, k: &str| {
        if pools.contains(&p.value.as_str()) {
            Some(p.value.clone())
        } else {
            c.at(p, k, unknown_pool(&p.value, pools));
            None
        }
    };
    let mut routes: Vec<SniRoute> = Vec::new();
    for (i, r) in s.routes.iter().flatten().enumerate() {
        let rk = format!("{key}.routes[{i}]");
        let target = match &r.pool {
            Some(p) => pool(c, p, &format!("{rk}.pool")),
            None => {
                c.at(sni, &format!("{rk}.pool"), "a route needs a pool");
                None
            }
        };
        let names = r.matches.as_deref().unwrap_or_default();
        if names.is_empty() {
            c.at(
                sni,
                &format!("{rk}.match"),
                "a route needs at least one name to match",
            );
            ok = false;
        }
        for (j, name) in names.iter().enumerate() {
            let mk = format!("{rk}.match[{j}]");
            let Some(pattern) = Pattern::parse(&name.value) else {
                // `*example.com` for `*.example.com` is the likely slip: say so.
                let meant = name
                    .value
                    .strip_prefix('*')
                    .filter(|rest| !rest.starts_with('.'))
                    .map(|rest| format!("*.{rest}"))
                    .filter(|w| Pattern::parse(w).is_some())
                    .map_or_else(String::new, |w| format!("; did you mean `{w}`?"));
                c.at(
                    name,
                    &mk,
                    format!(
                        "`{}` is neither a host name (letters, digits, `-` and `_` in dot-separated labels) nor `*.` followed by one{meant}",
                        name.value
                    ),
                );
                ok = false;
                continue;
            };
            if let Some(twice) = routes.iter().find(|r| r.pattern == pattern) {
                c.at(
                    name,
                    &mk,
                    format!(
                        "`{pattern}` is matched already, by the route to `{}`",
                        twice.pool
                    ),
                );
                ok = false;
                continue;
            }
            if let Some(p) = &target {
                routes.push(SniRoute {
                    pattern,
                    pool: p.clone(),
                });
            }
        }
        ok &= target.is_some();
    }
    let default_pool = match &s.default_pool {
        Some(p) => {
            let found = pool(c, p, &format!("{key}.default_pool"));
            ok &= found.is_some();
            found
        }
        None => None,
    };
    if routes.is_empty() && default_pool.is_none() && ok {
        c.at(
            sni,
            &key,
            "routes nothing: give `routes`, a `default_pool`, or both",
        );
        ok = false;
    }
    let peek_timeout = c.duration(
        &s.peek_timeout,
        &format!("{key}.peek_timeout"),
        PEEK_TIMEOUT,
        Duration::from_millis(1),
    );
    ok.then_some(Sni {
        routes,
        default_pool,
        peek_timeout,
    })
}
