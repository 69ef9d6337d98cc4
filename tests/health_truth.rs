//! Health, weight and readiness say what they measure: `tollgate_backend_up` and status
//! `health` are what the checks say (a healthy backup is up; a drain is not an outage),
//! `tollgate_backend_weight` and `effective_weight` are where new connections go, and
//! `/readyz` needs, in every pool, a backend the checks call up that the operator lets serve
//! — `when_all_down: use_all` still spreads traffic over dead backends, but is never ready.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use common::http::{assert_unready, get, request};
use common::*;
use prometheus_parse::{Scrape, Value};

fn metric(admin: SocketAddr, name: &str, backend: SocketAddr) -> f64 {
    let body = get(admin, "/metrics").body;
    let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let b = backend.to_string();
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && s.labels.get("backend") == Some(b.as_str()))
        .unwrap_or_else(|| panic!("no {name} for {b}"));
    match sample.value {
        Value::Gauge(v) | Value::Untyped(v) | Value::Counter(v) => v,
        _ => panic!("{name} is not a gauge"),
    }
}

/// (up, weight) of a backend as the metrics say.
fn up_and_weight(admin: SocketAddr, backend: SocketAddr) -> (f64, f64) {
    (
        metric(admin, "tollgate_backend_up", backend),
        metric(admin, "tollgate_backend_weight", backend),
    )
}

/// The status entry of a backend.
fn status_of(admin: SocketAddr, backend: SocketAddr) -> serde_json::Value {
    let status = get(admin, "/api/v1/status").json();
    status["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == backend.to_string())
        .cloned()
        .unwrap()
}

fn checked(admin: SocketAddr, backend: SocketAddr) -> bool {
    !status_of(admin, backend)["last_check"].is_null()
}

fn enc(a: SocketAddr) -> String {
    a.to_string().replace(':', "%3A")
}

#[test]
fn a_healthy_backup_is_up_and_a_drain_is_not_an_outage() {
    let (primary, backup) = (echo_backend(), echo_backend());
    let yaml = format!(
        "workers: 1\nadmin:\n  bind: \"127.0.0.1:0\"\nlisteners:\n  front:\n    bind: \"127.0.0.1:0\"\n    pool: back\n\
         pools:\n  back:\n    health_check: {{ type: tcp, interval: 100ms }}\n    backends:\n\
         \x20     - address: \"{primary}\"\n      - {{ address: \"{backup}\", backup: true }}\n"
    );
    let server = start(&yaml);
    let admin = server.admin_addr().unwrap();
    wait_for("both checked", Duration::from_secs(10), || {
        checked(admin, primary) && checked(admin, backup)
    });
    assert_eq!(up_and_weight(admin, primary), (1.0, 1.0));
    assert_eq!(
        up_and_weight(admin, backup),
        (1.0, 0.0),
        "a backup standing by is healthy, and takes nothing"
    );
    let b = status_of(admin, backup);
    assert_eq!(
        (b["state"].clone(), b["health"].clone()),
        ("up".into(), "up".into())
    );
    assert_eq!(b["effective_weight"], 0.0);
    assert_eq!(get(admin, "/readyz").status, 200);

    let drained = request(
        admin,
        "POST",
        &format!("/api/v1/pools/back/backends/{}/drain", enc(primary)),
        None,
        "",
    );
    assert_eq!(drained.status, 200, "{}", drained.body);
    assert_eq!(
        (
            drained.json()["state"].clone(),
            drained.json()["health"].clone()
        ),
        ("draining".into(), "up".into())
    );
    assert_eq!(
        up_and_weight(admin, primary),
        (1.0, 0.0),
        "a planned drain pages nobody: still up, weight 0"
    );
    assert_eq!(
        up_and_weight(admin, backup),
        (1.0, 1.0),
        "the backup serves now"
    );
    assert_eq!(
        get(admin, "/readyz").status,
        200,
        "the backup keeps the pool ready"
    );
    assert_eq!(round_trip(front(&server), b"x").unwrap(), b"x");

    let disabled = request(
        admin,
        "POST",
        &format!("/api/v1/pools/back/backends/{}/disable", enc(backup)),
        None,
        "",
    );
    assert_eq!(disabled.json()["state"], "disabled");
    assert_eq!(up_and_weight(admin, backup), (1.0, 0.0));
    assert_unready(
        admin,
        "pool back: every backend that is up is drained, disabled or weighted 0",
    );
    server.shutdown();
}

#[test]
fn use_all_spreads_over_dead_backends_but_never_says_ready() {
    // Traffic ports answer; the health port is closed, so every check fails.
    let (a, b) = (named_backend(1), named_backend(2));
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let yaml = format!(
        "workers: 1\nadmin:\n  bind: \"127.0.0.1:0\"\nlisteners:\n  front:\n    bind: \"127.0.0.1:0\"\n    pool: back\n\
         pools:\n  back:\n    when_all_down: use_all\n    health_check: {{ type: tcp, interval: 100ms, port: {closed} }}\n\
         \x20   backends:\n      - address: \"{a}\"\n      - address: \"{b}\"\n"
    );
    let server = start(&yaml);
    let admin = server.admin_addr().unwrap();
    wait_for("both checked down", Duration::from_secs(10), || {
        status_of(admin, a)["health"] == "down" && status_of(admin, b)["health"] == "down"
    });
    for backend in [a, b] {
        assert_eq!(
            up_and_weight(admin, backend),
            (0.0, 1.0),
            "down, yet use_all spreads new connections over it"
        );
        assert_eq!(status_of(admin, backend)["state"], "down");
    }
    assert_unready(admin, "pool back: no backend is up");
    let answered: HashSet<u8> = (0..8).map(|_| who_answers(front(&server))).collect();
    assert_eq!(answered, HashSet::from([1, 2]), "traffic spread over both");
    server.shutdown();
}

/// Before any check of a checked pool has answered, nothing claims the backend is up: it
/// already serves (the first answer decides at once), but health is `pending`,
/// `tollgate_backend_up` is 0 and `/readyz` says why it waits.
#[test]
fn before_the_first_check_answers_nothing_claims_health() {
    // The probe connects, sends, and waits 3 s for a reply that never comes.
    let silent = backend(|s| {
        std::thread::sleep(Duration::from_secs(5));
        drop(s);
    });
    let yaml = format!(
        "workers: 1\nadmin:\n  bind: \"127.0.0.1:0\"\nlisteners:\n  front:\n    bind: \"127.0.0.1:0\"\n    pool: back\n\
         pools:\n  back:\n    health_check: {{ type: send_expect, send: \"ping\", expect: \"pong\", interval: 5s, timeout: 3s }}\n\
         \x20   backends:\n      - address: \"{silent}\"\n"
    );
    let server = start(&yaml);
    let admin = server.admin_addr().unwrap();
    let b = status_of(admin, silent);
    assert_eq!(
        (
            b["health"].clone(),
            b["state"].clone(),
            b["last_check"].clone()
        ),
        ("pending".into(), "up".into(), serde_json::Value::Null),
        "serving, not yet checked"
    );
    assert_eq!(up_and_weight(admin, silent), (0.0, 1.0));
    assert_unready(
        admin,
        "pool back: no backend is up yet: waiting for the first health check",
    );
    wait_for("the first answer", Duration::from_secs(10), || {
        status_of(admin, silent)["health"] == "down"
    });
    assert_unready(admin, "pool back: no backend is up");
    server.shutdown();
}
