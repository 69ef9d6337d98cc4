//! Criterion benchmarks of backend selection: one pick (the whole `Pool::candidates` path a
//! connection takes: loads read, ticket or random number drawn, retries ordered) for each
//! algorithm with 3, 30 and 300 backends, and building a Maglev table.
//!
//! Run: `cargo bench --bench balance` (add `-- --quick` for a fast pass).

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tollgate::balance::Maglev;
use tollgate::state::{Algorithm, Backend, BackendStats, Pool, PoolLive};

fn pool(n: usize, algorithm: Algorithm) -> Pool {
    let backends = (0..n)
        .map(|i| {
            let address: SocketAddr = format!("10.0.{}.{}:8080", i / 250, i % 250 + 1)
                .parse()
                .unwrap_or_else(|_| unreachable!());
            let stats = Arc::new(BackendStats::default());
            stats
                .active
                .store((i as u64 * 7) % 13, std::sync::atomic::Ordering::Relaxed);
            Arc::new(Backend {
                address,
                weight: 1 + (i as u32 % 3),
                stats,
            })
        })
        .collect();
    Pool::new(
        "bench",
        backends,
        2,
        Arc::new(PoolLive::default()),
        algorithm,
    )
}

fn picks(c: &mut Criterion) {
    let algorithms = [
        ("round_robin", Algorithm::RoundRobin),
        ("least_connections", Algorithm::LeastConnections),
        ("random_two", Algorithm::RandomTwo),
        ("maglev", Algorithm::Maglev { with_port: false }),
    ];
    for (name, algorithm) in algorithms {
        let mut group = c.benchmark_group(format!("pick/{name}"));
        for n in [3usize, 30, 300] {
            let p = pool(n, algorithm);
            let mut port = 1024u16;
            group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                b.iter(|| {
                    port = port.wrapping_add(1);
                    let client = SocketAddr::from(([192, 0, 2, (port % 250) as u8], port));
                    black_box(p.candidates(black_box(client)))
                })
            });
        }
        group.finish();
    }
}

fn maglev_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev_build");
    group.sample_size(10);
    for n in [3usize, 30, 300] {
        let ids: Vec<String> = (0..n)
            .map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250 + 1))
            .collect();
        let weights: Vec<u32> = (0..n).map(|i| 1 + (i as u32 % 3)).collect();
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(Maglev::new(&ids, &weights)))
        });
    }
    group.finish();
}

criterion_group!(benches, picks, maglev_build);
criterion_main!(benches);
