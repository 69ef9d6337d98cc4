//! The admin API: every route, its auth, its bounds, and that abusing it never touches the
//! data plane. The OpenAPI document matches the routes the server answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::http::{assert_unready, get, request};
use common::*;
use tollgate::app::Server;

const TOKEN: &str = "t0ps3cret-admin-token";

/// A server with an admin API (token-protected) over one echo backend and one refused one.
fn admin_server(dir: &tempfile::TempDir) -> (Server, SocketAddr, SocketAddr) {
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let echo = echo_backend();
    let top = format!(
        "admin:\n  bind: \"127.0.0.1:0\"\n  token_file: \"{}\"",
        token_file.display()
    );
    let server = start(&config(&[(echo, 1)], "", "", &top));
    let admin = server.admin_addr().unwrap();
    (server, admin, echo)
}

fn enc(addr: SocketAddr) -> String {
    addr.to_string()
        .replace(':', "%3A")
        .replace('[', "%5B")
        .replace(']', "%5D")
}

#[test]
fn read_only_routes_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (server, admin, echo) = admin_server(&dir);
    let a = get(admin, "/healthz");
    assert_eq!((a.status, a.body.as_str()), (200, "ok\n"));
    let a = get(admin, "/readyz");
    assert_eq!(a.status, 200, "{}", a.body);
    let a = get(admin, "/metrics");
    assert_eq!(a.status, 200);
    assert!(
        a.body.contains("tollgate_build_info{version="),
        "{}",
        a.body
    );
    let status = get(admin, "/api/v1/status").json();
    assert_eq!(status["generation"], 1);
    assert_eq!(status["listeners"][0]["name"], "front");
    assert_eq!(
        status["listeners"][0]["bind"][0],
        front(&server).to_string()
    );
    assert_eq!(
        status["pools"][0]["backends"][0]["address"],
        echo.to_string()
    );
    assert_eq!(status["pools"][0]["backends"][0]["state"], "up");
    let config = get(admin, "/api/v1/config");
    assert_eq!(config.json()["pools"][0]["backends"][0]["weight"], 1);
    assert!(
        !config.body.contains(TOKEN),
        "the token never leaves the process"
    );
    let doc = get(admin, "/api/v1/openapi.yaml");
    assert_eq!(doc.status, 200);
    assert!(doc.body.starts_with("openapi: 3"));
    server.shutdown();
}

#[test]
fn mutations_need_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let (server, admin, echo) = admin_server(&dir);
    let path = format!("/api/v1/pools/back/backends/{}/drain", enc(echo));
    for token in [None, Some("wrong"), Some("t0ps3cret-admin-toke")] {
        let a = request(admin, "POST", &path, token, "");
        assert_eq!(a.status, 401, "token {token:?}: {}", a.body);
        assert_eq!(a.header("www-authenticate").as_deref(), Some("Bearer"));
        assert!(a.json()["error"].is_string());
    }
    let a = request(
        admin,
        "PUT",
        &format!("/api/v1/pools/back/backends/{}/weight", enc(echo)),
        None,
        r#"{"weight":5}"#,
    );
    assert_eq!(a.status, 401);
    assert_eq!(
        request(admin, "POST", "/api/v1/reload", Some("nope"), "").status,
        401
    );
    assert_eq!(
        get(admin, "/api/v1/status").json()["pools"][0]["backends"][0]["state"],
        "up",
        "nothing changed"
    );
    server.shutdown();
}

#[test]
fn backend_overrides_take_effect_and_show_in_status() {
    let dir = tempfile::tempdir().unwrap();
    let (server, admin, echo) = admin_server(&dir);
    let base = format!("/api/v1/pools/back/backends/{}", enc(echo));
    let a = request(admin, "POST", &format!("{base}/disable"), Some(TOKEN), "");
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["state"], "disabled");
    let mut refused = TcpStream::connect(front(&server)).unwrap();
    assert!(
        closed_within(&mut refused, Duration::from_secs(5)),
        "no backend takes connections"
    );
    assert_unready(
        admin,
        "pool back: every backend that is up is drained, disabled or weighted 0",
    );
    assert_eq!(
        request(admin, "POST", &format!("{base}/enable"), Some(TOKEN), "").json()["state"],
        "up"
    );
    assert_eq!(round_trip(front(&server), b"back").unwrap(), b"back");
    let a = request(
        admin,
        "PUT",
        &format!("{base}/weight"),
        Some(TOKEN),
        r#"{"weight": 7}"#,
    );
    assert_eq!(
        (a.status, a.json()["overrides"].clone()),
        (200, serde_json::json!({"weight": 7}))
    );
    assert_eq!(a.json()["configured_weight"], 1);
    let a = request(
        admin,
        "PUT",
        &format!("{base}/weight"),
        Some(TOKEN),
        r#"{"weight": 1001}"#,
    );
    assert_eq!(a.status, 400);
    let a = request(
        admin,
        "PUT",
        &format!("{base}/weight"),
        Some(TOKEN),
        "not json",
    );
    assert_eq!(a.status, 400);
    server.shutdown();
}

/// Every override can be dropped: `DELETE .../weight` gives the config's weight back and
/// `enable` drops a drain or disable, each leaving the other override in force. Status lists
/// exactly the overrides in force. Dropping needs what every change needs (token, origin).
#[test]
fn overrides_are_listed_in_status_and_each_can_be_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (server, admin, echo) = admin_server(&dir);
    let base = format!("/api/v1/pools/back/backends/{}", enc(echo));
    let weight = format!("{base}/weight");
    let backend = || get(admin, "/api/v1/status").json()["pools"][0]["backends"][0].clone();
    assert_eq!(backend()["overrides"], serde_json::json!({}));
    let a = request(admin, "PUT", &weight, Some(TOKEN), r#"{"weight": 5}"#);
    assert_eq!(a.status, 200, "{}", a.body);
    let a = request(admin, "POST", &format!("{base}/drain"), Some(TOKEN), "");
    assert_eq!(a.status, 200, "{}", a.body);
    let b = backend();
    assert_eq!(
        b["overrides"],
        serde_json::json!({"weight": 5, "state": "draining"}),
        "{b}"
    );
    assert_eq!(
        (b["configured_weight"].clone(), b["state"].clone()),
        (1.into(), "draining".into())
    );
    // Dropping is a change like any other.
    assert_eq!(request(admin, "DELETE", &weight, None, "").status, 401);
    let foreign = common::http::request_with(
        admin,
        "DELETE",
        &weight,
        &[
            ("Host", &admin.to_string()),
            ("Authorization", &format!("Bearer {TOKEN}")),
            ("Origin", "http://evil.example"),
        ],
        "",
    );
    assert_eq!(foreign.status, 403, "{}", foreign.body);
    assert_eq!(backend()["overrides"]["weight"], 5, "nothing changed");
    // enable drops the drain; the weight override stays.
    let a = request(admin, "POST", &format!("{base}/enable"), Some(TOKEN), "");
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["overrides"], serde_json::json!({"weight": 5}));
    assert_eq!(
        (
            a.json()["state"].clone(),
            a.json()["effective_weight"].clone()
        ),
        ("up".into(), 5.0.into())
    );
    // DELETE drops the weight: the config's applies again.
    let a = request(admin, "DELETE", &weight, Some(TOKEN), "");
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["overrides"], serde_json::json!({}));
    assert_eq!(a.json()["effective_weight"], 1.0);
    assert_eq!(backend()["overrides"], serde_json::json!({}));
    let pool = server.snapshot();
    assert_eq!(
        pool.pool("back").unwrap().backends[0].weight,
        tollgate::policy::SCALE,
        "the data plane serves the config's weight 1"
    );
    // Dropping what is not there is no error.
    assert_eq!(
        request(admin, "DELETE", &weight, Some(TOKEN), "").status,
        200
    );
    server.shutdown();
}

#[test]
fn unknown_things_are_404_and_wrong_methods_405() {
    let dir = tempfile::tempdir().unwrap();
    let (server, admin, echo) = admin_server(&dir);
    assert_eq!(get(admin, "/nope").status, 404);
    let unknown_pool = format!("/api/v1/pools/nope/backends/{}/drain", enc(echo));
    for (path, status) in [
        (unknown_pool.as_str(), 404),
        ("/api/v1/pools/back/backends/127.0.0.1%3A1/drain", 404),
        ("/api/v1/pools/back/backends/not-an-address/drain", 400),
    ] {
        let a = request(admin, "POST", path, Some(TOKEN), "");
        assert_eq!(a.status, status, "{path}: {}", a.body);
    }
    let a = request(admin, "DELETE", "/api/v1/status", Some(TOKEN), "");
    assert_eq!((a.status, a.header("allow").as_deref()), (405, Some("GET")));
    server.shutdown();
}

#[test]
fn requests_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (server, admin, echo) = admin_server(&dir);
    let big = format!("{{\"weight\": 1, \"pad\": \"{}\"}}", "x".repeat(100_000));
    let a = request(
        admin,
        "PUT",
        &format!("/api/v1/pools/back/backends/{}/weight", enc(echo)),
        Some(TOKEN),
        &big,
    );
    assert_eq!(a.status, 413, "{}", a.body);
    // Too many headers: refused, not stored.
    let mut s = TcpStream::connect(admin).unwrap();
    let headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {admin}\r\n{headers}\r\n").as_bytes())
        .unwrap();
    let mut reply = String::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = std::io::Read::read_to_string(&mut s, &mut reply);
    assert!(!reply.contains("200 OK"), "{reply}");
    // A slow client that never finishes its headers is cut off after the header timeout.
    let mut slow = TcpStream::connect(admin).unwrap();
    slow.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {admin}\r\n").as_bytes())
        .unwrap();
    let started = Instant::now();
    assert!(
        closed_within(&mut slow, Duration::from_secs(15)),
        "a slow request is closed"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    server.shutdown();
}

/// Sends `head` and `body_len` bytes of body, then reads the answer. `concurrent`: the body
/// is written by another thread while this one reads, as curl does; otherwise the whole body
/// is written first, as simple clients do, and it must all be taken (many clients give up
/// on a write error, a reset, without reading the answer waiting for them).
fn send_big(admin: SocketAddr, head: &str, body_len: usize, concurrent: bool) -> String {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut writer = s.try_clone().unwrap();
    let mut sender = move || -> std::io::Result<()> {
        let chunk = vec![b'x'; 64 * 1024];
        let mut left = body_len;
        while left > 0 {
            let n = left.min(chunk.len());
            writer.write_all(&chunk[..n])?;
            left -= n;
        }
        Ok(())
    };
    let sender = if concurrent {
        Some(std::thread::spawn(sender))
    } else {
        let sent = sender();
        assert!(sent.is_ok(), "the body is taken, not reset: {sent:?}");
        None
    };
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = std::io::Read::read(&mut s, &mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    drop(s);
    if let Some(sender) = sender {
        let _ = sender.join();
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A body over the limit is answered 413 with a JSON reason, and the client, still
/// sending, reads it before the connection closes (not a reset in the middle of its upload).
#[test]
fn an_oversized_body_is_answered_413_before_the_connection_closes() {
    let dir = tempfile::tempdir().unwrap();
    let (server, admin, echo) = admin_server(&dir);
    let weight = format!("/api/v1/pools/back/backends/{}/weight", enc(echo));
    let ten_mb = 10 * 1024 * 1024;
    let heads = [
        format!(
            "PUT {weight} HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {ten_mb}\r\n\r\n"
        ),
        format!(
            "POST /api/v1/reload HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {ten_mb}\r\n\r\n"
        ),
        format!(
            "PUT {weight} HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            ten_mb
        ),
    ];
    for (head, concurrent) in heads.iter().flat_map(|h| [(h, true), (h, false)]) {
        let answer = send_big(admin, head, ten_mb, concurrent);
        let first = head.lines().next().unwrap_or_default();
        let first = format!("{first} (concurrent: {concurrent})");
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "{first}: got {:?}",
            &answer[..answer.len().min(200)]
        );
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let error: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(
            error["error"].as_str().unwrap().contains("65536"),
            "{first}: {body}"
        );
    }
    assert_eq!(get(admin, "/healthz").status, 200);
    server.shutdown();
}

#[test]
fn abusing_the_admin_port_does_not_touch_the_data_plane() {
    let dir = tempfile::tempdir().unwrap();
    let (server, admin, _) = admin_server(&dir);
    // Far more idle connections than the admin cap, all holding half-sent requests.
    let hogs: Vec<TcpStream> = (0..200)
        .filter_map(|_| {
            let mut s = TcpStream::connect(admin).ok()?;
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n");
            Some(s)
        })
        .collect();
    let started = Instant::now();
    for i in 0..200u16 {
        let msg = i.to_be_bytes();
        assert_eq!(
            round_trip(front(&server), &msg).unwrap(),
            msg,
            "data plane round trip {i}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    drop(hogs);
    wait_for(
        "the admin API answers again",
        Duration::from_secs(15),
        || std::panic::catch_unwind(|| get(admin, "/healthz").status == 200).unwrap_or(false),
    );
    server.shutdown();
}

#[test]
fn the_openapi_document_lists_exactly_the_routes_served() {
    let doc: serde_json::Value = serde_saphyr::from_str(tollgate_openapi()).unwrap();
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    let mut served: Vec<(String, String)> = tollgate::admin::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served);
    // And the server really answers each one (not 404/405).
    let dir = tempfile::tempdir().unwrap();
    let (server, admin, echo) = admin_server(&dir);
    for (method, path) in &served {
        let path = path
            .replace("{pool}", "back")
            .replace("{backend}", &enc(echo));
        let body = if method == "PUT" {
            r#"{"weight": 1}"#
        } else {
            ""
        };
        let a = request(admin, method, &path, Some(TOKEN), body);
        assert!(
            ![404, 405].contains(&a.status),
            "{method} {path}: {} {}",
            a.status,
            a.body
        );
    }
    server.shutdown();
}

/// Every field the status answer carries is described in the OpenAPI document, and every
/// field described there is served: the two cannot drift apart.
#[test]
fn the_status_answer_has_exactly_the_fields_the_openapi_document_describes() {
    let doc: serde_json::Value = serde_saphyr::from_str(tollgate_openapi()).unwrap();
    let schemas = &doc["components"]["schemas"];
    let described = |schema: &serde_json::Value| -> Vec<String> {
        let mut keys: Vec<String> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    };
    let served = |object: &serde_json::Value| -> Vec<String> {
        let mut keys: Vec<String> = object.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    let dir = tempfile::tempdir().unwrap();
    let (server, admin, _) = admin_server(&dir);
    let status = get(admin, "/api/v1/status").json();
    assert_eq!(served(&status), described(&schemas["Status"]));
    let listener_schema = &schemas["TcpListenerStatus"];
    assert_eq!(served(&status["listeners"][0]), described(listener_schema));
    assert_eq!(
        served(&status["listeners"][0]["rejected"]),
        described(&listener_schema["properties"]["rejected"])
    );
    let aborted = &status["listeners"][0]["aborted"];
    assert_eq!(
        served(aborted),
        described(&listener_schema["properties"]["aborted"])
    );
    for side in ["client", "backend"] {
        assert_eq!(served(&aborted[side]), described(&schemas["AbortedBy"]));
    }
    let backend = &status["pools"][0]["backends"][0];
    assert_eq!(served(backend), described(&schemas["Backend"]));
    server.shutdown();
}

/// Each counter appears once in the status answer: no object carries both a nested count
/// (`rejected.acl`) and a flat copy of it (`rejected_acl`).
#[test]
fn the_status_answer_carries_each_counter_once() {
    fn flat_copies(value: &serde_json::Value, path: &str, found: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(fields) => {
                for (key, inner) in fields {
                    if let serde_json::Value::Object(nested) = inner {
                        found.extend(
                            nested
                                .keys()
                                .map(|sub| format!("{key}_{sub}"))
                                .filter(|flat| fields.contains_key(flat))
                                .map(|flat| format!("{path}.{flat}")),
                        );
                    }
                    flat_copies(inner, &format!("{path}.{key}"), found);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    flat_copies(item, &format!("{path}[{i}]"), found);
                }
            }
            _ => {}
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (server, admin, _) = admin_server(&dir);
    let status = get(admin, "/api/v1/status").json();
    assert!(status["listeners"][0]["rejected"]["acl"].is_u64());
    let mut found = Vec::new();
    flat_copies(&status, "status", &mut found);
    assert!(found.is_empty(), "counters served twice: {found:?}");
    server.shutdown();
}

fn tollgate_openapi() -> &'static str {
    include_str!("../src/admin/openapi.yaml")
}
