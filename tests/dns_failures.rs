//! When DNS misbehaves: SERVFAIL and timeouts keep traffic flowing to the last good answer
//! (with a bounded back-off, counted by result); NXDOMAIN removes the addresses only after
//! `negative_hold`, and connections already open to a removed address finish byte-exact.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use common::dns::{
    DnsServer, Mode, answer_or_zero, dns_config, id_backends_on_one_port, lo, start_host,
};
use common::http::{assert_unready, get};
use common::*;
use prometheus_parse::{Scrape, Value};

fn metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let body = get(admin, "/metrics").body;
    let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    scrape
        .samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            _ => f64::NAN,
        })
}

fn name_status(admin: SocketAddr) -> serde_json::Value {
    get(admin, "/api/v1/status").json()["pools"][0]["names"][0].clone()
}

#[test]
fn servfail_and_timeouts_keep_the_last_good_answer_in_force() {
    let dns = DnsServer::start();
    let port = id_backends_on_one_port(&[(lo(81), 1)]);
    dns.set_a("flaky.test", 1, &[lo(81)]);
    // max_ttl also caps the back-off, so recovery at the end is seen within 2 s.
    let resolver = "min_ttl: 100ms\ntimeout: 150ms\nmax_ttl: 2s";
    let server = start_host(&dns, resolver, "", "flaky.test", port);
    let (front, admin) = (front(&server), server.admin_addr().unwrap());
    wait_for("resolved", Duration::from_secs(10), || {
        answer_or_zero(front) == 1
    });

    for (mode, result) in [
        (Mode::ServFail, "servfail"),
        (Mode::Refused, "refused"),
        (Mode::Drop, "timeout"),
    ] {
        dns.set_mode(mode);
        let before = metric(
            admin,
            "tollgate_dns_resolutions_total",
            &[("pool", "back"), ("result", result)],
        )
        .unwrap_or(0.0);
        wait_for(
            &format!("two {result} rounds"),
            Duration::from_secs(10),
            || {
                metric(
                    admin,
                    "tollgate_dns_resolutions_total",
                    &[("pool", "back"), ("result", result)],
                )
                .unwrap_or(0.0)
                    >= before + 2.0
            },
        );
        for _ in 0..10 {
            assert_eq!(
                answer_or_zero(front),
                1,
                "{result}: traffic still flows to the last good answer"
            );
        }
        let n = name_status(admin);
        assert_eq!(n["result"], result);
        assert_eq!(n["addresses"][0]["address"], format!("127.0.0.81:{port}"));
        assert_eq!(get(admin, "/readyz").status, 200, "{result}: still ready");
    }
    // The answer in force ages while lookups fail.
    let age = metric(
        admin,
        "tollgate_dns_answer_age_seconds",
        &[("pool", "back")],
    )
    .unwrap();
    assert!(age >= 1.0, "age {age}");
    // The back-off keeps a failing name from being hammered: 100 ms doubling, at most 2 s here.
    let asked = dns.queries("flaky.test");
    std::thread::sleep(Duration::from_millis(1500));
    let more = dns.queries("flaky.test") - asked;
    assert!(more <= 16, "{more} queries in 1.5 s while failing");

    dns.set_mode(Mode::Answer);
    dns.set_a("flaky.test", 1, &[lo(81)]);
    wait_for("success again", Duration::from_secs(10), || {
        name_status(admin)["result"] == "success"
    });
    assert!(
        metric(
            admin,
            "tollgate_dns_answer_age_seconds",
            &[("pool", "back")]
        )
        .unwrap()
            <= 1.0
    );
}

/// An echo server on `ip`; returns its port.
fn echo_on(ip: Ipv4Addr) -> u16 {
    let l = TcpListener::bind((ip, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn nxdomain_removes_after_the_hold_and_open_connections_finish_byte_exact() {
    let dns = DnsServer::start();
    let port = echo_on(lo(91));
    dns.set_a("gone.test", 1, &[lo(91)]);
    let resolver = "min_ttl: 100ms\nnegative_hold: 2s";
    let server = start_host(&dns, resolver, "", "gone.test", port);
    let (front, admin) = (front(&server), server.admin_addr().unwrap());
    wait_for("resolved", Duration::from_secs(10), || {
        round_trip(front, b"x").is_ok()
    });
    let mut open = held_echo(front, 7);

    dns.remove("gone.test");
    let removed = Instant::now();
    wait_for("NXDOMAIN seen", Duration::from_secs(5), || {
        name_status(admin)["result"] == "nxdomain"
    });
    assert!(removed.elapsed() < Duration::from_millis(1500));
    assert_eq!(
        round_trip(front, b"held").unwrap(),
        b"held",
        "within the hold: still in force"
    );
    wait_for("removed after the hold", Duration::from_secs(10), || {
        round_trip(front, b"y").is_err()
    });
    let took = removed.elapsed();
    eprintln!("NXDOMAIN with negative_hold 2 s: removed after {took:?}");
    assert!(
        took >= Duration::from_secs(2),
        "not before the hold: {took:?}"
    );
    assert!(
        took < Duration::from_millis(1000 + 2000 + 1500),
        "soon after it: {took:?}"
    );
    assert_unready(admin, "DNS answered no address (nxdomain)");

    // The connection opened before the removal drains: 8 MiB through it, byte-exact.
    echo_exact(&mut open, 42, 8 << 20);

    // The name coming back brings the address back.
    dns.set_a("gone.test", 1, &[lo(91)]);
    wait_for("back", Duration::from_secs(10), || {
        round_trip(front, b"z").is_ok()
    });
}

#[test]
fn a_failing_srv_question_keeps_its_targets_serving() {
    let dns = DnsServer::start();
    let port = id_backends_on_one_port(&[(lo(95), 1)]);
    dns.set_srv("_x._tcp.srv.test", 1, &[(1, 1, port, "t.srv.test")]);
    dns.set_a("t.srv.test", 1, &[lo(95)]);
    let resolver = "min_ttl: 100ms\ntimeout: 150ms";
    let server = start(&dns_config(
        dns.addr(),
        resolver,
        "",
        "- { srv: _x._tcp.srv.test }",
    ));
    let (front, admin) = (front(&server), server.admin_addr().unwrap());
    wait_for("resolved", Duration::from_secs(10), || {
        answer_or_zero(front) == 1
    });
    dns.set_mode(Mode::ServFail);
    wait_for("servfail seen", Duration::from_secs(5), || {
        name_status(admin)["result"] == "servfail"
    });
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..10 {
        assert_eq!(
            answer_or_zero(front),
            1,
            "the targets of the last good SRV answer serve"
        );
    }
}

#[test]
fn a_pool_whose_resolved_backends_are_down_is_not_ready_for_that_reason_alone() {
    let dns = DnsServer::start();
    dns.set_a("down.test", 30, &[lo(96)]);
    let check = "health_check: { type: tcp, interval: 100ms, timeout: 90ms, rise: 1, fall: 1 }";
    let server = start(&dns_config(
        dns.addr(),
        "",
        check,
        "- { host: down.test, port: 1 }",
    ));
    let admin = server.admin_addr().unwrap();
    wait_for("answered", Duration::from_secs(5), || {
        name_status(admin)["result"] == "success"
    });
    wait_for("checked down", Duration::from_secs(5), || {
        get(admin, "/api/v1/status").json()["pools"][0]["backends"][0]["last_check"].is_object()
    });
    assert_unready(admin, "pool back: no backend is up");
    let ready = get(admin, "/readyz");
    assert!(
        !ready.body.contains("DNS"),
        "DNS is fine here: {}",
        ready.body
    );
}
