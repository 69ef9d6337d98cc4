//! `host:` and `srv:` backends against a real DNS server on loopback whose answers the test
//! controls: every address of a name serves, a changed answer is followed within its TTL, a
//! TTL of 0 is clamped (no query storm), SRV priorities are tiers and SRV weights are
//! weights, a new address waits for its first passing health check, and start-up does not
//! wait on DNS (the pool is simply not ready, and `/readyz` says why).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

use common::dns::{
    DnsServer, Mode, answer_or_zero, dns_config, id_backends_on_one_port, lo, start_host,
};
use common::http::{assert_unready, get};
use common::*;

/// The ids that answer `n` connections (a connection closed unanswered counts as 0).
fn ids(front: std::net::SocketAddr, n: usize) -> BTreeSet<u8> {
    (0..n).map(|_| answer_or_zero(front)).collect()
}

fn status(server: &tollgate::app::Server) -> serde_json::Value {
    get(server.admin_addr().unwrap(), "/api/v1/status").json()
}

#[test]
fn every_address_of_a_name_serves_and_a_changed_answer_is_followed_within_its_ttl() {
    let dns = DnsServer::start();
    let port = id_backends_on_one_port(&[(lo(21), 1), (lo(22), 2), (lo(23), 3)]);
    dns.set_a("app.test", 1, &[lo(21), lo(22)]);
    let server = start_host(&dns, "min_ttl: 100ms", "", "app.test", port);
    let front = front(&server);
    wait_for("both addresses serve", Duration::from_secs(10), || {
        ids(front, 8) == BTreeSet::from([1, 2])
    });

    dns.set_a("app.test", 1, &[lo(22), lo(23)]);
    let changed = Instant::now();
    wait_for("the new answer is in force", Duration::from_secs(5), || {
        ids(front, 8) == BTreeSet::from([2, 3])
    });
    let took = changed.elapsed();
    eprintln!("answer change (TTL 1 s) followed in {took:?}");
    assert!(
        took < Duration::from_millis(1000 + 1500),
        "followed within TTL + slack: {took:?}"
    );
    for _ in 0..20 {
        assert_ne!(
            who_answers(front),
            1,
            "the removed address takes no new connection"
        );
    }
    let s = status(&server);
    let name = &s["pools"][0]["names"][0];
    assert_eq!(name["name"], "app.test");
    assert_eq!(name["ttl_seconds"], 1);
    assert_eq!(name["result"], "success");
    assert!(
        name["next_refresh_in_ms"].as_u64().unwrap() <= 1000,
        "{name}"
    );
    let backends: Vec<&str> = s["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap())
        .collect();
    assert_eq!(
        backends,
        vec![format!("127.0.0.22:{port}"), format!("127.0.0.23:{port}")]
    );
    assert_eq!(s["pools"][0]["backends"][0]["from_dns"], "app.test");
}

#[test]
fn a_ttl_of_zero_is_raised_to_min_ttl() {
    let dns = DnsServer::start();
    let port = id_backends_on_one_port(&[(lo(31), 1)]);
    dns.set_a("zero.test", 0, &[lo(31)]);
    let server = start_host(&dns, "min_ttl: 500ms", "", "zero.test", port);
    wait_for("the answer serves", Duration::from_secs(10), || {
        answer_or_zero(front(&server)) == 1
    });
    let before = dns.queries("zero.test");
    std::thread::sleep(Duration::from_millis(2000));
    let asked = dns.queries("zero.test") - before;
    eprintln!("TTL 0, min_ttl 500ms: {asked} queries in 2 s");
    // A and AAAA per round, one round per 500 ms: about 8 in 2 s, never a storm.
    assert!(
        (4..=12).contains(&asked),
        "{asked} queries in 2 s with TTL 0 and min_ttl 500ms"
    );
    let s = status(&server);
    assert_eq!(
        s["pools"][0]["names"][0]["ttl_seconds"], 0,
        "the TTL as served"
    );
}

#[test]
fn srv_priorities_are_tiers_and_srv_weights_are_weights() {
    let dns = DnsServer::start();
    let a = named_backend(1);
    let b = named_backend(2);
    let c = named_backend(3);
    dns.set_srv(
        "_app._tcp.svc.test",
        30,
        &[
            (10, 1, a.port(), "a.svc.test"),
            (10, 3, b.port(), "b.svc.test"),
            (20, 1, c.port(), "c.svc.test"),
        ],
    );
    for name in ["a.svc.test", "b.svc.test", "c.svc.test"] {
        dns.set_a(name, 30, &[Ipv4Addr::LOCALHOST]);
    }
    let yaml = dns_config(
        dns.addr(),
        "",
        "balance: round_robin",
        "- { srv: _app._tcp.svc.test }",
    );
    let server = start(&yaml);
    let front = front(&server);
    wait_for(
        "the primary priority serves",
        Duration::from_secs(10),
        || ids(front, 8) == BTreeSet::from([1, 2]),
    );
    let mut count = [0u32; 4];
    for _ in 0..40 {
        count[usize::from(who_answers(front))] += 1;
    }
    // SRV weights 1 and 3 become 333 and 1000: a quarter of 40, give or take one.
    assert!(
        (9..=11).contains(&count[1]) && count[1] + count[2] == 40 && count[3] == 0,
        "weights 1:3, priority 20 idle: {count:?}"
    );

    // With both priority-10 targets out, priority 20 takes over.
    let admin = server.admin_addr().unwrap();
    for addr in [a, b] {
        let path = format!(
            "/api/v1/pools/back/backends/{}/disable",
            addr.to_string().replace(':', "%3A")
        );
        assert_eq!(
            common::http::request(admin, "POST", &path, None, "").status,
            200
        );
    }
    assert_eq!(ids(front, 6), BTreeSet::from([3]));
    let s = status(&server);
    let tiers: Vec<u64> = s["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["tier"].as_u64().unwrap())
        .collect();
    assert_eq!(tiers, vec![0, 0, 1]);
    let weights: Vec<u64> = s["pools"][0]["names"][0]["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["weight"].as_u64().unwrap())
        .collect();
    assert_eq!(
        weights,
        vec![333, 1000, 1000],
        "scaled so the largest is 1000"
    );
}

#[test]
fn a_new_address_takes_no_connection_before_its_first_passing_check() {
    let dns = DnsServer::start();
    let port = id_backends_on_one_port(&[(lo(41), 1), (lo(42), 2)]);
    // Probed on another port: 127.0.0.41 passes, 127.0.0.42 fails until it listens there.
    let healthy = TcpListener::bind((lo(41), 0)).unwrap();
    let hport = healthy.local_addr().unwrap().port();
    dns.set_a("checked.test", 1, &[lo(41)]);
    let pool = format!(
        "health_check: {{ type: tcp, interval: 100ms, timeout: 90ms, rise: 2, fall: 2, port: {hport} }}"
    );
    let server = start_host(&dns, "min_ttl: 100ms", &pool, "checked.test", port);
    let front = front(&server);
    wait_for("the first address is up", Duration::from_secs(10), || {
        ids(front, 4) == BTreeSet::from([1])
    });

    dns.set_a("checked.test", 1, &[lo(41), lo(42)]);
    wait_for("the new address is known", Duration::from_secs(5), || {
        status(&server)["pools"][0]["backends"]
            .as_array()
            .unwrap()
            .len()
            == 2
    });
    let deadline = Instant::now() + Duration::from_millis(800);
    while Instant::now() < deadline {
        assert_eq!(who_answers(front), 1, "the unchecked address takes nothing");
    }
    let s = status(&server);
    assert_eq!(s["pools"][0]["backends"][1]["state"], "down");

    let _now_healthy = TcpListener::bind((lo(42), hport)).unwrap();
    wait_for(
        "the new address serves once its check passes",
        Duration::from_secs(5),
        || ids(front, 8).contains(&2),
    );
}

#[test]
fn start_up_does_not_wait_on_dns_and_readyz_names_the_pool_waiting() {
    let dns = DnsServer::start();
    dns.set_mode(Mode::Drop);
    let port = id_backends_on_one_port(&[(lo(51), 1)]);
    dns.set_a("late.test", 5, &[lo(51)]);
    let yaml = dns_config(
        dns.addr(),
        "timeout: 200ms",
        "",
        &format!("- {{ host: late.test, port: {port} }}"),
    );
    let started = Instant::now();
    let server = start(&yaml);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "start-up does not wait on DNS"
    );
    let admin = server.admin_addr().unwrap();
    wait_for(
        "a failed round is on record",
        Duration::from_secs(5),
        || status(&server)["pools"][0]["names"][0]["result"] == "timeout",
    );
    let waiting = format!(
        "pool back: host late.test port {port}: no DNS answer yet (last: no answer within the timeout)"
    );
    assert_unready(admin, &waiting);
    // Meanwhile a connection is refused at once (no backend), not held.
    let mut s = std::net::TcpStream::connect(front(&server)).unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(2)));

    dns.set_mode(Mode::Answer);
    wait_for("ready once DNS answers", Duration::from_secs(10), || {
        get(admin, "/readyz").status == 200
    });
    assert_eq!(who_answers(front(&server)), 1);
}

#[test]
fn a_reload_keeps_the_resolved_addresses_without_a_gap() {
    let dns = DnsServer::start();
    let port = id_backends_on_one_port(&[(lo(61), 1)]);
    dns.set_a("kept.test", 300, &[lo(61)]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    let backends = format!("- {{ host: kept.test, port: {port} }}");
    std::fs::write(&path, dns_config(dns.addr(), "", "", &backends)).unwrap();
    let config = tollgate::config::load(&path).unwrap();
    let server = tollgate::app::Server::start_from(&config, Some(path.clone())).unwrap();
    let front = front(&server);
    wait_for("resolved", Duration::from_secs(10), || {
        answer_or_zero(front) == 1
    });
    let asked = dns.queries("kept.test");
    let refused = status(&server)["listeners"][0]["rejected"]["no_backend"].clone();
    std::fs::write(
        &path,
        dns_config(dns.addr(), "", "connect_retries: 1", &backends),
    )
    .unwrap();
    server.control().reload_blocking().unwrap();
    assert_eq!(
        who_answers(front),
        1,
        "the first connection after the reload is served"
    );
    assert_eq!(
        dns.queries("kept.test"),
        asked,
        "an unchanged entry is not asked again (TTL 300 s)"
    );
    let s = status(&server);
    assert_eq!(
        s["listeners"][0]["rejected"]["no_backend"], refused,
        "no gap"
    );

    // The written config is what the API shows; the resolved addresses are in status.
    let written = get(server.admin_addr().unwrap(), "/api/v1/config").json();
    assert_eq!(written["pools"][0]["backends"][0]["host"], "kept.test");
    assert_eq!(written["pools"][0]["backends"].as_array().unwrap().len(), 1);

    // A new port for the same name: its addresses carry over, so no gap either.
    let other_port = id_backends_on_one_port(&[(lo(61), 2)]);
    let moved = format!("- {{ host: kept.test, port: {other_port} }}");
    std::fs::write(&path, dns_config(dns.addr(), "", "", &moved)).unwrap();
    server.control().reload_blocking().unwrap();
    assert_eq!(
        who_answers(front),
        2,
        "the first connection goes to the new port"
    );
    let s = status(&server);
    assert_eq!(
        s["listeners"][0]["rejected"]["no_backend"], refused,
        "no gap"
    );
}

#[test]
fn a_long_ttl_is_cut_to_max_ttl_and_a_priority_change_alone_is_followed() {
    let dns = DnsServer::start();
    let (a, b) = (named_backend(1), named_backend(2));
    let srv = |second: u16| {
        [
            (10, 1, a.port(), "a.cut.test"),
            (second, 1, b.port(), "b.cut.test"),
        ]
    };
    dns.set_srv("_x._tcp.cut.test", 300, &srv(10));
    for name in ["a.cut.test", "b.cut.test"] {
        dns.set_a(name, 300, &[Ipv4Addr::LOCALHOST]);
    }
    let resolver = "min_ttl: 100ms\nmax_ttl: 1s";
    let server = start(&dns_config(
        dns.addr(),
        resolver,
        "",
        "- { srv: _x._tcp.cut.test }",
    ));
    let front = front(&server);
    wait_for("both serve", Duration::from_secs(10), || {
        ids(front, 8) == BTreeSet::from([1, 2])
    });
    // Same targets, same addresses: only b's priority changes, under a 300 s TTL.
    dns.set_srv("_x._tcp.cut.test", 300, &srv(20));
    let changed = Instant::now();
    wait_for("b became a standby", Duration::from_secs(5), || {
        ids(front, 8) == BTreeSet::from([1])
    });
    assert!(
        changed.elapsed() < Duration::from_millis(2500),
        "{:?}",
        changed.elapsed()
    );
}
