//! Criterion benchmarks of the admission decision: one `Policy::admit` call exactly as the
//! accept path makes it (reading `Instant::now()` itself), with the returned ticket dropped
//! inside the measured closure, as a real connection's ticket is dropped when it closes.
//! Admission runs on every accepted connection before anything else is spent on it, so its
//! cost bounds how fast a listener can accept (and shed) connections under a flood:
//!
//! * `instant_now`: `Instant::now()` alone, for reference: every decision below but the
//!   first reads the clock once;
//! * `open_policy`: no rules at all, the baseline (`admit` returns before reading the clock);
//! * `empty_table`: per-source limits that never refuse, one source, otherwise empty table;
//! * `table_1m_existing`: the same limits with 1 000 000 sources tracked (every shard full),
//!   admitting sources already tracked (4096 of them in turn, not one hot cache line);
//! * `table_1m_new_source`: the full 1 000 000-source table, each decision a new source that
//!   evicts the least recently seen recovered one (the path a spoofed-source flood takes);
//! * `acl_1000`: a 1000-block `deny` and a 1000-block `allow` list (random IPv4 and IPv6
//!   blocks), no per-source limits, admitting addresses that pass both lists (the longest
//!   ACL path);
//! * `acl_1000_plus_table_1m`: those lists in front of the full 1 000 000-source table;
//! * `*_admit_only`: the `empty_table` and `table_1m_existing` decisions with the tickets
//!   held (up to 1024) and dropped outside the timing: the difference is roughly the cost of
//!   the drop (roughly: a source holding a ticket skips the recency-list update).
//!
//! Run: `cargo bench --bench admission` (add `-- --quick` for a fast pass). Setup (filling
//! the tables) takes a few seconds and happens only for the benchmarks selected.

use std::collections::HashSet;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate::admission::{Cidr, PerSource, Policy, PrefixSet, Rate, Shape, SourceTable};

const MAX_TRACKED: usize = 1_000_000;
/// Distinct sources each benchmark cycles through.
const CYCLE: usize = 4096;

/// A limit that admits everything the benchmark does: 1e9/s (one every nanosecond) with a
/// burst of 1e6, and a million connections per source.
fn never_limiting() -> (Rate, u32) {
    (
        Rate::new(1_000_000_000, Duration::from_secs(1), 1_000_000),
        1_000_000,
    )
}

fn per_source(rate: Rate, max_connections: u32) -> PerSource {
    PerSource {
        rate: Some(rate),
        max_connections: Some(max_connections),
        exempt: PrefixSet::default(),
        table: Arc::new(SourceTable::new(
            Shape {
                ipv4_prefix: 32,
                ipv6_prefix: 64,
                max_tracked: MAX_TRACKED,
            },
            Some(rate),
        )),
    }
}

/// Filler source `i`: IPv4 10.0.0.0/8 /32s and IPv6 2001:db8::/32 /64s, alternately.
fn filler(i: u64) -> IpAddr {
    let n = i / 2;
    if i.is_multiple_of(2) {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (n as u32 & 0x00ff_ffff)))
    } else {
        let bits = (0x2001_0db8u128 << 96) | (u128::from(n as u32) << 64) | 1;
        IpAddr::V6(Ipv6Addr::from(bits))
    }
}

/// New source `i`, never a filler: IPv4 11.0.0.0/8 /32s and IPv6 2001:db9::/32 /64s.
fn newcomer(i: u64) -> IpAddr {
    let n = i / 2;
    if i.is_multiple_of(2) {
        IpAddr::V4(Ipv4Addr::from(0x0b00_0000 | (n as u32 & 0x00ff_ffff)))
    } else {
        let bits = (0x2001_0db9u128 << 96) | (u128::from(n as u32) << 64) | 1;
        IpAddr::V6(Ipv6Addr::from(bits))
    }
}

/// Admits (and closes) filler sources until every shard of the table is at capacity, so
/// that the table holds exactly `MAX_TRACKED` sources. Sources land in shards by a keyed
/// hash, so some shards overflow (forgetting their oldest sources, which the limits let
/// recover at once) before the last one fills: this takes a few percent more than 1M.
fn fill(policy: &Policy) {
    let Some(ps) = &policy.per_source else {
        unreachable!("fill needs per-source limits")
    };
    let mut i = 0u64;
    loop {
        for _ in 0..if i == 0 { MAX_TRACKED } else { 16_384 } {
            let admitted = ps
                .table
                .admit(filler(i), Instant::now(), ps.max_connections);
            assert!(admitted.is_ok(), "filler source {i} refused");
            i += 1;
        }
        if ps.table.tracked() == MAX_TRACKED {
            break;
        }
        assert!(i < 4 * MAX_TRACKED as u64, "the table does not fill");
    }
}

/// `CYCLE` sources of `candidates` that are tracked now (the earliest fillers in an
/// overflowing shard were forgotten).
fn tracked(policy: &Policy, candidates: impl Iterator<Item = IpAddr>) -> Vec<IpAddr> {
    let Some(ps) = &policy.per_source else {
        unreachable!("tracked needs per-source limits")
    };
    let now = Instant::now();
    let found: Vec<IpAddr> = candidates
        .filter(|&ip| ps.table.peek(ip, now).0.is_some())
        .take(CYCLE)
        .collect();
    assert_eq!(found.len(), CYCLE, "too few tracked sources");
    found
}

/// A policy and the sources to admit under it, built when first needed (criterion calls a
/// benchmark's closure only when the benchmark is selected, so an unselected benchmark
/// costs no setup).
type Setup = Option<(Policy, Vec<IpAddr>)>;

/// Times `policy.admit` over the sources in turn, dropping each ticket inside the timing,
/// and checks afterwards that none was refused.
fn bench_admit(
    c: &mut Criterion,
    name: &str,
    state: &mut Setup,
    setup: impl Fn() -> (Policy, Vec<IpAddr>),
) {
    let mut refused = 0u64;
    let mut n = 0usize;
    c.bench_function(name, |b| {
        let (policy, sources) = state.get_or_insert_with(&setup);
        b.iter(|| {
            let ip = sources[n % sources.len()];
            n = n.wrapping_add(1);
            let decision = black_box(policy.admit(black_box(ip)));
            refused += u64::from(decision.is_err());
            drop(decision);
        })
    });
    assert_eq!(refused, 0, "{name}: some decisions were refusals");
}

/// Times `policy.admit` alone: the tickets are kept, in batches of up to 1024, and dropped
/// outside the timing. A source holding a ticket is pinned (out of the recency list), so
/// after its first admission in a batch this also skips the recency-list update that an
/// admission of an idle source makes.
fn bench_admit_only(
    c: &mut Criterion,
    name: &str,
    state: &mut Setup,
    setup: impl Fn() -> (Policy, Vec<IpAddr>),
) {
    let mut refused = 0u64;
    let mut n = 0usize;
    let mut held = Vec::with_capacity(1024);
    c.bench_function(name, |b| {
        let (policy, sources) = state.get_or_insert_with(&setup);
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let batch = left.min(1024);
                let start = Instant::now();
                for _ in 0..batch {
                    let ip = sources[n % sources.len()];
                    n = n.wrapping_add(1);
                    held.push(black_box(policy.admit(black_box(ip))));
                }
                spent += start.elapsed();
                refused += held.iter().filter(|d| d.is_err()).count() as u64;
                held.clear();
                left -= batch;
            }
            spent
        })
    });
    assert_eq!(refused, 0, "{name}: some decisions were refusals");
}

fn limited() -> Policy {
    let (rate, max) = never_limiting();
    Policy {
        per_source: Some(per_source(rate, max)),
        ..Policy::default()
    }
}

/// Reference: the clock read every decision but `open_policy`'s makes.
fn instant_now(c: &mut Criterion) {
    c.bench_function("instant_now", |b| b.iter(Instant::now));
}

fn open_policy(c: &mut Criterion) {
    bench_admit(c, "open_policy", &mut None, || {
        (Policy::default(), (0..CYCLE as u64).map(filler).collect())
    });
}

fn empty_table(c: &mut Criterion) {
    let setup = || (limited(), vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))]);
    // A fresh table for each, so each measures one source in an otherwise empty table.
    bench_admit(c, "empty_table", &mut None, setup);
    bench_admit_only(c, "empty_table_admit_only", &mut None, setup);
}

fn table_1m_existing(c: &mut Criterion) {
    let setup = || {
        let policy = limited();
        fill(&policy);
        // Spread over the whole fill: every 241st filler (odd, so both families).
        let sources = tracked(&policy, (0..).map(|i| filler(i * 241)));
        (policy, sources)
    };
    // One table for both (built once, by whichever runs first).
    let mut state = None;
    bench_admit(c, "table_1m_existing", &mut state, setup);
    bench_admit_only(c, "table_1m_existing_admit_only", &mut state, setup);
}

fn table_1m_new_source(c: &mut Criterion) {
    const NAME: &str = "table_1m_new_source";
    let mut policy = None;
    let mut refused = 0u64;
    let mut n = 0u64;
    c.bench_function(NAME, |b| {
        let policy = policy.get_or_insert_with(|| {
            // 1e6/s, no burst: a source's TAT is 1 µs after its admission, so a millisecond
            // after the fill every filler has recovered and may be forgotten.
            let policy = Policy {
                per_source: Some(per_source(
                    Rate::new(1_000_000, Duration::from_secs(1), 0),
                    1_000_000,
                )),
                ..Policy::default()
            };
            fill(&policy);
            std::thread::sleep(Duration::from_millis(2));
            policy
        });
        b.iter(|| {
            let ip = newcomer(n);
            n += 1;
            let decision = black_box(policy.admit(black_box(ip)));
            refused += u64::from(decision.is_err());
            drop(decision);
        })
    });
    assert_eq!(refused, 0, "{NAME}: some decisions were refusals");
    if let Some(ps) = policy.as_ref().and_then(|p| p.per_source.as_ref()) {
        assert_eq!(ps.table.tracked(), MAX_TRACKED);
    }
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn between(&mut self, low: u8, high: u8) -> u8 {
        low + (self.next() % u64::from(high - low + 1)) as u8
    }

    fn v6(&mut self) -> u128 {
        (u128::from(self.next()) << 64) | u128::from(self.next())
    }

    /// A random block: half IPv4 (/`v4` lengths), half IPv6 (/`v6` lengths), all in global
    /// unicast space (IPv6 2000::/3) so none is IPv4-mapped.
    fn block(&mut self, v4: (u8, u8), v6: (u8, u8)) -> Cidr {
        if self.next().is_multiple_of(2) {
            let ip = IpAddr::V4(Ipv4Addr::from(self.next() as u32));
            Cidr::covering(ip, self.between(v4.0, v4.1))
        } else {
            let bits = (self.v6() >> 3) | (1u128 << 125);
            Cidr::covering(IpAddr::V6(Ipv6Addr::from(bits)), self.between(v6.0, v6.1))
        }
    }

    /// A random address inside `block`.
    fn inside(&mut self, block: Cidr) -> IpAddr {
        let len = u32::from(block.prefix_len());
        match block.network() {
            IpAddr::V4(net) => {
                let host = (self.next() as u32).checked_shr(len).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(net) | host))
            }
            IpAddr::V6(net) => {
                let host = self.v6().checked_shr(len).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(net) | host))
            }
        }
    }
}

/// 1000 `deny` and 1000 `allow` blocks, and `CYCLE` distinct addresses (by /32 or /64, the
/// table's keys) that are in an allow block and in no deny block.
fn acl() -> (PrefixSet, PrefixSet, Vec<IpAddr>) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Distinct blocks (random short blocks can repeat), so each list has 1000 entries.
    let mut distinct = |v4, v6| {
        let mut seen = HashSet::new();
        std::iter::repeat_with(|| rng.block(v4, v6))
            .filter(|&b| seen.insert(b))
            .take(1000)
            .collect::<Vec<Cidr>>()
    };
    let deny = distinct((12, 32), (24, 128));
    let allow = distinct((8, 32), (16, 128));
    let (deny_set, allow_set) = (PrefixSet::new(deny), PrefixSet::new(allow.clone()));
    assert_eq!((deny_set.len(), allow_set.len()), (1000, 1000));
    let mut keys = HashSet::new();
    let mut passing = Vec::with_capacity(CYCLE);
    while passing.len() < CYCLE {
        let block = allow[(rng.next() % 1000) as usize];
        let ip = rng.inside(block);
        let key = match ip {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6) >> 64 << 64,
        };
        if !deny_set.contains(ip) && allow_set.contains(ip) && keys.insert(key) {
            passing.push(ip);
        }
    }
    (deny_set, allow_set, passing)
}

fn acl_1000(c: &mut Criterion) {
    bench_admit(c, "acl_1000", &mut None, || {
        let (deny, allow, passing) = acl();
        let policy = Policy {
            deny,
            allow,
            ..Policy::default()
        };
        (policy, passing)
    });
    bench_admit(c, "acl_1000_plus_table_1m", &mut None, || {
        let (deny, allow, passing) = acl();
        let policy = Policy {
            deny,
            allow,
            ..limited()
        };
        fill(&policy);
        // The measured sources are seen last, so none is forgotten: all 1M are tracked.
        for &ip in &passing {
            assert!(matches!(policy.admit(ip), Ok(Some(_))), "{ip} refused");
        }
        let sources = tracked(&policy, passing.iter().copied());
        (policy, sources)
    });
}

criterion_group!(
    benches,
    instant_now,
    open_policy,
    empty_table,
    table_1m_existing,
    table_1m_new_source,
    acl_1000
);
criterion_main!(benches);
