//! `proxy_protocol.accept_from` through the real server on loopback: a trusted source's
//! connections start with a PROXY header whose client address is the one ACLs, per-source
//! limits and the outgoing header use; malformed, slow and missing headers are each closed
//! before any backend is touched and counted as `proxy_protocol`; a header from anyone else
//! is payload; and HAProxy with `send-proxy-v2` in front has its clients limited one by one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::proxy::header_echo;
use common::*;
use tollgate::proxy_protocol::{self, Addresses, Transport, Version};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn header(version: Version, source: &str, destination: &str, tlvs: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let a = Addresses {
        source: sa(source),
        destination: sa(destination),
        transport: Transport::Stream,
    };
    proxy_protocol::encode(version, Some(a), tlvs, &mut out);
    out
}

/// Sends `first` then `payload`, and reads until the payload came back (or the end).
fn through(front: SocketAddr, first: &[u8], payload: &[u8]) -> String {
    let mut c = TcpStream::connect(front).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(first).unwrap();
    c.write_all(payload).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.ends_with(payload) {
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn trusted(backend: SocketAddr, extra: &str) -> tollgate::app::Server {
    start(&config(
        &[(backend, 1)],
        &format!(
            "proxy_protocol: {{ send: v2, accept_from: [\"127.0.0.0/8\"] }}\ntimeouts: {{ proxy_header: 300ms }}\n{extra}"
        ),
        "",
        "",
    ))
}

/// The client a trusted header names is the one the backend hears of, v1 or v2 in, with a
/// v2 header's TLVs passed on; a LOCAL header leaves the balancer itself as the client.
#[test]
fn the_named_client_is_the_client() {
    let server = trusted(header_echo("127.0.0.1:0"), "");
    let front = front(&server);
    for version in [Version::V1, Version::V2] {
        let h = header(version, "192.0.2.7:5555", "198.51.100.1:443", &[]);
        let said = through(front, &h, b"payload");
        assert_eq!(
            said, "V2 192.0.2.7:5555 198.51.100.1:443\npayload",
            "{version:?}"
        );
    }
    let tlv = [0x04, 0x00, 0x03, b'a', b'b', b'c'];
    let h = header(Version::V2, "[2001:db8::9]:7", "[2001:db8::1]:443", &tlv);
    let said = through(front, &h, b"x");
    assert_eq!(said, "V2 [2001:db8::9]:7 [2001:db8::1]:443 tlvs=6\nx");
    let mut local = Vec::new();
    proxy_protocol::encode(Version::V2, None, &[], &mut local);
    let mut c = TcpStream::connect(front).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(&local).unwrap();
    c.write_all(b"y").unwrap();
    let me = c.local_addr().unwrap();
    let mut got = vec![0u8; 256];
    let n = c.read(&mut got).unwrap();
    let line = String::from_utf8_lossy(&got[..n]).into_owned();
    assert!(line.starts_with(&format!("V2 {me} {front}\n")), "{line}");
    drop(c);
    server.shutdown();
}

/// ACLs and per-source limits apply to the named client, not to the balancer in front:
/// one connection per source, and 192.0.2.66 denied.
#[test]
fn limits_and_acls_see_the_named_client() {
    let server = trusted(
        header_echo("127.0.0.1:0"),
        "access: { deny: [\"192.0.2.66/32\"] }\nlimits: { per_source: { max_connections: 1 } }",
    );
    let front = front(&server);
    let spec = server.snapshot().listener("front").unwrap().clone();
    let open = |source: &str| {
        let mut c = TcpStream::connect(front).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(&header(Version::V1, source, "198.51.100.1:80", &[]))
            .unwrap();
        c.write_all(b"hi").unwrap();
        let mut buf = [0u8; 128];
        let served = matches!(c.read(&mut buf), Ok(n) if n > 0);
        (c, served)
    };
    let (first, served) = open("192.0.2.7:1000");
    assert!(served);
    let (second, served) = open("192.0.2.7:1001");
    assert!(!served, "a second connection of the same client");
    let (other, served) = open("192.0.2.8:1000");
    assert!(served, "another client through the same balancer");
    let (denied, served) = open("192.0.2.66:1000");
    assert!(!served, "a denied client");
    drop((first, second, other, denied));
    use tollgate::admission::Reason;
    assert_eq!(spec.live.rejected(Reason::SourceLimit).load(Relaxed), 1);
    assert_eq!(spec.live.rejected(Reason::Acl).load(Relaxed), 1);
    assert_eq!(spec.live.rejected_proxy_protocol.load(Relaxed), 0);
    server.shutdown();
}

/// Malformed, slow and missing headers from a trusted source: each connection is closed,
/// none reaches the backend, each is counted, and the server stays up; a header split over
/// several writes within the deadline is fine.
#[test]
fn bad_and_slow_headers_are_closed_before_any_backend() {
    let (backend, reached) = counting_backend();
    let server = trusted(backend, "");
    let front = front(&server);
    let spec = server.snapshot().listener("front").unwrap().clone();
    let mut v2_over = header(Version::V2, "192.0.2.1:1", "192.0.2.2:2", &[]);
    v2_over[14..16].copy_from_slice(&5000u16.to_be_bytes());
    let mut v2_family = header(Version::V2, "192.0.2.1:1", "192.0.2.2:2", &[]);
    v2_family[13] = 0x13;
    let v2_short = header(Version::V2, "192.0.2.1:1", "192.0.2.2:2", &[])[..20].to_vec();
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("not a header", b"GET / HTTP/1.1\r\n\r\n".to_vec(), false),
        (
            "v1 without CRLF",
            [&b"PROXY TCP4 "[..], &[b'1'; 120]].concat(),
            false,
        ),
        (
            "v1 bad port",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n".to_vec(),
            false,
        ),
        ("v2 over the limit", v2_over, false),
        ("v2 unknown family", v2_family, false),
        ("v2 cut short, then silence", v2_short, false),
        ("nothing at all", Vec::new(), false),
        (
            "half a v1 line, then a close",
            b"PROXY TCP4 1.2".to_vec(),
            true,
        ),
    ];
    for (what, bytes, close) in &cases {
        let mut c = TcpStream::connect(front).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        c.write_all(bytes).unwrap();
        if *close {
            c.shutdown(std::net::Shutdown::Write).unwrap();
        }
        let mut buf = [0u8; 64];
        let started = std::time::Instant::now();
        let r = c.read(&mut buf);
        assert!(
            matches!(r, Ok(0))
                || matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "{what}: {r:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{what}: closed late"
        );
    }
    wait_for("every refusal counted", Duration::from_secs(2), || {
        spec.live.rejected_proxy_protocol.load(Relaxed) == cases.len() as u64
    });
    assert_eq!(reached.load(Relaxed), 0, "no backend was touched");
    // Still serving; a header dribbled out in pieces within the deadline is fine.
    let h = header(Version::V1, "192.0.2.9:9", "192.0.2.2:2", &[]);
    let mut c = TcpStream::connect(front).unwrap();
    for piece in h.chunks(7) {
        c.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_for("the dribbled header served", Duration::from_secs(2), || {
        reached.load(Relaxed) == 1
    });
    drop(c);
    server.shutdown();
}

/// From a source not in `accept_from`, a PROXY header is just the client's first bytes: it
/// reaches the backend as payload, and the socket's peer is the client.
#[test]
fn a_header_from_anyone_else_is_payload() {
    let backend = echo_backend();
    let server = start(&config(
        &[(backend, 1)],
        "proxy_protocol: { accept_from: [\"10.0.0.0/8\"] }",
        "",
        "",
    ));
    let front = front(&server);
    let h = header(Version::V1, "192.0.2.7:5555", "198.51.100.1:443", &[]);
    let said = through(front, &h, b"tail");
    assert_eq!(said.as_bytes(), [&h[..], b"tail"].concat());
    server.shutdown();
}

/// HAProxy (`.ci/run` installs it) in front of tollgate with `send-proxy-v2`: tollgate
/// trusts it, and its clients (127.0.0.2 and 127.0.0.3) are limited one by one — one
/// connection each — instead of HAProxy's single address being limited as one source; the
/// backend hears of each client's own address.
#[test]
fn haproxy_in_front_has_its_clients_limited_one_by_one() {
    let server = start(&config(
        &[(header_echo("127.0.0.1:0"), 1)],
        "proxy_protocol: { send: v1, accept_from: [\"127.0.0.1/32\"] }\nlimits: { per_source: { max_connections: 1 } }",
        "",
        "",
    ));
    let tollgate = front(&server);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = format!(
        "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
         frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\n\
         backend b\n  server t {tollgate} send-proxy-v2 source 127.0.0.1\n"
    );
    let cfg_path = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();
    let child = std::process::Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("haproxy is installed (.ci/run installs it)");
    let _haproxy = Terminate(child);
    let haproxy = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for("haproxy listening", Duration::from_secs(10), || {
        TcpStream::connect(haproxy).is_ok()
    });
    let open = |from: &str| {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&sa(&format!("{from}:0")).into()).unwrap();
        socket.connect(&haproxy.into()).unwrap();
        let mut c: TcpStream = socket.into();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"hi").unwrap();
        let mut buf = [0u8; 256];
        let said = match c.read(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(_) => String::new(),
        };
        (c, said)
    };
    let (a, said) = open("127.0.0.2");
    let me = a.local_addr().unwrap();
    assert!(said.starts_with(&format!("V1 {me} ")), "{said:?}");
    let (second, said) = open("127.0.0.2");
    assert_eq!(said, "", "a second connection of 127.0.0.2 is refused");
    let (b, said) = open("127.0.0.3");
    assert!(said.starts_with("V1 127.0.0.3:"), "{said:?}");
    let spec = server.snapshot().listener("front").unwrap().clone();
    use tollgate::admission::Reason;
    assert_eq!(spec.live.rejected(Reason::SourceLimit).load(Relaxed), 1);
    drop((a, second, b));
    server.shutdown();
}
