//! `sni` through the real server on loopback: routes by exact name, `*.` wildcard and
//! default; the peeked ClientHello reaches the backend byte for byte; `openssl s_client`
//! sees each backend's own certificate; what cannot be routed is closed before any backend
//! and counted as `sni`; a trusted PROXY header comes first; a reload changes routes without
//! touching open connections; with `proxy_protocol.send` the backend gets the header, then
//! the ClientHello, then the rest, and the ClientHello counts as bytes sent to it; and the
//! config says what is wrong with a route.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::proxy::header_echo;
use common::tls::{client_hello, client_hello_padded, self_signed};
use common::*;

/// A backend that answers each connection with `tag`, then echoes it.
fn tagged_echo(tag: u8) -> SocketAddr {
    backend(move |mut s| {
        if s.write_all(&[tag]).is_ok() {
            echo(&mut s);
        }
    })
}

/// Three pools (`api`, `web`, `other`, each one tagged echo backend) behind one `sni`
/// listener, with `routing` as its `sni:` section.
fn routed(routing: &str, extra: &str) -> String {
    let (a, w, o) = (tagged_echo(b'A'), tagged_echo(b'W'), tagged_echo(b'O'));
    format!(
        "workers: 2\nshutdown: {{ drain_timeout: 500ms }}\nlisteners:\n  tls:\n    bind: \"127.0.0.1:0\"\n    sni: {routing}\n{extra}pools:\n  api:\n    backends: [{{ address: \"{a}\" }}]\n  web:\n    backends: [{{ address: \"{w}\" }}]\n  other:\n    backends: [{{ address: \"{o}\" }}]\n"
    )
}

const ROUTES: &str = "{ routes: [ { match: [\"api.example.com\", \"*.api.example.com\"], pool: api }, { match: [\"*.example.com\"], pool: web } ], default_pool: other, peek_timeout: 300ms }";

fn tls_front(server: &tollgate::app::Server) -> SocketAddr {
    server.addrs("tls")[0]
}

/// Sends `first` and returns the backend's tag and the bytes echoed (all of `first`), or
/// `None` when the connection is closed instead.
fn route(front: SocketAddr, first: &[u8]) -> Option<(u8, Vec<u8>)> {
    let mut c = TcpStream::connect(front).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    c.write_all(first).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while got.len() < first.len() + 1 {
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    let (&tag, echoed) = got.split_first()?;
    Some((tag, echoed.to_vec()))
}

#[test]
fn names_route_by_exact_name_then_wildcard_then_default() {
    let server = start(&routed(ROUTES, ""));
    let front = tls_front(&server);
    let cases = [
        (Some("api.example.com"), b'A'),
        (Some("API.Example.COM"), b'A'),
        (Some("v2.api.example.com"), b'A'),
        (Some("www.example.com"), b'W'),
        (Some("a.b.example.com"), b'W'),
        (Some("example.com"), b'O'),
        (Some("other.org"), b'O'),
        (None, b'O'),
    ];
    for (name, tag) in cases {
        let hello = client_hello(name);
        let (got, echoed) = route(front, &hello).unwrap_or_else(|| panic!("{name:?} closed"));
        assert_eq!(got, tag, "{name:?}");
        assert_eq!(
            echoed, hello,
            "{name:?}: the ClientHello reaches the backend unchanged"
        );
    }
    // A ClientHello split over several writes is waited for.
    let hello = client_hello(Some("api.example.com"));
    let mut c = TcpStream::connect(front).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    for piece in hello.chunks(9) {
        c.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut got = vec![0u8; 1 + hello.len()];
    c.read_exact(&mut got).unwrap();
    assert_eq!(got[0], b'A');
    assert_eq!(&got[1..], &hello[..], "reassembled unchanged");
    drop(c);
    server.shutdown();
}

/// Without a default pool: an unrouted name, no name, plain text, a malformed record and
/// silence are each closed before any backend and counted.
#[test]
fn what_cannot_be_routed_is_closed_and_counted() {
    let (backend, reached) = counting_backend();
    let yaml = format!(
        "workers: 2\nlisteners:\n  tls:\n    bind: \"127.0.0.1:0\"\n    sni: {{ routes: [ {{ match: [\"api.example.com\"], pool: api }} ], peek_timeout: 300ms }}\npools:\n  api:\n    backends: [{{ address: \"{backend}\" }}]\n"
    );
    let server = start(&yaml);
    let front = tls_front(&server);
    let spec = server.snapshot().listener("tls").unwrap().clone();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("an unrouted name", client_hello(Some("other.org"))),
        ("no name", client_hello(None)),
        (
            "plain text",
            b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n".to_vec(),
        ),
        ("a malformed record", vec![22, 3, 1, 0, 0]),
        ("silence", Vec::new()),
        (
            "half a ClientHello",
            client_hello(Some("api.example.com"))[..30].to_vec(),
        ),
    ];
    for (what, bytes) in &cases {
        let started = std::time::Instant::now();
        assert_eq!(route(front, bytes), None, "{what}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{what}: closed late"
        );
    }
    wait_for("every refusal counted", Duration::from_secs(2), || {
        spec.live.rejected_sni.load(Relaxed) == cases.len() as u64
    });
    assert_eq!(reached.load(Relaxed), 0, "no backend was touched");
    // The routed name still passes.
    let mut c = TcpStream::connect(front).unwrap();
    c.write_all(&client_hello(Some("api.example.com"))).unwrap();
    wait_for(
        "the routed name reaches its backend",
        Duration::from_secs(2),
        || reached.load(Relaxed) == 1,
    );
    drop(c);
    server.shutdown();
}

/// A trusted balancer's PROXY header comes first, then the ClientHello: the header is read,
/// the ClientHello routes, and the backend gets the ClientHello alone.
#[test]
fn a_proxy_header_then_a_client_hello() {
    let server = start(&routed(
        ROUTES,
        "    proxy_protocol: { accept_from: [\"127.0.0.0/8\"] }\n",
    ));
    let front = tls_front(&server);
    let hello = client_hello(Some("www.example.com"));
    let mut first = b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 443\r\n".to_vec();
    first.extend_from_slice(&hello);
    let mut c = TcpStream::connect(front).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    c.write_all(&first).unwrap();
    let mut got = vec![0u8; 1 + hello.len()];
    c.read_exact(&mut got).unwrap();
    assert_eq!(got[0], b'W');
    assert_eq!(&got[1..], &hello[..]);
    drop(c);
    server.shutdown();
}

/// With `proxy_protocol.send`, the backend gets the PROXY header, then the ClientHello it was
/// routed by, then the rest of the stream, unchanged and in that order. The ClientHello here
/// is larger than the first read and comes in pieces; it counts as bytes sent to the
/// backend, and the header does not.
#[test]
fn the_backend_gets_the_header_then_the_client_hello_then_the_rest() {
    let backend = header_echo("127.0.0.1:0");
    let server = start(&format!(
        "workers: 1\nshutdown: {{ drain_timeout: 500ms }}\nlisteners:\n  tls:\n    bind: \"127.0.0.1:0\"\n    sni: {{ routes: [], default_pool: back, peek_timeout: 2s }}\n    proxy_protocol: {{ send: v2 }}\npools:\n  back:\n    backends: [{{ address: \"{backend}\" }}]\n"
    ));
    let front = tls_front(&server);
    let hello = client_hello_padded(Some("big.example.com"), 5000);
    assert!(hello.len() > 5000);
    let rest = b"after the hello";
    let mut c = TcpStream::connect(front).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    for piece in hello.chunks(1400) {
        c.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    c.write_all(rest).unwrap();
    let line = format!("V2 {} {front}\n", c.local_addr().unwrap());
    let mut got = vec![0u8; line.len() + hello.len() + rest.len()];
    c.read_exact(&mut got).unwrap();
    assert_eq!(String::from_utf8_lossy(&got[..line.len()]), line);
    assert!(
        got[line.len()..line.len() + hello.len()] == hello[..],
        "the ClientHello reaches the backend unchanged"
    );
    assert_eq!(&got[line.len() + hello.len()..], rest);
    drop(c);
    let stats = server.snapshot().pool("back").unwrap().backends[0]
        .stats
        .clone();
    let sent = (hello.len() + rest.len()) as u64;
    wait_for("the bytes counted", Duration::from_secs(3), || {
        stats.sent_bytes.load(Relaxed) == sent
    });
    server.shutdown();
}

/// A reload that moves a name to another pool changes where new connections go and leaves
/// an open one where it is.
#[test]
fn a_reload_changes_routes_without_touching_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    let yaml = routed(ROUTES, "");
    let server = start_file(&path, &yaml);
    let front = tls_front(&server);
    let hello = client_hello(Some("api.example.com"));
    let mut open = TcpStream::connect(front).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    open.write_all(&hello).unwrap();
    let mut got = vec![0u8; 1 + hello.len()];
    open.read_exact(&mut got).unwrap();
    assert_eq!(got[0], b'A');
    let moved = yaml.replace(
        "\"*.api.example.com\"], pool: api",
        "\"*.api.example.com\"], pool: other",
    );
    assert_ne!(moved, yaml);
    std::fs::write(&path, moved).unwrap();
    server.control().reload_blocking().unwrap();
    assert_eq!(
        route(front, &hello).unwrap().0,
        b'O',
        "a new connection follows the new route"
    );
    open.write_all(b"still here").unwrap();
    let mut echoed = [0u8; 10];
    open.read_exact(&mut echoed).unwrap();
    assert_eq!(
        &echoed, b"still here",
        "the open connection stays with its backend"
    );
    drop(open);
    server.shutdown();
}

/// `openssl s_client -servername` through tollgate to `openssl s_server` backends: each
/// name reaches its backend, and the certificate the client sees is that backend's own.
#[test]
fn openssl_sees_each_backends_own_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let mut servers = Vec::new();
    let mut addrs = Vec::new();
    for cn in ["api.example.com", "wild.example.com", "default.example.com"] {
        let (cert, key) = self_signed(dir.path(), cn);
        let port = free_port();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl is installed (.ci/run installs it)");
        servers.push(Terminate(child));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for("s_server listening", Duration::from_secs(10), || {
            TcpStream::connect(addr).is_ok()
        });
        addrs.push(addr);
    }
    let yaml = format!(
        "workers: 2\nshutdown: {{ drain_timeout: 500ms }}\nlisteners:\n  tls:\n    bind: \"127.0.0.1:0\"\n    sni: {{ routes: [ {{ match: [\"api.example.com\"], pool: api }}, {{ match: [\"*.example.com\"], pool: wild }} ], default_pool: fallback }}\npools:\n  api:\n    backends: [{{ address: \"{}\" }}]\n  wild:\n    backends: [{{ address: \"{}\" }}]\n  fallback:\n    backends: [{{ address: \"{}\" }}]\n",
        addrs[0], addrs[1], addrs[2]
    );
    let server = start(&yaml);
    let front = tls_front(&server);
    let cases = [
        (Some("api.example.com"), "api.example.com"),
        (Some("www.example.com"), "wild.example.com"),
        (Some("other.org"), "default.example.com"),
        (None, "default.example.com"),
    ];
    for (name, cn) in cases {
        let mut cmd = Command::new("openssl");
        cmd.args(["s_client", "-connect"]).arg(front.to_string());
        match name {
            Some(n) => cmd.args(["-servername", n]),
            None => cmd.arg("-noservername"),
        };
        let out = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .expect("openssl is installed (.ci/run installs it)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("subject=CN = {cn}")),
            "{name:?}: wanted {cn}\n{text}"
        );
    }
    server.shutdown();
    drop(servers);
}

/// What the config refuses, and says why.
#[test]
fn the_config_says_what_is_wrong_with_a_route() {
    let err = |sni: &str, pool_line: &str| {
        let yaml = format!(
            "listeners:\n  tls:\n    bind: \"127.0.0.1:0\"\n{pool_line}    sni: {sni}\npools:\n  api:\n    backends: [{{ address: \"127.0.0.1:1\" }}]\n"
        );
        tollgate::config::load_str(&yaml, "t.yaml")
            .unwrap_err()
            .to_string()
    };
    let e = err("{ default_pool: api }", "    pool: api\n");
    assert!(
        e.contains("listeners.tls.pool: a listener with `sni` has no `pool`: name the pool for unmatched names as `sni.default_pool` (`default_pool: api`)"),
        "{e}"
    );
    let e = err("{ routes: [ { match: [\"a..b\"], pool: api } ] }", "");
    assert!(
        e.contains("listeners.tls.sni.routes[0].match[0]: `a..b` is neither a host name"),
        "{e}"
    );
    let e = err("{ routes: [ { match: [\"*a.io\"], pool: api } ] }", "");
    assert!(e.contains("did you mean `*.a.io`?"), "{e}");
    let e = err(
        "{ routes: [ { match: [\"a.io\"], pool: api }, { match: [\"A.io\"], pool: api } ] }",
        "",
    );
    assert!(e.contains("`a.io` is matched already"), "{e}");
    let e = err("{ routes: [ { match: [\"a.io\"], pool: apj } ] }", "");
    assert!(e.contains("sni.routes[0].pool: no pool named `apj`"), "{e}");
    let e = err("{ peek_timeout: 1s }", "");
    assert!(e.contains("routes nothing"), "{e}");
    let e = err("{ routes: [ { pool: api } ] }", "");
    assert!(e.contains("a route needs at least one name"), "{e}");
    // What a valid one shows.
    let ok = "listeners:\n  tls:\n    bind: \"127.0.0.1:0\"\n    sni: { routes: [ { match: [\"a.io\", \"*.a.io\"], pool: api } ] }\npools:\n  api:\n    backends: [{ address: \"127.0.0.1:1\" }]\n";
    let json = tollgate::config::load_str(ok, "t.yaml").unwrap().to_json();
    let l = &json["listeners"][0];
    assert_eq!(l["pool"], serde_json::Value::Null);
    assert_eq!(
        l["sni"]["routes"][0]["match"],
        serde_json::json!(["a.io", "*.a.io"])
    );
    assert_eq!(l["sni"]["default_pool"], serde_json::Value::Null);
    assert_eq!(l["sni"]["peek_timeout"], "5s");
}

/// `check --diff` against the running instance shows a route that moved.
#[test]
fn check_diff_shows_a_route_that_moved() {
    let yaml = format!("admin:\n  bind: \"127.0.0.1:0\"\n{}", routed(ROUTES, ""));
    let server = start(&yaml);
    let admin = server.admin_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let next = dir.path().join("next.yaml");
    let moved = yaml.replace(
        "\"*.example.com\"], pool: web",
        "\"*.example.com\"], pool: other",
    );
    std::fs::write(&next, moved).unwrap();
    let out = Command::new(common::binary::bin())
        .args(["check", "--diff", "-c"])
        .arg(&next)
        .arg("--admin")
        .arg(admin.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("~ listener tls: sni.routes"), "{text}");
    server.shutdown();
}

/// An `sni` listener accepts a connection only once its first bytes have come
/// (`TCP_DEFER_ACCEPT`): a client that connects and says nothing takes no task and no slot,
/// and one that then sends its ClientHello is served.
#[test]
fn a_silent_client_is_not_accepted_until_it_speaks() {
    let server = start(&routed(ROUTES, ""));
    let front = tls_front(&server);
    let spec = server.snapshot().listener("tls").unwrap().clone();
    let mut c = TcpStream::connect(front).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        spec.live.accepted.load(Relaxed),
        0,
        "accepted before any byte"
    );
    let hello = client_hello(Some("api.example.com"));
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    c.write_all(&hello).unwrap();
    let mut tag = [0u8; 1];
    c.read_exact(&mut tag).unwrap();
    assert_eq!(tag[0], b'A');
    assert_eq!(spec.live.accepted.load(Relaxed), 1);
    drop(c);
    server.shutdown();
}
