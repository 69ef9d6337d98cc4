//! The owner's building blocks without the event loop: snapshots reuse what did not change,
//! and a backend added to a checked pool takes no connection before its first check.
#![cfg(test)]

use std::net::SocketAddr;
use std::sync::Arc;

use super::build::Builder;
use super::registry::Registry;
use super::served::Served;
use crate::config::Config;
use crate::proxy::{DataPlane, ForwardMode};
use crate::state::Published;
use crate::sys::PipePool;

fn config(yaml_pools: &str) -> Config {
    let yaml = format!(
        "listeners:\n  a: {{ bind: \"127.0.0.1:0\", pool: a }}\n  b: {{ bind: \"127.0.0.2:0\", pool: b }}\npools:\n{yaml_pools}"
    );
    crate::config::load_str(&yaml, "t").unwrap()
}

const TWO_POOLS: &str = "  a:\n    balance: maglev\n    backends:\n      - address: \"10.0.0.1:80\"\n      - address: \"10.0.0.2:80\"\n  b:\n    backends:\n      - address: \"10.0.1.1:80\"\n";

#[test]
fn unchanged_pools_and_listeners_are_reused_and_no_change_publishes_nothing() {
    let c = config(TWO_POOLS);
    let (mut registry, mut builder) = (Registry::default(), Builder::default());
    let first = builder.build(&c, &mut registry, 1);
    assert!(first.changed);
    let again = builder.build(&c, &mut registry, 1);
    assert!(!again.changed, "nothing changed: nothing to publish");
    for name in ["a", "b"] {
        assert!(Arc::ptr_eq(
            &first.snapshot.pools[name],
            &again.snapshot.pools[name]
        ));
        assert!(Arc::ptr_eq(
            &first.snapshot.listeners[name],
            &again.snapshot.listeners[name]
        ));
    }
    // An operator drains pool b's backend: only pool b (and its listener) is rebuilt.
    let key = ("b".to_owned(), "10.0.1.1:80".parse::<SocketAddr>().unwrap());
    registry.set_override(&key, |o| o.state = super::AdminState::Draining);
    let drained = builder.build(&c, &mut registry, 1);
    assert!(drained.changed);
    assert!(
        Arc::ptr_eq(&first.snapshot.pools["a"], &drained.snapshot.pools["a"]),
        "the Maglev pool is not rebuilt for another pool's change"
    );
    assert!(Arc::ptr_eq(
        &first.snapshot.listeners["a"],
        &drained.snapshot.listeners["a"]
    ));
    assert!(!Arc::ptr_eq(
        &first.snapshot.pools["b"],
        &drained.snapshot.pools["b"]
    ));
    assert_eq!(drained.snapshot.pools["b"].backends[0].weight, 0);
    assert!(
        Arc::ptr_eq(
            &first.snapshot.pools["b"].backends[0].stats,
            &drained.snapshot.pools["b"].backends[0].stats
        ),
        "counters are kept by identity"
    );
    let reloaded = builder.build(&c, &mut registry, 2);
    assert!(reloaded.changed, "a new generation is published");
    assert!(Arc::ptr_eq(
        &drained.snapshot.pools["b"],
        &reloaded.snapshot.pools["b"]
    ));
}

/// No check runs here, so only `install` itself can keep the new backend out of the
/// snapshot that first contains it.
#[test]
fn a_backend_added_to_a_checked_pool_is_published_pending() {
    let checked = |backends: &[&str]| {
        let mut pools =
            "  a:\n    health_check: { type: tcp, interval: 1s }\n    backends:\n".to_owned();
        for b in backends {
            pools.push_str(&format!("      - address: \"{b}\"\n"));
        }
        pools.push_str("  b:\n    backends:\n      - address: \"10.0.1.1:80\"\n");
        config(&pools)
    };
    let mut served = Served::new(&checked(&["10.0.0.1:80"]), None, |first| {
        DataPlane::new(
            Published::new(first),
            PipePool::new(2, 2, 65536),
            ForwardMode::Copy,
            tokio::sync::mpsc::channel(1).0,
        )
    });
    served.install(checked(&["10.0.0.1:80", "10.0.0.2:80"]), 2);
    served.publish();
    let snapshot = served.plane().snapshot.load_full();
    let weights: Vec<u32> = snapshot.pools["a"]
        .backends
        .iter()
        .map(|b| b.weight)
        .collect();
    assert_eq!(
        weights[1], 0,
        "no connection before its first passing check"
    );
    assert!(weights[0] > 0, "the backend already serving keeps serving");
    let new = ("a".to_owned(), "10.0.0.2:80".parse().unwrap());
    assert_eq!(served.healths()[&new].label(), "pending");
    assert_eq!(snapshot.generation, 2);
}

/// A pool that loses its check forgets its backends' health, and their passive streaks
/// start afresh: a streak left past the limit would never notify again.
#[test]
fn forgetting_health_resets_passive_streaks() {
    use std::sync::atomic::Ordering::Relaxed;
    let c = config(TWO_POOLS);
    let mut served = Served::new(&c, None, |first| {
        DataPlane::new(
            Published::new(first),
            PipePool::new(2, 2, 65536),
            ForwardMode::Copy,
            tokio::sync::mpsc::channel(1).0,
        )
    });
    let key = ("b".to_owned(), "10.0.1.1:80".parse::<SocketAddr>().unwrap());
    let notice = crate::proxy::PassiveDown {
        pool: "b".into(),
        backend: key.1,
    };
    assert_eq!(
        served.passive(&notice),
        Some(key.clone()),
        "down, to be recovered"
    );
    served.publish();
    let stats = served.plane().snapshot.load().pools["b"].backends[0]
        .stats
        .clone();
    stats.failing_streak.store(9, Relaxed);
    stats.passive_reported.store(true, Relaxed);
    served.forget_health(std::slice::from_ref(&key));
    served.publish();
    assert_eq!(
        (
            stats.failing_streak.load(Relaxed),
            stats.passive_reported.load(Relaxed)
        ),
        (0, false)
    );
    assert!(served.healths().get(&key).is_none(), "up again");
    assert!(served.plane().snapshot.load().pools["b"].backends[0].weight > 0);
}
