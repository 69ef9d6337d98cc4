//! Access lists and the explain endpoint: deny wins over allow, a non-empty allow list
//! admits only its blocks, refused sources never touch a backend, and
//! `GET /api/v1/listeners/{l}/sources/{ip}` says which rule decides, how many tokens are
//! left and how many connections the source has open — next to the runtime deny list.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::http::{get, request};
use common::sources::{loopback, probe_from};
use common::*;
use serde_json::Value;

const ADMIN: &str = "admin:\n  bind: \"127.0.0.1:0\"";

fn explain(admin: std::net::SocketAddr, ip: &str) -> Value {
    let a = get(admin, &format!("/api/v1/listeners/front/sources/{ip}"));
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()
}

#[test]
fn deny_wins_and_an_allow_list_admits_only_its_blocks() {
    let echo = echo_backend();
    let acl = "access:\n  allow: [\"127.0.7.0/24\", \"::1\"]\n  deny: [\"127.0.7.9\"]";
    let server = start(&config(&[(echo, 1)], acl, "", ADMIN));
    let front = front(&server);
    let admin = server.admin_addr().unwrap();
    assert!(probe_from(loopback(7, 1), front).is_some(), "allowed");
    assert!(
        probe_from(loopback(7, 9), front).is_none(),
        "denied inside allow"
    );
    assert!(probe_from(loopback(8, 1), front).is_none(), "not in allow");
    let spec = server.snapshot().listener("front").unwrap().clone();
    wait_for("both refusals counted", Duration::from_secs(5), || {
        spec.live.rejected_acl.load(Relaxed) == 2
    });
    assert_eq!(
        spec.pool.as_ref().unwrap().backends[0]
            .stats
            .connections
            .load(Relaxed),
        1
    );
    let v = explain(admin, "127.0.7.9");
    assert_eq!(
        (v["admitted"].clone(), v["reason"].clone()),
        (false.into(), "acl".into())
    );
    assert_eq!(
        (v["rule"]["kind"].clone(), v["rule"]["cidr"].clone()),
        ("deny".into(), "127.0.7.9/32".into())
    );
    let v = explain(admin, "127.0.8.1");
    assert_eq!(v["rule"]["kind"], "not_in_allow");
    let v = explain(admin, "127.0.7.1");
    assert_eq!(
        (v["admitted"].clone(), v["allowed_by"].clone()),
        (true.into(), "127.0.7.0/24".into())
    );
    assert_eq!(v["per_source"], Value::Null, "no per-source limits here");
    let metrics = get(admin, "/metrics").body;
    assert!(
        metrics.contains(
            "tollgate_listener_connections_rejected_total{listener=\"front\",reason=\"acl\"} 2"
        ),
        "{metrics}"
    );
    server.shutdown();
}

#[test]
fn the_explain_endpoint_reports_rule_tokens_and_open_connections() {
    let echo = echo_backend();
    let limits = "limits:\n  per_source:\n    connection_rate: 1/m\n    burst: 4\n    max_connections: 2\n    exempt: [\"127.0.10.0/24\"]";
    let server = start(&config(&[(echo, 1)], limits, "", ADMIN));
    let front = front(&server);
    let admin = server.admin_addr().unwrap();
    let src = loopback(9, 1);
    let v = explain(admin, "127.0.9.1");
    assert_eq!(
        (v["admitted"].clone(), v["rule"]["kind"].clone()),
        (true.into(), "within_limits".into())
    );
    let ps = &v["per_source"];
    assert_eq!(
        (
            ps["tracked"].clone(),
            ps["tokens"].clone(),
            ps["open_connections"].clone()
        ),
        (false.into(), 5.0.into(), 0.into())
    );
    assert_eq!(
        (
            ps["connection_rate"].clone(),
            ps["burst"].clone(),
            ps["max_connections"].clone()
        ),
        ("1/m".into(), 4.into(), 2.into())
    );
    assert_eq!(ps["group"], "127.0.9.1/32");
    // Two held: at the cap, with three tokens left.
    let held = [
        probe_from(src, front).unwrap(),
        probe_from(src, front).unwrap(),
    ];
    let v = explain(admin, "127.0.9.1");
    assert_eq!(
        (
            v["admitted"].clone(),
            v["reason"].clone(),
            v["rule"]["kind"].clone()
        ),
        (
            false.into(),
            "source_limit".into(),
            "max_connections".into()
        )
    );
    assert_eq!(v["per_source"]["open_connections"], 2);
    assert!(
        (v["per_source"]["tokens"].as_f64().unwrap() - 3.0).abs() < 0.01,
        "{v}"
    );
    drop(held);
    let none_open = || explain(admin, "127.0.9.1")["per_source"]["open_connections"] == 0;
    wait_for("the two connections end", Duration::from_secs(5), none_open);
    // The last three tokens, one connection at a time: each probe's connection is closed
    // and seen closed before the next, or max_connections (2) would refuse the third.
    for i in 0..3 {
        assert!(probe_from(src, front).is_some(), "token {i}");
        wait_for(
            "the probe's connection ends",
            Duration::from_secs(5),
            none_open,
        );
    }
    let v = explain(admin, "127.0.9.1");
    assert_eq!(
        (v["reason"].clone(), v["rule"]["kind"].clone()),
        ("rate_limit".into(), "connection_rate".into())
    );
    assert!(v["per_source"]["tokens"].as_f64().unwrap() < 1.0, "{v}");
    assert!(
        v["per_source"]["next_token_in_ms"].as_f64().unwrap() > 1000.0,
        "{v}"
    );
    assert_eq!(v["per_source"]["tracked_sources"], 1);
    assert_eq!(explain(admin, "127.0.10.7")["rule"]["kind"], "exempt");
    // The runtime deny list comes first, and leaves with DELETE.
    let r = request(
        admin,
        "POST",
        "/api/v1/listeners/front/deny/127.0.10.0%2F24",
        None,
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = explain(admin, "127.0.10.7");
    assert_eq!(
        (v["rule"]["kind"].clone(), v["rule"]["cidr"].clone()),
        ("runtime_deny".into(), "127.0.10.0/24".into())
    );
    assert!(probe_from(loopback(10, 7), front).is_none());
    let r = request(
        admin,
        "DELETE",
        "/api/v1/listeners/front/deny/127.0.10.0%2F24",
        None,
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(probe_from(loopback(10, 7), front).is_some());
    let status = get(admin, "/api/v1/status").json();
    let l = &status["listeners"][0];
    assert_eq!(
        (
            l["rejected"]["rate_limit"].clone(),
            l["rejected"]["acl"].clone(),
            l["tracked_sources"].clone()
        ),
        (0.into(), 1.into(), 1.into())
    );
    let metrics = get(admin, "/metrics").body;
    assert!(
        metrics.contains("tollgate_listener_sources_tracked{listener=\"front\"} 1"),
        "{metrics}"
    );
    server.shutdown();
}
