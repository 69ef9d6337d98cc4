//! `listeners.*` with `protocol: udp`: the `udp:` settings (session idle time, the session
//! cap, replies per session), and the settings that only make sense for TCP connections,
//! which a UDP listener refuses with what to use instead rather than ignoring them.

use std::time::Duration;

use super::file::ListenerFile;
use super::types::{UdpSettings, defaults};
use super::validate::Checker;

/// The `udp:` section of a UDP listener, defaults filled in.
pub(super) fn settings(c: &mut Checker, key: &str, f: &ListenerFile) -> UdpSettings {
    let u = f.udp.as_ref().map(|u| &u.value);
    let session_idle = c.duration(
        &u.and_then(|u| u.session_idle.clone()),
        &format!("{key}.udp.session_idle"),
        defaults::SESSION_IDLE,
        Duration::from_millis(10),
    );
    let max_set = u.and_then(|u| u.max_sessions.clone());
    let max_sessions_sized = max_set.is_none();
    let max_sessions = c.number(
        &max_set,
        &format!("{key}.udp.max_sessions"),
        defaults::max_sessions(crate::sys::rlimit::reachable_nofile()),
        1..=10_000_000,
    );
    let responses = u.and_then(|u| u.responses.clone()).map(|r| {
        let n = c.number(&Some(r), &format!("{key}.udp.responses"), 1, 1..=1_000_000);
        u32::try_from(n).unwrap_or(u32::MAX)
    });
    UdpSettings {
        session_idle,
        max_sessions: usize::try_from(max_sessions).unwrap_or(usize::MAX),
        max_sessions_sized,
        responses,
    }
}

/// Settings of TCP connections set on a UDP listener: each is an error that names what a
/// UDP listener uses instead.
pub(super) fn refuse_tcp_settings(c: &mut Checker, key: &str, f: &ListenerFile) {
    if let Some(sni) = &f.sni {
        c.at(
            sni,
            &format!("{key}.sni"),
            "routing by TLS server name applies to tcp listeners only",
        );
    }
    if let Some(limits) = &f.limits
        && let Some(max) = &limits.max_connections
    {
        c.at(
            max,
            &format!("{key}.limits.max_connections"),
            "a udp listener has sessions, not connections: cap them with udp.max_sessions",
        );
    }
    if let Some(t) = &f.timeouts {
        let idle = "a udp listener's sessions end after udp.session_idle";
        for (value, name, why) in [
            (&t.connect, "connect", "a udp listener connects nothing"),
            (&t.idle, "idle", idle),
            (
                &t.proxy_header,
                "proxy_header",
                "PROXY headers are read on tcp listeners only",
            ),
        ] {
            if let Some(v) = value {
                c.at(v, &format!("{key}.timeouts.{name}"), why);
            }
        }
    }
    if let Some(pp) = &f.proxy_protocol
        && let Some(from) = &pp.accept_from
        && !from.value.is_empty()
    {
        c.at(
            from,
            &format!("{key}.proxy_protocol.accept_from"),
            "PROXY headers are accepted on tcp listeners only",
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Protocol, load_str};
    use std::time::Duration;

    const POOL: &str = "pools:\n  dns:\n    backends:\n      - address: 127.0.0.1:5353\n";

    fn udp_listener(extra: &str) -> String {
        format!(
            "listeners:\n  dns:\n    protocol: udp\n    bind: 127.0.0.1:53\n    pool: dns\n{extra}{POOL}"
        )
    }

    #[test]
    fn settings_and_their_defaults() {
        let c = load_str(&udp_listener(""), "t.yaml").unwrap();
        let Protocol::Udp(u) = c.listeners[0].protocol else {
            panic!("not udp: {:?}", c.listeners[0].protocol)
        };
        assert_eq!(u.session_idle, Duration::from_secs(30));
        assert!(u.max_sessions_sized && u.max_sessions >= 1 && u.max_sessions <= 65_536);
        assert_eq!(u.responses, None);
        let text = udp_listener("    udp: { session_idle: 2s, max_sessions: 100, responses: 1 }\n");
        let c = load_str(&text, "t.yaml").unwrap();
        let Protocol::Udp(u) = c.listeners[0].protocol else {
            panic!("not udp")
        };
        assert_eq!(
            (
                u.session_idle,
                u.max_sessions,
                u.max_sessions_sized,
                u.responses
            ),
            (Duration::from_secs(2), 100, false, Some(1))
        );
    }

    #[test]
    fn tcp_settings_on_a_udp_listener_say_what_to_use_instead() {
        let text = udp_listener(
            "    limits: { max_connections: 10 }\n    timeouts: { idle: 5s, connect: 1s }\n    udp: { responses: 0 }\n",
        );
        let e = load_str(&text, "t.yaml").unwrap_err().to_string();
        for want in [
            "listeners.dns.limits.max_connections: a udp listener has sessions, not connections: cap them with udp.max_sessions",
            "listeners.dns.timeouts.idle: a udp listener's sessions end after udp.session_idle",
            "listeners.dns.timeouts.connect: a udp listener connects nothing",
            "listeners.dns.udp.responses: 0 is out of range",
        ] {
            assert!(e.contains(want), "{want} missing in\n{e}");
        }
        let tcp = "listeners:\n  web:\n    bind: 127.0.0.1:80\n    pool: dns\n    udp: { max_sessions: 5 }\n";
        let e = load_str(&format!("{tcp}{POOL}"), "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("listeners.web.udp: udp settings apply only to `protocol: udp` listeners"),
            "{e}"
        );
    }

    #[test]
    fn a_tcp_and_a_udp_listener_may_share_an_address_but_two_udp_may_not() {
        let both = format!(
            "listeners:\n  dns_udp:\n    protocol: udp\n    bind: 127.0.0.1:53\n    pool: dns\n  dns_tcp:\n    bind: 127.0.0.1:53\n    pool: dns\n{POOL}"
        );
        assert!(load_str(&both, "t.yaml").is_ok());
        let twice = both.replace("  dns_tcp:\n", "  dns_tcp:\n    protocol: udp\n");
        let e = load_str(&twice, "t.yaml").unwrap_err().to_string();
        assert!(
            e.contains("127.0.0.1:53 overlaps 127.0.0.1:53 of listener"),
            "{e}"
        );
    }
}
