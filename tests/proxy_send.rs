//! `proxy_protocol.send` through the real server on loopback: each backend connection
//! starts with a v1 or v2 PROXY header naming the client's address and port and the
//! address it reached, then the client's bytes unchanged; IPv4 and IPv6; the config
//! refuses v1 on UDP listeners and says which values exist.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::proxy::header_echo;
use common::*;
use tollgate::proxy_protocol::Version;

fn ask(front: SocketAddr, payload: &[u8]) -> (SocketAddr, String) {
    let mut c = TcpStream::connect(front).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(payload).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.ends_with(payload) || !got.contains(&b'\n') {
        let n = c.read(&mut chunk).unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    (c.local_addr().unwrap(), String::from_utf8(got).unwrap())
}

#[test]
fn each_backend_connection_starts_with_the_clients_addresses() {
    for (version, name) in [(Version::V1, "v1"), (Version::V2, "v2")] {
        let backend = header_echo("127.0.0.1:0");
        let server = sending(backend, name);
        let front = front(&server);
        for payload in [&b"hello"[..], &[0u8; 3000][..]] {
            let (me, said) = ask(front, payload);
            let line = format!("{version:?} {me} {front}\n");
            assert!(
                said.starts_with(&line),
                "{name}: {said:?} (wanted {line:?})"
            );
            assert_eq!(
                &said.as_bytes()[line.len()..],
                payload,
                "{name}: the bytes after it"
            );
        }
        server.shutdown();
    }
}

#[test]
fn ipv6_clients_are_sent_as_ipv6() {
    let Ok(probe) = TcpListener::bind("[::1]:0") else {
        panic!("this machine has no IPv6 loopback; the test needs ::1");
    };
    drop(probe);
    for name in ["v1", "v2"] {
        let backend = header_echo("127.0.0.1:0");
        let yaml = config(
            &[(backend, 1)],
            &format!("proxy_protocol: {{ send: {name} }}"),
            "",
            "",
        )
        .replace("\"127.0.0.1:0\"\n    pool", "\"[::1]:0\"\n    pool");
        let server = start(&yaml);
        let front = front(&server);
        assert!(front.is_ipv6());
        let (me, said) = ask(front, b"six");
        assert!(
            said.contains(&format!(" {me} {front}\n")),
            "{name}: {said:?}"
        );
        server.shutdown();
    }
}

#[test]
fn config_says_where_send_applies_and_what_it_takes() {
    let udp = "listeners:\n  dns:\n    protocol: udp\n    bind: \"127.0.0.1:0\"\n    pool: p\n    proxy_protocol: { send: v1 }\npools:\n  p:\n    backends: [{ address: \"127.0.0.1:53\" }]\n";
    let e = tollgate::config::load_str(udp, "t.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("listeners.dns.proxy_protocol.send") && e.contains("takes a v2 header"),
        "{e}"
    );
    let bad = config(
        &[(refused_addr(), 1)],
        "proxy_protocol: { send: v3 }",
        "",
        "",
    );
    let e = tollgate::config::load_str(&bad, "t.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("`v3` is not one of: none, v1, v2"), "{e}");
    let good = config(
        &[(refused_addr(), 1)],
        "proxy_protocol: { send: v1 }",
        "",
        "",
    );
    let c = tollgate::config::load_str(&good, "t.yaml").unwrap();
    let json = c.to_json();
    assert_eq!(
        json["listeners"][0]["proxy_protocol"]["send"], "v1",
        "{json}"
    );

    let check = |hc: &str| {
        let yaml = config(
            &[(refused_addr(), 1)],
            "",
            &format!("health_check: {hc}"),
            "",
        );
        tollgate::config::load_str(&yaml, "t.yaml").map(|c| c.to_json())
    };
    let json = check("{ type: http, proxy_protocol: v2 }").unwrap();
    assert_eq!(
        json["pools"][0]["health_check"]["proxy_protocol"], "v2",
        "{json}"
    );
    let e = check("{ type: udp, send: x, expect: y, proxy_protocol: v1 }")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("health_check.proxy_protocol: a udp check sends datagrams"),
        "{e}"
    );
    let e = check("{ proxy_protocol: yes }").unwrap_err().to_string();
    assert!(e.contains("not one of: none, v1, v2"), "{e}");
}

/// tollgate in front of `backend`, sending `version` ("v1", "v2") headers.
fn sending(backend: SocketAddr, version: &str) -> tollgate::app::Server {
    start(&config(
        &[(backend, 1)],
        &format!("proxy_protocol: {{ send: {version} }}"),
        "",
        "",
    ))
}

/// nginx (`.ci/run` installs it) as the backend, with `listen ... proxy_protocol`, answers
/// each connection with the addresses the header gave it: the client's and the one it
/// reached, from tollgate's v1 and v2 headers alike.
#[test]
fn nginx_reads_the_clients_address_from_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = format!(
        "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\ndaemon off;\nworker_processes 1;\n\
         pid {dir}/nginx.pid;\nerror_log stderr warn;\nevents {{ worker_connections 64; }}\n\
         stream {{\n  server {{\n    listen 127.0.0.1:{port} proxy_protocol;\n\
         \x20   return \"$proxy_protocol_addr $proxy_protocol_port $proxy_protocol_server_addr $proxy_protocol_server_port\\n\";\n  }}\n}}\n",
        dir = dir.path().display()
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = std::process::Command::new("nginx")
        .arg("-c")
        .arg(&conf_path)
        .arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg("stderr")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nginx is installed (.ci/run installs nginx-light and libnginx-mod-stream)");
    let _nginx = Terminate(child);
    let backend = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for("nginx listening", Duration::from_secs(10), || {
        TcpStream::connect(backend).is_ok()
    });
    for name in ["v1", "v2"] {
        let server = sending(backend, name);
        let front = front(&server);
        let mut c = TcpStream::connect(front).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut said = String::new();
        c.read_to_string(&mut said).unwrap();
        let me = c.local_addr().unwrap();
        let want = format!(
            "{} {} {} {}\n",
            me.ip(),
            me.port(),
            front.ip(),
            front.port()
        );
        assert_eq!(said, want, "{name}");
        // Closed before the stop, or the drain would wait for this half-closed client.
        drop(c);
        server.shutdown();
    }
}
