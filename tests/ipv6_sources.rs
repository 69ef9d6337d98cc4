//! Per-source limits over real IPv6 sources: IPv6 clients are limited per `ipv6_prefix`
//! group (a /64 by default, so one host's many addresses are one source; `/128` makes every
//! address its own source, `/48` joins neighbouring /64s), and an IPv4-mapped IPv6 client
//! counts as the IPv4 address it carries.
//!
//! Clients need many distinct IPv6 source addresses, so the checks run in a user and network
//! namespace of their own: the test re-executes this binary under `unshare -rn`, running only
//! the `#[ignore]`d child test, which routes 2001:db8::/32 to loopback (AnyIP) and binds its
//! clients to any address of it with `IPV6_FREEBIND`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tollgate::app::Server;

use common::netns::ip;
use common::{echo_backend, start, wait_for};

const CHILD: &str = "in_a_network_namespace";
/// The child takes well under a second; this only stops a hung child from hanging the run.
const CHILD_DEADLINE: Duration = Duration::from_secs(10);
const WAIT: Duration = Duration::from_secs(5);

#[test]
fn ipv6_sources_are_grouped_by_prefix_and_mapped_ipv4_counts_as_ipv4() {
    common::netns::run_child("-rn", CHILD, CHILD_DEADLINE);
}

#[test]
#[ignore = "run by the test above inside a network namespace of its own"]
fn in_a_network_namespace() {
    common::netns::in_child(CHILD);
    ip("link set lo up");
    ip("-6 addr add 2001:db8:1::5/64 dev lo nodad");
    // AnyIP: every address of 2001:db8::/32 is local, so clients may bind any of them.
    ip("-6 route add local 2001:db8::/32 dev lo table local");

    let limits = |rate: &str, extra: &str| {
        format!("limits: {{ per_source: {{ connection_rate: \"{rate}\", {extra} }} }}")
    };
    let server = start(&config(
        echo_backend(),
        &[
            ("per64", "[2001:db8:1::5]:0", limits("1/m", "burst: 9")),
            (
                "per128",
                "[2001:db8:1::5]:0",
                limits("1/m", "burst: 9, ipv6_prefix: 128"),
            ),
            (
                "per48",
                "[2001:db8:1::5]:0",
                limits("1/m", "burst: 4, ipv6_prefix: 48"),
            ),
            ("mapped", "127.0.0.1:0", limits("1/m", "burst: 4")),
        ],
    ));

    one_64_is_one_source(&server);
    prefix_128_makes_every_address_a_source(&server);
    prefix_48_joins_neighbouring_64s(&server);
    mapped_ipv4_counts_as_ipv4(&server);
    server.shutdown();
}

/// 200 addresses of one /64 share its 10 connections; another /64 has its own.
fn one_64_is_one_source(server: &Server) {
    let front = server.addrs("per64")[0];
    let through = (0..200).filter(|&i| served(host(0, i), front)).count();
    assert_eq!(through, 10, "a /64 is one source: burst 9 + 1");
    assert_counts(server, "per64", 10, 190);
    let other = (0..5).filter(|&i| served(host(1, i), front)).count();
    assert_eq!(other, 5, "another /64 is another source");
    assert_counts(server, "per64", 15, 190);

    let spent = explain(server, "per64", host(0, 1_000));
    let source = spent.source.unwrap();
    assert_eq!(source.group.to_string(), "2001:db8:1::/64");
    assert!(
        !spent.admitted,
        "an unused address of the spent /64 is refused too"
    );
    let fresh = explain(server, "per64", host(1, 1_000));
    assert_eq!(fresh.source.unwrap().group.to_string(), "2001:db8:1:1::/64");
    assert!(fresh.admitted, "the other /64 has connections left");
}

/// With `ipv6_prefix: 128` each of 50 addresses of one /64 gets through, and one address is
/// still held to its own 10.
fn prefix_128_makes_every_address_a_source(server: &Server) {
    let front = server.addrs("per128")[0];
    let through = (0..50).filter(|&i| served(host(0, i), front)).count();
    assert_eq!(through, 50, "every address is its own source");
    let one = host(0, 500);
    let again = (0..11).filter(|_| served(one, front)).count();
    assert_eq!(again, 10, "one address is still limited: burst 9 + 1");
    assert_counts(server, "per128", 60, 1);
    let e = explain(server, "per128", one);
    assert_eq!(e.source.unwrap().group.to_string(), format!("{one}/128"));
    assert!(!e.admitted);
}

/// With `ipv6_prefix: 48` addresses of 2001:db8:1:0::/64 and 2001:db8:1:1::/64 share one
/// limit; 2001:db8:2::/48 is another source.
fn prefix_48_joins_neighbouring_64s(server: &Server) {
    let front = server.addrs("per48")[0];
    let pattern: Vec<bool> = (0..10)
        .map(|i: u16| served(host(i % 2, 100 + u64::from(i)), front))
        .collect();
    assert_eq!(
        pattern,
        [[true; 5], [false; 5]].concat(),
        "both /64s spend one /48's burst 4 + 1"
    );
    let elsewhere: IpAddr = "2001:db8:2::7".parse().unwrap();
    assert!(served(elsewhere, front), "another /48 is another source");
    assert_counts(server, "per48", 6, 5);
    let e = explain(server, "per48", host(1, 9_999));
    assert_eq!(e.source.unwrap().group.to_string(), "2001:db8:1::/48");
    assert!(!e.admitted);
}

/// Clients of an IPv4 listener from 127.0.0.5, half of them over an IPv6 socket with the
/// IPv4-mapped addresses, are one source; the explain logic maps `::ffff:127.0.0.5` to it.
fn mapped_ipv4_counts_as_ipv4(server: &Server) {
    let v4 = server.addrs("mapped")[0];
    let mapped = |ip: IpAddr| match ip {
        IpAddr::V4(a) => IpAddr::V6(a.to_ipv6_mapped()),
        other => other,
    };
    let v6 = SocketAddr::new(mapped(v4.ip()), v4.port());
    let source: IpAddr = "127.0.0.5".parse().unwrap();
    let pattern: Vec<bool> = (0..10)
        .map(|i| match i % 2 {
            0 => served(mapped(source), v6),
            _ => served(source, v4),
        })
        .collect();
    assert_eq!(
        pattern,
        [[true; 5], [false; 5]].concat(),
        "mapped and plain IPv4 clients spend one burst 4 + 1"
    );
    assert_counts(server, "mapped", 5, 5);
    let e = explain(server, "mapped", mapped(source));
    assert_eq!(e.source.unwrap().group.to_string(), "127.0.0.5/32");
    assert!(!e.admitted, "the mapped address is the spent IPv4 source");
}

/// Address `n` of the /64 `2001:db8:1:<net>::/64`, its 64 host bits spread by an odd
/// multiplier (one-to-one, so distinct `n` give distinct addresses).
fn host(net: u16, n: u64) -> IpAddr {
    let low = (n + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    assert_ne!(low, 5, "not the server's own address");
    let high = 0x2001_0db8_0001_0000_u64 | u64::from(net);
    IpAddr::V6(Ipv6Addr::from((u128::from(high) << 64) | u128::from(low)))
}

/// Sends one byte from `from` to `to`: true when it comes back (admitted and echoed), false
/// when tollgate closes the connection without an answer (refused).
fn served(from: IpAddr, to: SocketAddr) -> bool {
    let mut s = connect_from(from, to);
    s.set_read_timeout(Some(WAIT)).unwrap();
    // A refused connection may be reset before the write: that is a refusal too.
    if s.write_all(b"x").is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(1) => {
            assert_eq!(&b, b"x", "echoed");
            true
        }
        Ok(_) => false,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            panic!("from {from} to {to}: neither echoed nor closed within {WAIT:?}")
        }
        Err(_) => false,
    }
}

/// A connection from `from` (kernel-chosen port). `IPV6_FREEBIND` lets an IPv6 client take
/// any address of the AnyIP range; the IPv6 socket is dual-stack so it can use mapped ones.
fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let domain = Domain::for_address(SocketAddr::new(from, 0));
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).unwrap();
    if from.is_ipv6() {
        socket.set_only_v6(false).unwrap();
        socket.set_freebind_v6(true).unwrap();
    }
    let local = SocketAddr::new(from, 0);
    socket
        .bind(&local.into())
        .unwrap_or_else(|e| panic!("bind {local}: {e}"));
    socket
        .connect_timeout(&to.into(), WAIT)
        .unwrap_or_else(|e| panic!("connect {local} -> {to}: {e}"));
    socket.into()
}

/// Waits until `listener` has refused `rejected` connections for their rate, then checks it
/// accepted `accepted`.
fn assert_counts(server: &Server, listener: &str, accepted: u64, rejected: u64) {
    let snapshot = server.snapshot();
    let live = &snapshot.listener(listener).unwrap().live;
    wait_for(
        &format!("{listener}: {rejected} refused for their rate"),
        WAIT,
        || live.rejected_rate_limit.load(Ordering::Relaxed) == rejected,
    );
    assert_eq!(
        live.accepted.load(Ordering::Relaxed),
        accepted,
        "{listener}"
    );
}

fn explain(server: &Server, listener: &str, ip: IpAddr) -> tollgate::admission::Explanation {
    let snapshot = server.snapshot();
    let spec = snapshot.listener(listener).unwrap();
    spec.admission.explain(ip, Instant::now())
}

/// Listeners (name, bind, limits line) in front of one pool over `backend`.
fn config(backend: SocketAddr, listeners: &[(&str, &str, String)]) -> String {
    let mut yaml = String::from("workers: 2\nlisteners:\n");
    for (name, bind, limits) in listeners {
        yaml.push_str(&format!(
            "  {name}:\n    bind: \"{bind}\"\n    pool: back\n    {limits}\n"
        ));
    }
    yaml.push_str(&format!(
        "pools:\n  back:\n    backends:\n      - {{ address: \"{backend}\", weight: 1 }}\n"
    ));
    yaml
}
