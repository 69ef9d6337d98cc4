//! Criterion benchmarks of what a changed DNS answer costs the control plane (never the data
//! path: workers only load the snapshot this produces):
//!
//! * `apply_host_1024`: one round of a `host:` entry whose answer carries 1024 A records
//!   (the per-entry cap), through the TTL/failure policy and address building;
//! * `apply_srv_256x4`: one round of an `srv:` entry with 256 targets (the cap on targets
//!   asked) of 4 addresses each, over two priorities (1024 addresses, the cap);
//! * `apply_srv_hostile`: 1024 SRV records (the cap on records taken from one answer) all
//!   naming one target that has 1024 addresses, on different ports: the answer a review
//!   measured at 3.8 s a round before the bounds, now cut at 1024 addresses;
//! * `expand_1024`: the written config plus a 1024-address answer into the effective config;
//! * `publish_1024_maglev`: building that effective config into a fresh snapshot, Maglev
//!   table included: the rest of what one changed answer costs before workers see it;
//! * `republish_unchanged_maglev`: the owner rebuilding the same 1024-backend pool with
//!   nothing changed (an event that touched another pool): the pool is reused, not rebuilt.
//!
//! Run: `cargo bench --bench discovery` (add `-- --quick` for a fast pass).
#![allow(clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate::config::Lookup;
use tollgate::control::Snapshots;
use tollgate::discovery::answer::{NameState, Reply, Round, Srv, Timing};

const T: Timing = Timing {
    min_ttl: Duration::from_secs(1),
    max_ttl: Duration::from_secs(300),
    negative_hold: Duration::from_secs(30),
};

fn ips(n: u32, base: u32) -> Vec<IpAddr> {
    (0..n)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + base + i)))
        .collect()
}

fn host_round(n: u32) -> Round {
    Round {
        srv: None,
        addresses: vec![(
            "app.test".into(),
            Reply::Records(30, ips(n, 0)),
            Reply::NoData,
        )],
    }
}

fn srv_round(targets: u32, per_target: u32) -> Round {
    let records = (0..targets)
        .map(|t| Srv {
            priority: if t % 2 == 0 { 10 } else { 20 },
            weight: (t % 7) as u16,
            port: 8000 + t as u16,
            target: format!("t{t}.test"),
        })
        .collect();
    let addresses = (0..targets)
        .map(|t| {
            let a = Reply::Records(30, ips(per_target, t * per_target));
            (format!("t{t}.test"), a, Reply::NoData)
        })
        .collect();
    Round {
        srv: Some(Reply::Records(30, records)),
        addresses,
    }
}

fn hostile_round() -> Round {
    let records = (0..1024u16)
        .map(|p| Srv {
            priority: 1,
            weight: 1,
            port: 1000 + p,
            target: "one.test".into(),
        })
        .collect();
    Round {
        srv: Some(Reply::Records(30, records)),
        addresses: vec![(
            "one.test".into(),
            Reply::Records(30, ips(1024, 0)),
            Reply::NoData,
        )],
    }
}

fn bench(c: &mut Criterion) {
    let now = Instant::now();
    c.bench_function("apply_host_1024", |b| {
        b.iter(|| {
            let mut s = NameState::default();
            black_box(s.apply(host_round(1024), 80, now, T))
        })
    });
    c.bench_function("apply_srv_256x4", |b| {
        b.iter(|| {
            let mut s = NameState::default();
            black_box(s.apply(srv_round(256, 4), 0, now, T))
        })
    });
    c.bench_function("apply_srv_hostile", |b| {
        b.iter(|| {
            let mut s = NameState::default();
            s.apply(hostile_round(), 0, now, T);
            black_box(s.resolved.len())
        })
    });

    let yaml = "listeners:\n  web: { bind: \"127.0.0.1:8080\", pool: p }\npools:\n  p:\n    balance: maglev\n    backends:\n      - { host: app.test, port: 80 }\n";
    let written = tollgate::config::load_str(yaml, "bench").expect("valid");
    let mut state = NameState::default();
    state.apply(host_round(1024), 80, now, T);
    let key = (
        "p".to_owned(),
        Lookup::Host {
            name: "app.test".into(),
            port: 80,
        },
    );
    let states = HashMap::from([(key, state)]);
    c.bench_function("expand_1024", |b| {
        b.iter(|| black_box(tollgate::discovery::expand(&written, &states)))
    });
    let effective = tollgate::discovery::expand(&written, &states);
    assert_eq!(effective.pools[0].backends.len(), 1024);
    c.bench_function("publish_1024_maglev", |b| {
        b.iter(|| black_box(Snapshots::default().build(&effective, 1)))
    });
    let mut kept = Snapshots::default();
    kept.build(&effective, 1);
    c.bench_function("republish_unchanged_maglev", |b| {
        b.iter(|| black_box(kept.build(&effective, 1)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
