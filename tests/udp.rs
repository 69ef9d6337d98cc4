//! `protocol: udp` through the real server on loopback: sessions keyed by client and local
//! address, replies from the address the client sent to, byte-exact datagrams of every size
//! up to 65 507 bytes, `responses`, the session cap, idle expiry, a session moving when its
//! backend may no longer be used, sessions kept across a reload, and the counters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::udp::*;
use common::*;

/// 1 000 tagged datagrams from 50 source addresses, every size class: each reply reaches
/// its own source, byte-exact, from the listener's address.
#[test]
fn datagrams_of_every_size_come_back_to_their_own_source_byte_exact() {
    let server = start(&udp_config(&[udp_echo(b"")], "", ""));
    let front = front(&server);
    let sizes = [0usize, 1, 1472, 8192, 65_507];
    let clients: Vec<UdpSocket> = (0..50)
        .map(|i| client(&format!("127.0.1.{}", i + 1)))
        .collect();
    let mut sent = 0;
    for round in 0..20 {
        for (i, c) in clients.iter().enumerate() {
            let size = sizes[(round + i) % sizes.len()];
            let mut payload: Vec<u8> = (0..size).map(|k| (k * 31 + i * 7 + round) as u8).collect();
            if size >= 4 {
                payload[..2].copy_from_slice(&(i as u16).to_be_bytes());
                payload[2..4].copy_from_slice(&(round as u16).to_be_bytes());
            }
            let (reply, from) = exchange(c, front, &payload);
            assert_eq!(from, front, "the reply comes from the listener's address");
            assert_eq!(reply.len(), size, "client {i} round {round}: size");
            assert!(reply == payload, "client {i} round {round}: bytes differ");
            sent += 1;
        }
    }
    assert_eq!(sent, 1000);
    let spec = udp_live(&server);
    assert_eq!(
        spec.live.udp.sessions_total.load(Relaxed),
        50,
        "one session per source"
    );
    assert_eq!(spec.live.udp.sessions_active.load(Relaxed), 50);
    server.shutdown();
}

/// `responses: 1` (DNS): the session ends with its answer.
#[test]
fn with_responses_1_the_session_ends_with_its_answer() {
    let server = start(&udp_config(&[udp_echo(b"")], "responses: 1", ""));
    let front = front(&server);
    let spec = udp_live(&server);
    let c = client("127.0.0.1");
    for n in 0..5u8 {
        assert_eq!(exchange(&c, front, &[n]).0, vec![n]);
        wait_for("the session is gone", Duration::from_secs(2), || {
            spec.live.udp.sessions_active.load(Relaxed) == 0
        });
    }
    assert_eq!(
        spec.live.udp.sessions_total.load(Relaxed),
        5,
        "a new session per query"
    );
    server.shutdown();
}

/// At `max_sessions`, a new client's datagram is dropped and counted; old ones still pass.
#[test]
fn the_session_cap_drops_new_clients_and_counts_them() {
    let server = start(&udp_config(&[udp_echo(b"")], "max_sessions: 2", ""));
    let front = front(&server);
    let spec = udp_live(&server);
    let (a, b, c) = (
        client("127.0.2.1"),
        client("127.0.2.2"),
        client("127.0.2.3"),
    );
    assert_eq!(exchange(&a, front, b"a").0, b"a");
    assert_eq!(exchange(&b, front, b"b").0, b"b");
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    c.send_to(b"c", front).unwrap();
    let mut buf = [0u8; 16];
    assert!(
        c.recv_from(&mut buf).is_err(),
        "the third client got no answer"
    );
    let refused = spec
        .live
        .udp
        .rejected(tollgate::state::UdpRefusal::MaxSessions);
    wait_for("counted", Duration::from_secs(2), || {
        refused.load(Relaxed) == 1
    });
    assert_eq!(exchange(&a, front, b"a2").0, b"a2", "open sessions go on");
    server.shutdown();
}

/// A session with nothing either way for `session_idle` ends: the gauge returns to 0.
#[test]
fn idle_sessions_end_and_the_gauge_returns_to_zero() {
    let server = start(&udp_config(&[udp_echo(b"")], "session_idle: 200ms", ""));
    let front = front(&server);
    let spec = udp_live(&server);
    let clients: Vec<UdpSocket> = (1..=10).map(|i| client(&format!("127.0.3.{i}"))).collect();
    for c in &clients {
        assert_eq!(exchange(c, front, b"x").0, b"x");
    }
    assert_eq!(spec.live.udp.sessions_active.load(Relaxed), 10);
    wait_for("every session expired", Duration::from_secs(3), || {
        spec.live.udp.sessions_active.load(Relaxed) == 0
    });
    server.shutdown();
}

/// A session whose backend is disabled moves to the other on its next datagram, keeping
/// its key: the same client is answered by the other backend.
#[test]
fn a_session_moves_when_its_backend_may_no_longer_be_used() {
    let (one, two) = (udp_echo(b"1"), udp_echo(b"2"));
    let server = start(&udp_config(&[one, two], "", ""));
    let front = front(&server);
    let c = client("127.0.4.1");
    let first = exchange(&c, front, b"q").0[0];
    let serving = if first == b'1' { one } else { two };
    server
        .control()
        .backend_action_blocking("back", serving, tollgate::control::BackendAction::Disable)
        .unwrap();
    let second = exchange(&c, front, b"q").0[0];
    assert_ne!(first, second, "moved to the other backend");
    let spec = udp_live(&server);
    assert_eq!(
        spec.live.udp.sessions_total.load(Relaxed),
        1,
        "still one session"
    );
    assert_eq!(spec.live.udp.sessions_active.load(Relaxed), 1);
    server.shutdown();
}

/// A reload that keeps the listener and the session's backend keeps the session: the same
/// client goes on with the same backend, and no new session is made.
#[test]
fn a_reload_keeps_sessions_whose_backend_remains() {
    let (one, two, three) = (udp_echo(b"1"), udp_echo(b"2"), udp_echo(b"3"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    let server = start_file(&path, &udp_config(&[one, two], "", ""));
    let front = front(&server);
    let c = client("127.0.5.1");
    let first = exchange(&c, front, b"q").0[0];
    std::fs::write(
        &path,
        udp_config(&[one, two, three], "session_idle: 20s", ""),
    )
    .unwrap();
    server.control().reload_blocking().unwrap();
    for _ in 0..10 {
        assert_eq!(exchange(&c, front, b"q").0[0], first, "the same backend");
    }
    let spec = udp_live(&server);
    assert_eq!(spec.live.udp.sessions_total.load(Relaxed), 1);
    server.shutdown();
}

/// A wildcard listener answers each client from the address that client wrote to: with
/// 127.0.0.2 and 127.0.0.3 both local, each reply names the one it was sent to.
#[test]
fn a_wildcard_listener_answers_from_the_address_the_client_used() {
    let yaml = udp_config(&[udp_echo(b"")], "", "").replace(
        "    bind: \"127.0.0.1:0\"\n    pool",
        "    bind: \"0.0.0.0:0\"\n    pool",
    );
    let server = start(&yaml);
    let port = front(&server).port();
    let c = client("127.0.0.1");
    for ip in ["127.0.0.2", "127.0.0.3", "127.0.0.2"] {
        let to: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        let (reply, from) = exchange(&c, to, ip.as_bytes());
        assert_eq!(reply, ip.as_bytes());
        assert_eq!(from, to, "answered from the address written to");
    }
    let spec = udp_live(&server);
    assert_eq!(
        spec.live.udp.sessions_total.load(Relaxed),
        2,
        "one session per local address"
    );
    server.shutdown();
}

/// The UDP families in `/metrics` (promtool-clean) and the listener in status.
#[test]
fn metrics_and_status_show_sessions_and_datagrams() {
    let server = start(&udp_config(&[udp_echo(b"")], "max_sessions: 1", ""));
    let front = front(&server);
    let admin = server.admin_addr().unwrap();
    let a = client("127.0.6.1");
    for _ in 0..3 {
        exchange(&a, front, b"12345");
    }
    client("127.0.6.2").send_to(b"x", front).unwrap();
    let refused = udp_live(&server);
    wait_for("the refusal is counted", Duration::from_secs(2), || {
        refused
            .live
            .udp
            .rejected(tollgate::state::UdpRefusal::MaxSessions)
            .load(Relaxed)
            == 1
    });
    let text = common::http::get(admin, "/metrics").body;
    common::promtool::check(&text);
    for line in [
        "tollgate_udp_sessions_active{listener=\"front\"} 1",
        "tollgate_udp_sessions_total{listener=\"front\"} 1",
        "tollgate_udp_sessions_rejected_total{listener=\"front\",reason=\"max_sessions\"} 1",
        "tollgate_udp_datagrams_total{listener=\"front\",direction=\"to_backend\"} 3",
        "tollgate_udp_datagrams_total{listener=\"front\",direction=\"to_client\"} 3",
        "tollgate_udp_bytes_total{listener=\"front\",direction=\"to_client\"} 15",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
    }
    assert!(
        !text.contains("tollgate_listener_connections_active{listener=\"front\"}"),
        "a UDP listener has no connections"
    );
    let status: serde_json::Value =
        serde_json::from_str(&common::http::get(admin, "/api/v1/status").body).unwrap();
    let l = &status["listeners"][0];
    assert_eq!(l["protocol"], "udp");
    assert_eq!(l["sessions_active"], 1);
    assert_eq!(l["max_sessions"], 1);
    assert_eq!(l["rejected"]["max_sessions"], 1);
    assert_eq!(l["to_client"]["datagrams"], 3);
    // Exactly the fields the OpenAPI document describes for a UDP listener.
    let doc: serde_json::Value =
        serde_saphyr::from_str(include_str!("../src/admin/openapi.yaml")).unwrap();
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let schema = &doc["components"]["schemas"]["UdpListenerStatus"];
    assert_eq!(keys(l), keys(&schema["properties"]));
    assert_eq!(
        keys(&l["rejected"]),
        keys(&schema["properties"]["rejected"]["properties"])
    );
    server.shutdown();
}

/// A real DNS exchange: hickory's resolver asks tollgate (UDP only), tollgate asks an
/// authoritative hickory server, and with `responses: 1` each query's session ends with its
/// answer.
#[test]
fn dns_through_tollgate_answers_and_each_session_ends_with_its_answer() {
    use hickory_resolver::config::{
        ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
    };
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    use hickory_resolver::proto::rr::RecordType;

    let dns = common::dns::DnsServer::start();
    dns.set_a("app.example.com", 60, &["192.0.2.7".parse().unwrap()]);
    let server = start(&udp_config(&[dns.addr()], "responses: 1", ""));
    let front = front(&server);
    let spec = udp_live(&server);
    let mut udp_only = ConnectionConfig::udp();
    udp_only.port = front.port();
    let mut config = ResolverConfig::default();
    config
        .name_servers
        .push(NameServerConfig::new(front.ip(), true, vec![udp_only]));
    let mut opts = ResolverOpts::default();
    opts.cache_size = 0;
    opts.attempts = 0;
    opts.timeout = Duration::from_secs(2);
    let resolver = hickory_resolver::TokioResolver::builder_with_config(
        config,
        TokioRuntimeProvider::default(),
    )
    .with_options(opts)
    .build()
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for _ in 0..3 {
        let answer = rt
            .block_on(resolver.lookup("app.example.com.", RecordType::A))
            .expect("answered through tollgate");
        let ips: Vec<String> = answer
            .answers()
            .iter()
            .map(|r| r.data.to_string())
            .collect();
        assert_eq!(ips, vec!["192.0.2.7".to_owned()]);
    }
    wait_for(
        "every session ended with its answer",
        Duration::from_secs(2),
        || spec.live.udp.sessions_active.load(Relaxed) == 0,
    );
    assert!(spec.live.udp.sessions_total.load(Relaxed) >= 3);
    assert_eq!(
        dns.queries("app.example.com"),
        3,
        "each query reached the server once"
    );
    server.shutdown();
}

/// Per-source limits count sessions: a source may hold `max_connections` sessions at once
/// (ports of one address are one source), the next is dropped as `source_limit`, and the
/// explain endpoint answers for the UDP listener.
#[test]
fn per_source_limits_count_sessions() {
    let yaml = udp_config(&[udp_echo(b"")], "", "").replace(
        "    udp: {  }\n",
        "    udp: {  }\n    limits: { per_source: { max_connections: 2 } }\n",
    );
    let server = start(&yaml);
    let front = front(&server);
    let spec = udp_live(&server);
    let (a, b, c) = (
        client("127.0.7.1"),
        client("127.0.7.1"),
        client("127.0.7.1"),
    );
    assert_eq!(exchange(&a, front, b"a").0, b"a");
    assert_eq!(exchange(&b, front, b"b").0, b"b");
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    c.send_to(b"c", front).unwrap();
    let mut buf = [0u8; 8];
    assert!(
        c.recv_from(&mut buf).is_err(),
        "the third session of the source is dropped"
    );
    let limited = spec
        .live
        .udp
        .rejected(tollgate::state::UdpRefusal::SourceLimit);
    wait_for("counted as source_limit", Duration::from_secs(2), || {
        limited.load(Relaxed) == 1
    });
    assert_eq!(
        exchange(&client("127.0.7.2"), front, b"d").0,
        b"d",
        "another source is fine"
    );
    let admin = server.admin_addr().unwrap();
    let why = common::http::get(admin, "/api/v1/listeners/front/sources/127.0.7.1").body;
    // A UDP listener's explanation counts sessions, named as such.
    let why: serde_json::Value = serde_json::from_str(&why).unwrap();
    assert_eq!(why["per_source"]["open_sessions"], 2, "{why}");
    assert!(why["per_source"].get("open_connections").is_none(), "{why}");
    assert_eq!(why["listener_sessions"]["active"], 3, "{why}");
    server.shutdown();
}

/// A UDP port nothing listens on.
fn dead_udp_port() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The `udp` health check on a UDP pool: a backend whose port answers nothing is down and
/// takes no session; with every backend down, `when_all_down: reject` drops new clients as
/// `no_backend`.
#[test]
fn udp_health_checks_keep_sessions_off_dead_backends() {
    let check = "    health_check: { type: udp, interval: 100ms, timeout: 80ms, rise: 1, fall: 1, send: \"ping\", expect: \"ping\" }\n";
    let (alive, dead) = (udp_echo(b""), dead_udp_port());
    let server = start(&udp_config(&[alive, dead], "", check));
    let front = front(&server);
    let pool = || server.snapshot().pool("back").unwrap().clone();
    wait_for("the dead backend is down", Duration::from_secs(5), || {
        let p = pool();
        p.backends
            .iter()
            .all(|b| (b.address == dead) == (b.weight == 0))
    });
    for i in 1..=20 {
        let c = client(&format!("127.0.8.{i}"));
        assert_eq!(exchange(&c, front, b"hi").0, b"hi", "client {i} answered");
    }
    server.shutdown();

    let server = start(&udp_config(&[dead_udp_port()], "", check));
    let front = common::front(&server);
    let spec = udp_live(&server);
    std::thread::sleep(Duration::from_millis(500));
    client("127.0.8.100").send_to(b"x", front).unwrap();
    let refused = spec
        .live
        .udp
        .rejected(tollgate::state::UdpRefusal::NoBackend);
    wait_for("dropped as no_backend", Duration::from_secs(2), || {
        refused.load(Relaxed) >= 1
    });
    server.shutdown();
}

/// `GET /api/v1/config` shows a UDP listener's own settings, `check --diff` compares them,
/// and backend counters count sessions.
#[test]
fn config_diff_and_backend_counters_cover_udp_listeners() {
    let backend = udp_echo(b"");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    let server = start_file(&path, &udp_config(&[backend], "session_idle: 5s", ""));
    let admin = server.admin_addr().unwrap();
    let front = front(&server);
    exchange(&client("127.0.9.1"), front, b"x");
    exchange(&client("127.0.9.2"), front, b"y");
    let config: serde_json::Value =
        serde_json::from_str(&common::http::get(admin, "/api/v1/config").body).unwrap();
    let l = &config["listeners"][0];
    assert_eq!(l["protocol"], "udp");
    assert_eq!(l["udp"]["session_idle"], "5s");
    assert!(l.get("timeouts").is_none(), "no TCP settings: {l}");
    let status: serde_json::Value =
        serde_json::from_str(&common::http::get(admin, "/api/v1/status").body).unwrap();
    assert_eq!(
        status["pools"][0]["backends"][0]["connections_total"], 2,
        "two sessions"
    );
    std::fs::write(
        &path,
        udp_config(&[backend], "session_idle: 9s, responses: 1", ""),
    )
    .unwrap();
    let out = std::process::Command::new(common::binary::bin())
        .args(["check", "--diff", "-c"])
        .arg(&path)
        .arg("--admin")
        .arg(admin.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("session_idle") && stdout.contains("5s -> 9s"),
        "{stdout}"
    );
    assert!(stdout.contains("responses"), "{stdout}");
    server.shutdown();
}

/// With `responses: 1`, two queries in flight from one port (a resolver asking A and AAAA
/// at once) both get their answer; the session ends after the second.
#[test]
fn responses_count_per_datagram_so_two_queries_in_flight_both_get_answers() {
    let backend = UdpSocket::bind("127.0.0.1:0").unwrap();
    let backend_addr = backend.local_addr().unwrap();
    // Answers only once both queries are in, so both are in flight together.
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        while got.len() < 2 {
            let Ok((n, from)) = backend.recv_from(&mut buf) else {
                return;
            };
            got.push((buf[..n].to_vec(), from));
        }
        for (q, from) in got {
            let _ = backend.send_to(&q, from);
        }
    });
    let server = start(&udp_config(&[backend_addr], "responses: 1", ""));
    let front = front(&server);
    let spec = udp_live(&server);
    let c = client("127.0.10.1");
    c.send_to(b"A?", front).unwrap();
    c.send_to(b"AAAA?", front).unwrap();
    let mut answers = Vec::new();
    let mut buf = [0u8; 64];
    for _ in 0..2 {
        let (n, _) = c.recv_from(&mut buf).expect("both queries are answered");
        answers.push(buf[..n].to_vec());
    }
    answers.sort();
    assert_eq!(answers, vec![b"A?".to_vec(), b"AAAA?".to_vec()]);
    wait_for(
        "the session ended with its last answer",
        Duration::from_secs(2),
        || spec.live.udp.sessions_active.load(Relaxed) == 0,
    );
    assert_eq!(spec.live.udp.sessions_total.load(Relaxed), 1);
    server.shutdown();
}

/// Maglev keeps a client address on one backend across sessions: every port of an address
/// (a new session each) lands on the same backend, and addresses spread over all three.
#[test]
fn maglev_keeps_a_client_on_one_backend_across_sessions() {
    let backends = [udp_echo(b"1"), udp_echo(b"2"), udp_echo(b"3")];
    let server = start(&udp_config(&backends, "", "    balance: maglev\n"));
    let front = front(&server);
    let mut seen = std::collections::BTreeSet::new();
    for host in 1..=30 {
        let ip = format!("127.0.11.{host}");
        let answers: Vec<u8> = (0..3)
            .map(|_| exchange(&client(&ip), front, b"q").0[0])
            .collect();
        assert!(
            answers.iter().all(|a| *a == answers[0]),
            "{ip} moved: {answers:?}"
        );
        seen.insert(answers[0]);
    }
    assert_eq!(
        seen.len(),
        3,
        "addresses spread over every backend: {seen:?}"
    );
    server.shutdown();
}

/// An IPv6 listener and backend: datagrams pass byte-exact and replies come from [::1].
#[test]
fn ipv6_listener_and_backend() {
    let socket = UdpSocket::bind("[::1]:0").unwrap();
    let backend = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    });
    let yaml = udp_config(&[backend], "", "").replace(
        "bind: \"127.0.0.1:0\"\n    pool",
        "bind: \"[::1]:0\"\n    pool",
    );
    let server = start(&yaml);
    let front = front(&server);
    assert!(front.is_ipv6(), "{front}");
    let c = client("[::1]");
    for size in [0usize, 1, 1232, 65_000] {
        let payload: Vec<u8> = (0..size).map(|i| (i * 13) as u8).collect();
        let (reply, from) = exchange(&c, front, &payload);
        assert_eq!(from, front);
        assert!(reply == payload, "size {size}");
    }
    server.shutdown();
}
