//! Admission policy and limiter table, on a clock the tests move by hand.
#![cfg(test)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn set(blocks: &[&str]) -> PrefixSet {
    PrefixSet::new(blocks.iter().map(|b| b.parse().unwrap()))
}

fn table(max_tracked: usize, ipv4_prefix: u8, ipv6_prefix: u8) -> Arc<SourceTable> {
    Arc::new(SourceTable::new(
        Shape {
            ipv4_prefix,
            ipv6_prefix,
            max_tracked,
        },
        None,
    ))
}

fn limited(rate: Option<Rate>, max_connections: Option<u32>, t: Arc<SourceTable>) -> Policy {
    t.set_rate(t.epoch(), rate);
    Policy {
        per_source: Some(PerSource {
            rate,
            max_connections,
            exempt: set(&["192.0.2.0/24"]),
            table: t,
        }),
        ..Policy::default()
    }
}

fn per_second(n: u64, burst: u32) -> Option<Rate> {
    Some(Rate::new(n, Duration::from_secs(1), burst))
}

#[test]
fn deny_wins_over_allow_and_allow_lists_are_exclusive() {
    let p = Policy {
        runtime_deny: set(&["203.0.113.9"]),
        deny: set(&["10.9.0.0/16"]),
        allow: set(&["10.0.0.0/8", "203.0.113.0/24"]),
        per_source: None,
    };
    let now = Instant::now();
    let rule = |a: &str| {
        p.admit_at(ip(a), now)
            .map(|_| ())
            .map_err(|r| (r.reason, r.rule))
    };
    assert_eq!(rule("10.1.2.3"), Ok(()));
    assert_eq!(
        rule("10.9.1.1"),
        Err((Reason::Acl, Rule::Deny("10.9.0.0/16".parse().unwrap())))
    );
    assert_eq!(
        rule("203.0.113.9"),
        Err((
            Reason::Acl,
            Rule::RuntimeDeny("203.0.113.9/32".parse().unwrap())
        ))
    );
    assert_eq!(rule("198.51.100.1"), Err((Reason::Acl, Rule::NotAllowed)));
    assert_eq!(rule("::ffff:10.1.2.3"), Ok(()), "mapped IPv6 is IPv4");
    assert_eq!(rule("2001:db8::1"), Err((Reason::Acl, Rule::NotAllowed)));
    let e = p.explain(ip("10.1.2.3"), now);
    assert_eq!(e.allowed_by, Some("10.0.0.0/8".parse().unwrap()));
    assert_eq!((e.admitted, e.rule), (true, Rule::Open));
    assert!(Policy::default().is_open());
}

#[test]
fn a_source_gets_rate_times_time_plus_burst_and_others_are_unaffected() {
    let t = table(1000, 32, 64);
    let p = limited(per_second(10, 4), None, t.clone());
    let t0 = t.epoch();
    let mut admitted = 0;
    // 50/s for 10 s from one source, 1/s from another, both at the same time.
    for step in 0..=500u64 {
        let now = t0 + Duration::from_millis(step * 20);
        if p.admit_at(ip("198.51.100.1"), now).is_ok() {
            admitted += 1;
        }
        if step % 50 == 0 {
            assert!(
                p.admit_at(ip("198.51.100.2"), now).is_ok(),
                "the quiet source"
            );
        }
    }
    assert_eq!(admitted, 5 + 100, "burst + 1 + 10 s x 10/s");
    let e = p.explain(ip("198.51.100.1"), t0 + Duration::from_millis(10_000));
    assert_eq!((e.admitted, e.reason), (false, Some(Reason::RateLimit)));
    let view = e.source.unwrap();
    assert!(view.tokens.unwrap() < 1.0);
    assert_eq!(view.group.to_string(), "198.51.100.1/32");
    // Exempt sources skip the limits.
    for _ in 0..100 {
        assert!(p.admit_at(ip("192.0.2.50"), t0).is_ok());
    }
    assert_eq!(
        p.explain(ip("192.0.2.50"), t0).rule,
        Rule::Exempt("192.0.2.0/24".parse().unwrap())
    );
}

#[test]
fn concurrency_is_counted_per_source_and_refusals_spend_no_token() {
    let t = table(1000, 24, 64);
    let p = limited(per_second(1, 2), Some(2), t.clone());
    let t0 = t.epoch();
    let a = p.admit_at(ip("198.51.100.1"), t0).unwrap();
    // Same /24: the same source.
    let b = p.admit_at(ip("198.51.100.77"), t0).unwrap();
    let refused = p.admit_at(ip("198.51.100.3"), t0).unwrap_err();
    assert_eq!(
        (refused.reason, refused.rule),
        (Reason::SourceLimit, Rule::MaxConnections)
    );
    assert!(refused.log, "the first refusal is logged");
    assert!(
        !p.admit_at(ip("198.51.100.3"), t0).unwrap_err().log,
        "the next is not"
    );
    let e = p.explain(ip("198.51.100.5"), t0);
    assert_eq!(e.source.as_ref().unwrap().open, 2);
    drop(a);
    // The refusals above spent nothing: the third token of the burst is still there.
    let c = p.admit_at(ip("198.51.100.3"), t0).unwrap();
    drop((b, c));
    assert_eq!(
        p.admit_at(ip("198.51.100.3"), t0).unwrap_err().reason,
        Reason::RateLimit
    );
    assert!(
        p.admit_at(ip("198.51.100.3"), t0 + Duration::from_secs(1))
            .is_ok()
    );
    // Logged again only after the interval.
    let later = t0 + Duration::from_secs(u64::from(LOG_EVERY_SECS) + 1);
    let _held = p.admit_at(ip("198.51.100.1"), later).unwrap();
    let _held2 = p
        .admit_at(ip("198.51.100.1"), later + Duration::from_secs(1))
        .unwrap();
    assert!(p.admit_at(ip("198.51.100.1"), later).unwrap_err().log);
}

#[test]
fn grouping_by_prefix_and_mapped_addresses() {
    let t = table(1000, 24, 64);
    assert_eq!(t.key(ip("10.0.0.1")), t.key(ip("10.0.0.200")));
    assert_ne!(t.key(ip("10.0.0.1")), t.key(ip("10.0.1.1")));
    assert_eq!(t.key(ip("::ffff:10.0.0.9")), t.key(ip("10.0.0.1")));
    assert_eq!(
        t.key(ip("2001:db8:1:2::1")),
        t.key(ip("2001:db8:1:2:ffff::9"))
    );
    assert_ne!(t.key(ip("2001:db8:1:2::1")), t.key(ip("2001:db8:1:3::1")));
    assert_eq!(t.group(ip("::ffff:10.0.0.9")).to_string(), "10.0.0.0/24");
    assert_eq!(
        t.group(ip("2001:db8:1:2::1")).to_string(),
        "2001:db8:1:2::/64"
    );
    // A v6 group can never share a key with a v4 one, even at odd prefixes.
    for p in [81u8, 88, 95, 96, 100, 128] {
        let t = table(10, 32, p);
        let v6 = t.key(ip("0:0:0:0:1:ffff:1.2.3.4"));
        assert_ne!(v6, t.key(ip("1.2.3.4")), "prefix {p}");
    }
}

#[test]
fn shards_split_the_bound_exactly() {
    for max in [1usize, 7, 255, 256, 1000, 10_000, 1_000_000, 100_000_000] {
        let t = table(max, 32, 64);
        let shards = t.shard_count();
        assert!(
            shards.is_power_of_two() && shards <= 1024,
            "{max}: {shards}"
        );
        assert!(max / shards >= 256 || shards == 1, "{max}: {shards}");
        assert!(
            max / shards <= 2 * 16_384 || shards == 1024,
            "{max}: {shards}"
        );
    }
    assert_eq!(table(1_000_000, 32, 64).shard_count(), 64);
}

#[test]
fn all_workers_together_honour_one_limit() {
    let t = table(100_000, 32, 64);
    let p = Arc::new(limited(per_second(1, 99), None, t.clone()));
    let now = t.epoch() + Duration::from_millis(5);
    let admitted: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let p = p.clone();
                s.spawn(move || {
                    (0..1000)
                        .filter(|_| p.admit_at(ip("198.51.100.1"), now).is_ok())
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(admitted, 100, "burst + 1, not 4 x that");
}

/// A million distinct sources through a 100 000-entry table: it never grows past its bound,
/// and a source that is rate-limited is never forgotten (and so let in) early.
#[test]
fn a_million_sources_stay_within_the_bound_and_never_unlimit_early() {
    const CAP: usize = 100_000;
    let t = table(CAP, 32, 64);
    // 1000/s with a burst of 100: a flood source recovers 1 ms after its one connection.
    // The limited source spends its burst at t0 and then keeps trying; forgetting it would
    // hand it a fresh burst, which its count would show.
    let p = limited(per_second(1000, 99), None, t.clone());
    let t0 = t.epoch();
    let limited_ip = ip("198.51.100.1");
    for _ in 0..100 {
        p.admit_at(limited_ip, t0).unwrap();
    }
    let mut limited_admitted = 100u64;
    let (mut admitted, mut full) = (0u64, 0u64);
    for i in 0..1_000_000u32 {
        // 1 M sources over 90 ms: about 11 000 per millisecond, under the bound.
        let now = t0 + Duration::from_nanos(u64::from(i) * 90);
        let source = IpAddr::from(std::net::Ipv6Addr::from(
            (0x2001_0db8u128 << 96) | (u128::from(i) << 64),
        ));
        match p.admit_at(source, now) {
            Ok(_) => admitted += 1,
            Err(r) => {
                assert_eq!(r.reason, Reason::SourceTableFull);
                full += 1;
            }
        }
        if i % 97 == 0 {
            match p.admit_at(limited_ip, now) {
                Ok(_) => limited_admitted += 1,
                Err(r) => assert_eq!(r.reason, Reason::RateLimit, "after {i} sources"),
            }
            let elapsed_ms = (now - t0).as_millis() as u64;
            assert!(
                limited_admitted <= 100 + elapsed_ms + 1,
                "{limited_admitted} admitted by {elapsed_ms} ms"
            );
        }
        if i % 100_000 == 0 {
            assert!(t.tracked() <= CAP);
        }
    }
    assert!(t.tracked() <= CAP, "{}", t.tracked());
    assert!(
        admitted > 900_000,
        "admitted {admitted}, refused as full {full}"
    );
    let bytes = t.memory();
    eprintln!(
        "{admitted} admitted, {full} refused as full, {} tracked, {bytes} bytes ({:.1} per slot)",
        t.tracked(),
        bytes as f64 / CAP as f64
    );
    assert!(bytes <= CAP * 64, "{bytes} bytes for {CAP} sources");
    assert!(
        limited_admitted >= 100 + 85,
        "it kept its rate: {limited_admitted}"
    );
}

#[test]
fn a_full_table_fails_closed_and_recovers() {
    let t = table(10, 32, 64);
    let p = limited(per_second(1, 0), None, t.clone());
    let t0 = t.epoch();
    for i in 0..10u8 {
        p.admit_at(IpAddr::from([10, 0, 0, i]), t0).unwrap();
    }
    let r = p.admit_at(ip("10.0.1.1"), t0).unwrap_err();
    assert_eq!(
        (r.reason, r.rule),
        (Reason::SourceTableFull, Rule::TableFull)
    );
    let e = p.explain(ip("10.0.1.1"), t0);
    assert_eq!(e.reason, Some(Reason::SourceTableFull));
    // Once the oldest have recovered, they make room.
    assert!(
        p.admit_at(ip("10.0.1.1"), t0 + Duration::from_secs(1))
            .is_ok()
    );
    assert_eq!(t.tracked(), 10);
}

#[test]
fn open_connections_pin_a_source_in_the_table() {
    let t = table(4, 32, 64);
    let p = limited(None, Some(1), t.clone());
    let t0 = t.epoch();
    let held = p.admit_at(ip("10.0.0.1"), t0).unwrap();
    for i in 2..200u8 {
        // Idle sources churn through the other three slots.
        drop(p.admit_at(IpAddr::from([10, 0, 0, i]), t0).unwrap());
    }
    assert_eq!(
        p.admit_at(ip("10.0.0.1"), t0).unwrap_err().reason,
        Reason::SourceLimit,
        "the held connection is still counted"
    );
    drop(held);
    assert!(p.admit_at(ip("10.0.0.1"), t0).is_ok());
}

/// Sources that spent their burst and went quiet cannot be forgotten yet, but they must not
/// hide the recovered sources behind them from eviction.
#[test]
fn spent_quiet_sources_do_not_block_eviction_of_recovered_ones() {
    let t = table(100, 32, 64);
    let p = limited(
        Some(Rate::new(1, Duration::from_secs(60), 9)),
        None,
        t.clone(),
    );
    let t0 = t.epoch();
    for i in 0..8u8 {
        for _ in 0..10 {
            drop(p.admit_at(IpAddr::from([10, 0, 0, i]), t0).unwrap());
        }
    }
    for i in 0..92u8 {
        drop(
            p.admit_at(IpAddr::from([10, 0, 1, i]), t0 + Duration::from_secs(1))
                .unwrap(),
        );
    }
    let later = t0 + Duration::from_secs(300);
    for i in 0..20u8 {
        assert!(
            p.admit_at(IpAddr::from([10, 0, 2, i]), later).is_ok(),
            "new source {i}"
        );
    }
    // The spent ones are still remembered: five of their ten tokens are back, not ten.
    let view = p.explain(ip("10.0.0.3"), later).source.unwrap();
    assert!(view.tracked);
    assert!((view.tokens.unwrap() - 5.0).abs() < 1e-6, "{view:?}");
}
