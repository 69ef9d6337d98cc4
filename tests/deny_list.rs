//! The runtime deny list and the explain endpoint: a denied source is closed at once without
//! touching a backend and counted; the list survives reloads; the explain endpoint says which
//! rule matched.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::http::{get, request};
use common::*;

#[test]
fn a_denied_source_is_closed_at_once_and_explained() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    let echo = echo_backend();
    let top = "admin:\n  bind: \"127.0.0.1:0\"";
    std::fs::write(&path, config(&[(echo, 1)], "", "", top)).unwrap();
    let cfg = tollgate::config::load(&path).unwrap();
    let server = tollgate::app::Server::start_from(&cfg, Some(path.clone())).unwrap();
    let admin = server.admin_addr().unwrap();
    let v = get(admin, "/api/v1/listeners/front/sources/127.0.0.1").json();
    assert_eq!(
        (v["admitted"].clone(), v["rule"]["kind"].clone()),
        (true.into(), "open".into())
    );
    let r = request(
        admin,
        "POST",
        "/api/v1/listeners/front/deny/127.0.0.0%2F8",
        None,
        "",
    );
    assert_eq!(
        (r.status, r.json()["deny"][0].clone()),
        (200, "127.0.0.0/8".into()),
        "{}",
        r.body
    );
    let mut c = TcpStream::connect(front(&server)).unwrap();
    assert!(
        closed_within(&mut c, Duration::from_secs(5)),
        "a denied source is closed"
    );
    let snapshot = server.snapshot();
    let spec = snapshot.listener("front").unwrap();
    wait_for("the refusal is counted", Duration::from_secs(5), || {
        spec.live.rejected_acl.load(Ordering::Relaxed) == 1
    });
    assert_eq!(
        spec.pool.as_ref().unwrap().backends[0]
            .stats
            .connections
            .load(Ordering::Relaxed),
        0,
        "no backend was touched"
    );
    let v = get(admin, "/api/v1/listeners/front/sources/127.1.2.3").json();
    assert_eq!(v["admitted"], false);
    assert_eq!(v["rule"]["cidr"], "127.0.0.0/8");
    let v = get(
        admin,
        "/api/v1/listeners/front/sources/%3A%3Affff%3A127.0.0.1",
    )
    .json();
    assert_eq!(
        (v["source"].clone(), v["admitted"].clone()),
        ("127.0.0.1".into(), false.into()),
        "mapped IPv6 counts as IPv4"
    );
    // Kept across a reload of the same listener.
    assert_eq!(server.control().reload_blocking().unwrap(), 2);
    let v = get(admin, "/api/v1/listeners/front/sources/127.0.0.1").json();
    assert_eq!(v["admitted"], false, "the deny list survived the reload");
    let metrics = get(admin, "/metrics").body;
    assert!(
        metrics.contains(
            "tollgate_listener_connections_rejected_total{listener=\"front\",reason=\"acl\"} 1"
        ),
        "{metrics}"
    );
    let r = request(
        admin,
        "DELETE",
        "/api/v1/listeners/front/deny/127.0.0.0%2F8",
        None,
        "",
    );
    assert_eq!((r.status, r.json()["changed"].clone()), (200, true.into()));
    assert_eq!(
        round_trip(front(&server), b"welcome back").unwrap(),
        b"welcome back"
    );
    server.shutdown();
}

#[test]
fn bad_requests_to_the_deny_endpoints() {
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("t");
    std::fs::write(&token_file, "tok\n").unwrap();
    let top = format!(
        "admin:\n  bind: \"127.0.0.1:0\"\n  token_file: \"{}\"",
        token_file.display()
    );
    let server = start(&config(&[(echo_backend(), 1)], "", "", &top));
    let admin = server.admin_addr().unwrap();
    assert_eq!(
        request(
            admin,
            "POST",
            "/api/v1/listeners/front/deny/10.0.0.0%2F8",
            None,
            ""
        )
        .status,
        401
    );
    assert_eq!(
        request(
            admin,
            "POST",
            "/api/v1/listeners/nope/deny/10.0.0.0%2F8",
            Some("tok"),
            ""
        )
        .status,
        404
    );
    assert_eq!(
        request(
            admin,
            "POST",
            "/api/v1/listeners/front/deny/10.0.0.1%2F8",
            Some("tok"),
            ""
        )
        .status,
        400
    );
    assert_eq!(
        get(admin, "/api/v1/listeners/front/sources/not-an-ip").status,
        400
    );
    assert_eq!(
        get(admin, "/api/v1/listeners/nope/sources/10.0.0.1").status,
        404
    );
    server.shutdown();
}

/// The runtime deny list is bounded: past `MAX_RUNTIME_DENY` blocks an add is refused with
/// a 409 that says where larger lists belong, and nothing changes; removing one makes room.
#[test]
fn the_runtime_deny_list_is_bounded() {
    let echo = echo_backend();
    let top = "admin:\n  bind: \"127.0.0.1:0\"";
    let server = start(&config(&[(echo, 1)], "", "", top));
    let admin = server.admin_addr().unwrap();
    let control = server.control().clone();
    let block = |i: usize| -> tollgate::admission::Cidr {
        format!("10.{}.{}.0/24", i / 256, i % 256).parse().unwrap()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for i in 0..tollgate::control::MAX_RUNTIME_DENY {
            assert_eq!(control.deny("front", block(i), true).await, Ok(true));
        }
    });
    let full = request(
        admin,
        "POST",
        "/api/v1/listeners/front/deny/192.0.2.0%2F24",
        None,
        "",
    );
    assert_eq!(full.status, 409, "{}", full.body);
    let message = full.json()["error"].as_str().unwrap().to_owned();
    assert!(
        message.contains("is full (10000 blocks)") && message.contains("access.deny"),
        "{message}"
    );
    assert_eq!(
        control.deny_list("front").len(),
        tollgate::control::MAX_RUNTIME_DENY,
        "nothing changed"
    );
    let removed = request(
        admin,
        "DELETE",
        "/api/v1/listeners/front/deny/10.0.0.0%2F24",
        None,
        "",
    );
    assert_eq!(removed.status, 200, "{}", removed.body);
    let added = request(
        admin,
        "POST",
        "/api/v1/listeners/front/deny/192.0.2.0%2F24",
        None,
        "",
    );
    assert_eq!(added.status, 200, "room again: {}", added.body);
    server.shutdown();
}
