//! Replays the seeds of the wire decoders' fuzz targets, `fuzz/corpus/proxy_header/`,
//! `fuzz/corpus/sni_hello/` and `fuzz/corpus/upgrade_wire/`, through the same checks as the
//! targets (`tollgate::proxy_protocol::check`, `tollgate::sni::check`,
//! `tollgate::upgrade::wire::check_input`), so they run on every
//! `cargo test` even where nobody runs the fuzzer. Each named seed must also answer what its
//! name says; seeds the fuzzer adds only have to pass the checks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::corpus::seeds_of;
use tollgate::proxy_protocol::{Decoded, Invalid};
use tollgate::sni::{self, Peeked};
use tollgate::upgrade::wire::{Message, WireError, check_input};

type ProxyAnswer = Result<Decoded, Invalid>;

#[test]
fn proxy_header_corpus_replays_cleanly() {
    let proxied = |a: &ProxyAnswer| matches!(a, Ok(Decoded::Done { header, .. }) if header.addresses.is_some());
    let own = |a: &ProxyAnswer| matches!(a, Ok(Decoded::Done { header, .. }) if header.addresses.is_none());
    let waits = |a: &ProxyAnswer| *a == Ok(Decoded::Incomplete);
    type Want = fn(&ProxyAnswer) -> bool;
    let wants: &[(&str, Want)] = &[
        ("v1_tcp4", proxied),
        ("v1_tcp6", proxied),
        ("v2_tcp4_tlv", proxied),
        ("v2_tcp6", proxied),
        ("v2_udp4", proxied),
        ("v1_unknown", own),
        ("v1_unknown_with_addresses", own),
        ("v2_local_no_addresses", own),
        ("v2_local_with_addresses", own),
        ("v2_local_forged_short_block", own),
        ("v2_unix", own),
        ("v2_unspec_proxy", own),
        ("v1_truncated", waits),
        ("v2_length_past_data", waits),
        ("empty", waits),
        ("v1_no_crlf", |a| *a == Err(Invalid::V1Unterminated)),
        ("v1_bare_lf", |a| *a == Err(Invalid::V1Unterminated)),
        ("v1_leading_zero_port", |a| {
            matches!(a, Err(Invalid::V1Malformed(_)))
        }),
        ("v2_length_over_limit", |a| *a == Err(Invalid::V2TooLong)),
        ("v2_short_address_block", |a| {
            *a == Err(Invalid::V2ShortAddresses)
        }),
        ("v2_bad_version", |a| *a == Err(Invalid::V2Version)),
        ("v2_bad_command", |a| *a == Err(Invalid::V2Command)),
        ("v2_bad_family", |a| *a == Err(Invalid::V2Family)),
        ("not_proxy_http", |a| *a == Err(Invalid::NoSignature)),
        ("not_proxy_tls", |a| *a == Err(Invalid::NoSignature)),
    ];
    replay("proxy_header", wants, |data| {
        tollgate::proxy_protocol::check(data)
    });
}

type SniAnswer = Result<Peeked, sni::Invalid>;

fn named(a: &SniAnswer, name: &str) -> bool {
    *a == Ok(Peeked::Done(Some(name.to_string())))
}

#[test]
fn sni_hello_corpus_replays_cleanly() {
    type Answer = SniAnswer;
    type Want = fn(&Answer) -> bool;
    let wants: &[(&str, Want)] = &[
        ("openssl_tls13_api.example.com", |a| {
            named(a, "api.example.com")
        }),
        ("openssl_tls12_www.example.org", |a| {
            named(a, "www.example.org")
        }),
        ("openssl_no_sni", |a| *a == Ok(Peeked::Done(None))),
        ("built_a.example", |a| named(a, "a.example")),
        ("built_split_9_byte_records", |a| named(a, "a.example")),
        ("built_no_extensions", |a| *a == Ok(Peeked::Done(None))),
        ("built_two_sni_extensions", |a| {
            matches!(a, Err(sni::Invalid::Malformed(_)))
        }),
        ("built_two_host_names", |a| {
            matches!(a, Err(sni::Invalid::Malformed(_)))
        }),
        ("built_empty_name_list", |a| {
            matches!(a, Err(sni::Invalid::Malformed(_)))
        }),
        ("built_trailing_dot", |a| *a == Err(sni::Invalid::BadName)),
        ("not_tls_http", |a| *a == Err(sni::Invalid::NotTls)),
        ("sslv2_hello", |a| *a == Err(sni::Invalid::NotTls)),
        ("alert", |a| *a == Err(sni::Invalid::NotTls)),
        ("record_too_long", |a| *a == Err(sni::Invalid::NotTls)),
        ("truncated", |a| *a == Ok(Peeked::Incomplete)),
        ("empty", |a| *a == Ok(Peeked::Incomplete)),
    ];
    replay("sni_hello", wants, sni::check);
}

type UpgradeAnswer = Result<Message, WireError>;

#[test]
fn upgrade_wire_corpus_replays_cleanly() {
    type Answer = UpgradeAnswer;
    type Want = fn(&Answer) -> bool;
    let payload = |a: &Answer| matches!(a, Err(WireError::Payload(_)));
    let fds = |a: &Answer| matches!(a, Err(WireError::Fds { .. }));
    let wants: &[(&str, Want)] = &[
        ("hello", |a| {
            matches!(a, Ok(Message::Hello { pid: 4242, .. }))
        }),
        ("refused", |a| matches!(a, Ok(Message::Refused { .. }))),
        (
            "listeners_two",
            |a| matches!(a, Ok(Message::Listeners { sockets }) if sockets.len() == 2),
        ),
        ("admin", |a| matches!(a, Ok(Message::Admin { .. }))),
        (
            "counters",
            |a| matches!(a, Ok(Message::Counters { samples }) if samples[1].value == 0.125),
        ),
        ("done", |a| matches!(a, Ok(Message::Done))),
        (
            "connections",
            |a| matches!(a, Ok(Message::Connections { conns }) if conns.len() == 2 && conns[0].fds() == 4),
        ),
        ("connections_fds_short", |a| {
            matches!(a, Err(WireError::Fds { wanted: 6, .. }))
        }),
        (
            "adopted",
            |a| matches!(a, Ok(Message::Adopted { refused, room: 600 }) if refused == &[1, 3]),
        ),
        (
            "state",
            |a| matches!(a, Ok(Message::State { state }) if state.backends.len() == 1 && state.deny.len() == 1),
        ),
        (
            "state_limits",
            |a| matches!(a, Ok(Message::State { state }) if state.limits.len() == 1 && state.limits[0].sources.len() == 2),
        ),
        (
            "sessions",
            |a| matches!(a, Ok(Message::Sessions { sessions }) if sessions.len() == 1 && sessions[0].requests == 3),
        ),
        ("ready", |a| {
            matches!(
                a,
                Ok(Message::Ready {
                    pid: 4243,
                    room: 19000
                })
            )
        }),
        ("abort", |a| matches!(a, Ok(Message::Abort { .. }))),
        ("version_2", |a| *a == Err(WireError::Version { theirs: 2 })),
        ("bad_magic", |a| *a == Err(WireError::Magic)),
        ("short", |a| *a == Err(WireError::Short(6))),
        ("empty", |a| *a == Err(WireError::Short(0))),
        ("length_past_data", |a| {
            matches!(a, Err(WireError::Length { said: 400, .. }))
        }),
        ("length_over_limit", |a| {
            matches!(a, Err(WireError::TooLong(_)))
        }),
        ("fds_missing", fds),
        ("fds_extra", fds),
        ("header_fds_disagree", fds),
        ("unknown_type", payload),
        ("unknown_field", payload),
        ("not_json", payload),
        ("counter_nan", payload),
    ];
    replay("upgrade_wire", wants, check_input);
}

/// A seed's name and what it must answer.
type Named<'a, A> = (&'a str, fn(&A) -> bool);

/// Runs every seed of `target` through `check` (a panic is a failed check) and each named
/// one against its expectation; every expectation must have its seed.
fn replay<A: std::fmt::Debug>(
    target: &str,
    wants: &[Named<A>],
    check: impl Fn(&[u8]) -> A + std::panic::RefUnwindSafe,
) {
    let seeds = seeds_of(target);
    for (name, _) in wants {
        assert!(
            seeds.iter().any(|(n, _)| n == name),
            "{target}: the seed {name} is missing"
        );
    }
    for (name, data) in &seeds {
        let answer = std::panic::catch_unwind(|| check(data))
            .unwrap_or_else(|_| panic!("{target}/{name}: a check failed"));
        if let Some((_, want)) = wants.iter().find(|(n, _)| n == name) {
            assert!(want(&answer), "{target}/{name}: answered {answer:?}");
        }
    }
}
