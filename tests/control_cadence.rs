//! A slow reload stalls nothing else on the control plane: while one is held in validation
//! (its token file is a FIFO nobody writes yet), health checks keep probing at their
//! interval, DNS entries keep asking as their TTL says, and `/readyz` and `/metrics` answer.
//! Then the reload completes and applies in one step.
//!
//! (The 100 000-node budget caps how long a large file can take to validate at a fraction of
//! a second, so the FIFO stands in for a slow file: the reload blocks in the same place.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::dns::{DnsServer, dns_config, lo};
use common::http::{get, request};
use common::*;

const TOKEN: &str = "cadence-token";

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
fn health_checks_dns_and_readyz_keep_their_cadence_while_a_reload_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let (path, token, fifo) = (
        dir.path().join("t.yaml"),
        dir.path().join("token"),
        dir.path().join("token.fifo"),
    );
    std::fs::write(&token, TOKEN).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo (coreutils) is needed");
    let (checked, probes) = probe_recorder();
    let dns = DnsServer::start();
    dns.set_a("app.test", 1, &[lo(1)]);
    let write_config = |token_file: &std::path::Path| {
        let yaml = dns_config(
            dns.addr(),
            "min_ttl: 1s",
            "health_check: { type: tcp, interval: 50ms }",
            &format!("- {{ host: app.test, port: 9 }}\n- address: \"{checked}\""),
        )
        .replace(
            "  bind: \"127.0.0.1:0\"\nresolver",
            &format!(
                "  bind: \"127.0.0.1:0\"\n  token_file: \"{}\"\nresolver",
                token_file.display()
            ),
        );
        std::fs::write(&path, yaml).unwrap();
    };
    write_config(&token);
    let cfg = tollgate::config::load(&path).unwrap();
    let server = tollgate::app::Server::start_from(&cfg, Some(path.clone())).unwrap();
    let admin = server.admin_addr().unwrap();
    wait_for(
        "DNS answered and probes run",
        Duration::from_secs(10),
        || dns.queries("app.test") > 0 && probes.lock().unwrap().len() > 3,
    );

    write_config(&fifo);
    let reload =
        std::thread::spawn(move || request(admin, "POST", "/api/v1/reload", Some(TOKEN), ""));
    // Opening the FIFO for writing returns once the reload has opened it to read: from here
    // the reload is held in validation until the token is written.
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let (held_at, queries_before) = (Instant::now(), dns.queries("app.test"));
    let mut readyz = 0;
    while held_at.elapsed() < Duration::from_millis(1500) {
        assert_eq!(get(admin, "/readyz").status, 200);
        assert_eq!(get(admin, "/metrics").status, 200);
        readyz += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let held = held_at.elapsed();
    let queries = dns.queries("app.test") - queries_before;
    let during: Vec<Instant> = probes
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|t| *t >= held_at)
        .collect();
    assert!(!reload.is_finished(), "the reload is still held");
    writer.write_all(TOKEN.as_bytes()).unwrap();
    drop(writer);
    let answer = reload.join().unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["generation"], 2);

    let gaps: Vec<Duration> = during.windows(2).map(|w| w[1] - w[0]).collect();
    let longest = gaps.iter().max().copied().unwrap_or(held);
    println!(
        "held {held:?}: {} probes (longest gap {longest:?}), {queries} DNS queries, {readyz} readyz+metrics answered",
        during.len()
    );
    assert!(
        during.len() >= 10,
        "probes kept their 50 ms interval: {} in {held:?}",
        during.len()
    );
    assert!(
        longest < Duration::from_millis(500),
        "a probe gap of {longest:?}"
    );
    assert!(queries >= 1, "the 1 s TTL was followed");
    server.shutdown();
}
