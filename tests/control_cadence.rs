//! A slow reload stalls nothing else on the control plane: while one is under way — here
//! a reload that moves a per-source limiter of a million tracked sources into a new shape,
//! the slowest thing a reload does now that every file it reads is a bounded regular file —
//! health checks keep probing at their interval, DNS entries keep asking as their TTL says,
//! and `/readyz` and `/metrics` answer. Then the reload completes and applies in one step.
//!
//! (It used to hold the reload in validation on a FIFO token file; FIFOs are now refused at
//! once, never opened: see `tests/input_files.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::dns::{DnsServer, dns_config, lo};
use common::http::{get, request};
use common::*;

const TOKEN: &str = "cadence-token";
/// Enough tracked sources that moving them takes the reload about a second (debug build).
const SOURCES: u32 = 1_000_000;

/// A listener that records when each connection (a TCP health probe) arrives.
fn probe_recorder() -> (SocketAddr, Arc<Mutex<Vec<Instant>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let sink = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            sink.lock().unwrap().push(Instant::now());
            drop(s);
        }
    });
    (addr, seen)
}

#[test]
fn health_checks_dns_and_readyz_keep_their_cadence_through_a_slow_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (path, token) = (dir.path().join("t.yaml"), dir.path().join("token"));
    std::fs::write(&token, TOKEN).unwrap();
    let (checked, probes) = probe_recorder();
    let dns = DnsServer::start();
    dns.set_a("app.test", 0, &[lo(1)]);
    let write_config = |ipv4_prefix: u8| {
        let yaml = dns_config(
            dns.addr(),
            "min_ttl: 100ms",
            "health_check: { type: tcp, interval: 50ms }",
            &format!("- {{ host: app.test, port: 9 }}\n- address: \"{checked}\""),
        )
        .replace(
            "  bind: \"127.0.0.1:0\"\nresolver",
            &format!(
                "  bind: \"127.0.0.1:0\"\n  token_file: \"{}\"\nresolver",
                token.display()
            ),
        )
        .replace(
            "    pool: back\n",
            &format!(
                "    pool: back\n    limits:\n      per_source: {{ connection_rate: 1/h, burst: 100000, ipv4_prefix: {ipv4_prefix}, max_tracked_sources: 2000000 }}\n"
            ),
        );
        std::fs::write(&path, yaml).unwrap();
    };
    write_config(32);
    let cfg = tollgate::config::load(&path).unwrap();
    let server = tollgate::app::Server::start_from(&cfg, Some(path.clone())).unwrap();
    let admin = server.admin_addr().unwrap();
    wait_for(
        "DNS answered and probes run",
        Duration::from_secs(10),
        || dns.queries("app.test") > 0 && probes.lock().unwrap().len() > 3,
    );
    // A million sources straight into the listener's table, as if they had connected.
    let snapshot = server.snapshot();
    let table = &snapshot
        .listener("front")
        .unwrap()
        .admission
        .per_source
        .as_ref()
        .unwrap()
        .table;
    for i in 0..SOURCES {
        let source = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        drop(table.admit(source, Instant::now(), None).unwrap());
    }
    assert_eq!(table.tracked(), SOURCES as usize);

    write_config(24);
    let (held_at, queries_before) = (Instant::now(), dns.queries("app.test"));
    let reload =
        std::thread::spawn(move || request(admin, "POST", "/api/v1/reload", Some(TOKEN), ""));
    let mut readyz = 0;
    while !reload.is_finished() {
        assert_eq!(get(admin, "/readyz").status, 200);
        assert_eq!(get(admin, "/metrics").status, 200);
        readyz += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let held = held_at.elapsed();
    let answer = reload.join().unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["generation"], 2);
    assert!(
        held >= Duration::from_millis(500),
        "the reload took only {held:?}: too short to watch the cadence (raise SOURCES)"
    );
    let queries = dns.queries("app.test") - queries_before;
    let during: Vec<Instant> = probes
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|t| *t >= held_at && *t <= held_at + held)
        .collect();

    let gaps: Vec<Duration> = during.windows(2).map(|w| w[1] - w[0]).collect();
    let longest = gaps.iter().max().copied().unwrap_or(held);
    println!(
        "held {held:?}: {} probes (longest gap {longest:?}), {queries} DNS queries, {readyz} readyz+metrics answered",
        during.len()
    );
    assert!(
        during.len() as u128 >= held.as_millis() / 100,
        "probes kept their 50 ms interval: {} in {held:?}",
        during.len()
    );
    assert!(
        longest < Duration::from_millis(500),
        "a probe gap of {longest:?}"
    );
    assert!(
        queries >= 2,
        "the 100 ms TTL was followed: {queries} queries in {held:?}"
    );
    server.shutdown();
}
