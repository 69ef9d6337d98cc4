//! The admin API against web pages: with the default config (loopback, no token) a page in a
//! browser on this host can send requests to it. A cross-site change (a "simple" POST no
//! browser preflights) is refused and changes nothing; a DNS-rebinding page, whose requests
//! carry its own name in `Host`, reads nothing. Tools that address the API as it is bound
//! (curl, the health checker, `check --diff`) are served as before, and `admin.allowed_hosts`
//! lets a name in.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;

use common::http::{Answer, get, request_with};
use common::*;
use tollgate::app::Server;

/// The setup: an admin API on loopback without a token, over one echo backend.
fn open_admin(allowed_hosts: &str) -> (Server, SocketAddr) {
    let top = format!("admin:\n  bind: \"127.0.0.1:0\"\n{allowed_hosts}");
    let server = start(&config(&[(echo_backend(), 1)], "", "", &top));
    let admin = server.admin_addr().unwrap();
    (server, admin)
}

fn deny_everyone(admin: SocketAddr, headers: &[(&str, &str)]) -> Answer {
    request_with(
        admin,
        "POST",
        "/api/v1/listeners/front/deny/0.0.0.0%2F0",
        headers,
        "",
    )
}

fn denied(admin: SocketAddr) -> serde_json::Value {
    get(admin, "/api/v1/status").json()["listeners"][0]["deny"].clone()
}

#[test]
fn a_cross_site_change_is_refused_and_changes_nothing() {
    let (server, admin) = open_admin("");
    let host = admin.to_string();
    let evil = [
        ("Host", host.as_str()),
        ("Origin", "http://evil.example"),
        ("Content-Type", "text/plain"),
    ];
    let a = deny_everyone(admin, &evil);
    assert_eq!(a.status, 403, "{}", a.body);
    let why = a.json()["error"].as_str().unwrap().to_owned();
    assert!(why.contains("`http://evil.example`"), "{why}");
    // Each of the two is refused on its own.
    let a = deny_everyone(admin, &[("Host", &host), ("Origin", "http://evil.example")]);
    assert_eq!(a.status, 403, "{}", a.body);
    let a = request_with(
        admin,
        "POST",
        "/api/v1/listeners/front/deny/0.0.0.0%2F0",
        &[("Host", &host), ("Content-Type", "text/plain")],
        "x",
    );
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(
        a.body.contains("Content-Type: application/json"),
        "{}",
        a.body
    );
    assert_eq!(denied(admin), serde_json::json!([]), "nothing changed");
    assert_eq!(
        round_trip(front(&server), b"still served").unwrap(),
        b"still served"
    );
    // The same change from this API's own origin, or from a tool (no Origin), is made.
    let own = format!("http://{admin}");
    let a = deny_everyone(
        admin,
        &[
            ("Host", &host),
            ("Origin", &own),
            ("Content-Type", "application/json"),
        ],
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(denied(admin), serde_json::json!(["0.0.0.0/0"]));
    let a = request_with(
        admin,
        "DELETE",
        "/api/v1/listeners/front/deny/0.0.0.0%2F0",
        &[("Host", &host)],
        "",
    );
    assert_eq!(a.status, 200, "{}", a.body);
    server.shutdown();
}

#[test]
fn a_foreign_host_reads_nothing() {
    let (server, admin) = open_admin("");
    for path in ["/api/v1/config", "/api/v1/status", "/metrics", "/readyz"] {
        let a = request_with(admin, "GET", path, &[("Host", "attacker.example")], "");
        assert_eq!(a.status, 421, "{path}: {}", a.body);
        let why = a.json()["error"].as_str().unwrap().to_owned();
        assert!(
            why.contains(&format!(
                "address it as {admin} or localhost:{}",
                admin.port()
            )) && why.contains("admin.allowed_hosts"),
            "{why}"
        );
        assert!(!a.body.contains("pools"), "{path} leaked: {}", a.body);
    }
    let a = request_with(
        admin,
        "GET",
        "/api/v1/config",
        &[("Host", &format!("attacker.example:{}", admin.port()))],
        "",
    );
    assert_eq!(a.status, 421, "the right port under a foreign name");
    server.shutdown();
}

/// Load-balancer health checkers address the API by the bind's IP (and some send HTTP/1.0
/// without a Host at all, which no browser does).
#[test]
fn health_checkers_and_tools_are_served() {
    let (server, admin) = open_admin("");
    let ip_port = admin.to_string();
    let localhost = format!("localhost:{}", admin.port());
    for host in [ip_port.as_str(), localhost.as_str()] {
        for path in ["/healthz", "/readyz", "/api/v1/config"] {
            let a = request_with(admin, "GET", path, &[("Host", host)], "");
            assert_eq!(a.status, 200, "{host} {path}: {}", a.body);
        }
    }
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    std::io::Write::write_all(&mut s, b"GET /readyz HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut s, &mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.0 200"), "{reply}");
    server.shutdown();
}

#[test]
fn allowed_hosts_let_a_name_in_and_follow_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    let with = |hosts: &str| {
        config(
            &[(echo_backend(), 1)],
            "",
            "",
            &format!("admin:\n  bind: \"127.0.0.1:0\"\n  allowed_hosts: {hosts}"),
        )
    };
    let server = start_file(&path, &with("[\"tollgate.internal\"]"));
    let admin = server.admin_addr().unwrap();
    let named = format!("tollgate.internal:{}", admin.port());
    let a = request_with(admin, "GET", "/api/v1/config", &[("Host", &named)], "");
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.json()["admin"]["allowed_hosts"],
        serde_json::json!(["tollgate.internal"])
    );
    let other = request_with(
        admin,
        "GET",
        "/api/v1/config",
        &[("Host", "other.internal")],
        "",
    );
    assert_eq!(other.status, 421);
    std::fs::write(&path, with("[\"other.internal:80\"]")).unwrap();
    server.control().reload_blocking().unwrap();
    let other = request_with(
        admin,
        "GET",
        "/api/v1/config",
        &[("Host", "other.internal")],
        "",
    );
    assert_eq!(other.status, 200, "{}", other.body);
    let a = request_with(admin, "GET", "/api/v1/config", &[("Host", &named)], "");
    assert_eq!(a.status, 421, "the name left with the reload");
    server.shutdown();
}
