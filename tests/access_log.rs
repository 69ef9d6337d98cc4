//! The access log (`logging.access`), read as an operator's log shipper would: the built
//! binary with `--log-format json`, every line parsed as JSON, one line per TCP connection
//! and per UDP session with what it moved, how long it lasted, why it ended and which side
//! ended it; lines beyond `access_rate` counted in
//! `tollgate_access_log_lines_suppressed_total`; a reload turning it off; connections and
//! sessions still open at the drain deadline logged as `shutdown` with their bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::binary::{self, Running};
use common::udp::{client, exchange, udp_echo};
use common::*;

/// Every access-log line so far, parsed; every line of the log must be JSON.
fn access_lines(lb: &Running) -> Vec<Value> {
    lb.logs()
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|v| v["target"] == "tollgate::access")
        .map(|v| v["fields"].clone())
        .collect()
}

/// Waits for the access-log line of `listener` whose `client` is `client`.
fn line_for(lb: &Running, listener: &str, client: SocketAddr) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let client = client.to_string();
        if let Some(l) = access_lines(lb)
            .into_iter()
            .find(|l| l["listener"] == listener && l["client"] == client.as_str())
        {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "no access-log line for {listener} {client}; logs:\n{}",
            lb.logs().join("\n")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn bound(lb: &Running, listener: &str) -> SocketAddr {
    lb.logged_addr(&["listener bound", &format!("\"listener\":\"{listener}\"")])
}

/// Asserts the fields every line has, and the ones given.
fn assert_line(line: &Value, expect: &[(&str, Value)]) {
    for key in [
        "protocol",
        "listener",
        "client",
        "backend",
        "to_backend",
        "to_client",
        "duration_ms",
        "end",
        "closed_by",
    ] {
        assert!(!line[key].is_null(), "no {key} in {line}");
    }
    assert!(line["duration_ms"].as_f64().unwrap() >= 0.0, "{line}");
    for (key, value) in expect {
        assert_eq!(&line[*key], value, "{key} in {line}");
    }
}

/// A backend that says `hello` and closes first.
fn greeter() -> SocketAddr {
    backend(|mut s| {
        let _ = s.write_all(b"hello");
    })
}

fn yaml(echo: SocketAddr, greeter: SocketAddr, udp: SocketAddr, logging: &str) -> String {
    format!(
        "workers: 2
admin: {{ bind: \"127.0.0.1:0\" }}
logging: {logging}
listeners:
  echo: {{ bind: \"127.0.0.1:0\", pool: echo }}
  idle: {{ bind: \"127.0.0.1:0\", pool: echo, timeouts: {{ idle: 300ms }} }}
  greet: {{ bind: \"127.0.0.1:0\", pool: greet }}
  dead: {{ bind: \"127.0.0.1:0\", pool: dead }}
  denied: {{ bind: \"127.0.0.1:0\", pool: echo, access: {{ deny: [\"127.0.0.0/8\"] }} }}
  behind: {{ bind: \"127.0.0.1:0\", pool: echo, proxy_protocol: {{ accept_from: [\"127.0.0.0/8\"] }} }}
  dns: {{ protocol: udp, bind: \"127.0.0.1:0\", pool: udp, udp: {{ responses: 1 }} }}
  stream: {{ protocol: udp, bind: \"127.0.0.1:0\", pool: udp, udp: {{ session_idle: 300ms }} }}
pools:
  echo: {{ backends: [{{ address: \"{echo}\" }}] }}
  greet: {{ backends: [{{ address: \"{greeter}\" }}] }}
  dead: {{ backends: [{{ address: \"{dead}\" }}] }}
  udp: {{ backends: [{{ address: \"{udp}\" }}] }}
",
        dead = refused_addr()
    )
}

#[test]
fn each_connection_and_session_gets_one_json_line_saying_how_it_ended() {
    let (echo, udp) = (echo_backend(), udp_echo(b"re:"));
    let lb = binary::spawn(
        &yaml(echo, greeter(), udp, "{ access: true, access_rate: none }"),
        None,
    );
    let echo_s = echo.to_string();

    // The client sends, ends its side, and reads the echo: the client's FIN came first.
    let mut c = TcpStream::connect(bound(&lb, "echo")).unwrap();
    c.write_all(b"12345").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"12345");
    let line = line_for(&lb, "echo", c.local_addr().unwrap());
    assert_line(
        &line,
        &[
            ("protocol", "tcp".into()),
            ("backend", echo_s.as_str().into()),
            ("to_backend", 5.into()),
            ("to_client", 5.into()),
            ("end", "closed".into()),
            ("closed_by", "client".into()),
        ],
    );
    assert_eq!(line["message"], "tcp connection");

    // The backend speaks and closes first.
    let mut c = TcpStream::connect(bound(&lb, "greet")).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"hello");
    drop(c.shutdown(Shutdown::Both));
    let line = line_for(&lb, "greet", c.local_addr().unwrap());
    assert_line(
        &line,
        &[
            ("to_backend", 0.into()),
            ("to_client", 5.into()),
            ("end", "closed".into()),
            ("closed_by", "backend".into()),
        ],
    );

    // Nothing moves for the idle timeout: tollgate closes it.
    let mut c = TcpStream::connect(bound(&lb, "idle")).unwrap();
    c.write_all(b"ab").unwrap();
    let mut two = [0u8; 2];
    c.read_exact(&mut two).unwrap();
    assert!(closed_within(&mut c, Duration::from_secs(10)));
    let line = line_for(&lb, "idle", c.local_addr().unwrap());
    assert_line(
        &line,
        &[
            ("to_backend", 2.into()),
            ("to_client", 2.into()),
            ("end", "idle".into()),
            ("closed_by", "tollgate".into()),
        ],
    );
    assert!(line["duration_ms"].as_f64().unwrap() >= 250.0, "{line}");

    // The client resets its connection.
    let c = TcpStream::connect(bound(&lb, "echo")).unwrap();
    let mut w = &c;
    w.write_all(b"xyz").unwrap();
    let mut three = [0u8; 3];
    (&c).read_exact(&mut three).unwrap();
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    let from = c.local_addr().unwrap();
    drop(c);
    let line = line_for(&lb, "echo", from);
    assert_line(
        &line,
        &[("end", "reset".into()), ("closed_by", "client".into())],
    );
    assert!(line["error"].as_str().unwrap().contains("client"), "{line}");

    // No backend answers; an ACL refuses the source.
    for (listener, end) in [("dead", "no_backend"), ("denied", "acl")] {
        let mut c = TcpStream::connect(bound(&lb, listener)).unwrap();
        assert!(closed_within(&mut c, Duration::from_secs(10)), "{listener}");
        let line = line_for(&lb, listener, c.local_addr().unwrap());
        assert_line(
            &line,
            &[
                ("backend", "-".into()),
                ("to_backend", 0.into()),
                ("to_client", 0.into()),
                ("end", end.into()),
                ("closed_by", "tollgate".into()),
            ],
        );
    }

    // Behind a trusted balancer: the line names the client its PROXY header named.
    let mut c = TcpStream::connect(bound(&lb, "behind")).unwrap();
    c.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 80\r\nhi")
        .unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"hi");
    let line = line_for(&lb, "behind", "192.0.2.7:5555".parse().unwrap());
    assert_line(
        &line,
        &[
            ("to_backend", 2.into()),
            ("to_client", 2.into()),
            ("end", "closed".into()),
            ("closed_by", "client".into()),
        ],
    );

    // UDP: a session answered as `udp.responses` says, and one that goes idle.
    let s = client("127.0.0.1");
    let (reply, _) = exchange(&s, bound(&lb, "dns"), b"query");
    assert_eq!(reply, b"re:query");
    let line = line_for(&lb, "dns", s.local_addr().unwrap());
    assert_line(
        &line,
        &[
            ("protocol", "udp".into()),
            ("backend", udp.to_string().into()),
            ("to_backend", 5.into()),
            ("to_client", 8.into()),
            ("to_backend_datagrams", 1.into()),
            ("to_client_datagrams", 1.into()),
            ("end", "answered".into()),
            ("closed_by", "backend".into()),
        ],
    );
    assert_eq!(line["message"], "udp session");
    let s = client("127.0.0.1");
    let stream = bound(&lb, "stream");
    exchange(&s, stream, b"one");
    exchange(&s, stream, b"two!");
    let line = line_for(&lb, "stream", s.local_addr().unwrap());
    assert_line(
        &line,
        &[
            ("to_backend", 7.into()),
            ("to_client", 13.into()),
            ("to_backend_datagrams", 2.into()),
            ("to_client_datagrams", 2.into()),
            ("end", "idle".into()),
            ("closed_by", "tollgate".into()),
        ],
    );

    // One line each, nothing more.
    assert_eq!(access_lines(&lb).len(), 9, "{:#?}", access_lines(&lb));
}

fn suppressed(admin: SocketAddr) -> u64 {
    let body = common::http::get(admin, "/metrics").body;
    let line = body
        .lines()
        .find(|l| l.starts_with("tollgate_access_log_lines_suppressed_total "))
        .unwrap_or_else(|| panic!("no suppressed counter in\n{body}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn lines_beyond_the_rate_are_counted_and_a_reload_turns_the_log_off() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    let (echo, udp) = (echo_backend(), udp_echo(b""));
    // A burst of 3 lines, then one every 20 minutes: the connections below take far less.
    let file = |logging: &str| std::fs::write(&path, yaml(echo, greeter(), udp, logging)).unwrap();
    file("{ access: true, access_rate: 3/h }");
    let lb = binary::spawn_file(&path);
    let admin = lb.logged_addr(&["admin API listening"]);
    let front = bound(&lb, "echo");
    const N: u64 = 40;
    for i in 0..N {
        let payload = [i as u8; 4];
        assert_eq!(round_trip(front, &payload).unwrap(), payload);
    }
    wait_for(
        "every connection written or counted",
        Duration::from_secs(10),
        || access_lines(&lb).len() as u64 + suppressed(admin) == N,
    );
    let written = access_lines(&lb).len() as u64;
    assert_eq!(written, 3);
    assert_eq!(suppressed(admin), N - written);

    // Off: connections end without a line, and none is counted as suppressed either.
    file("{ access: false }");
    lb.signal(libc::SIGHUP);
    lb.wait_log("config reloaded", Duration::from_secs(10));
    for _ in 0..5 {
        round_trip(front, b"off").unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(access_lines(&lb).len() as u64, written);
    assert_eq!(suppressed(admin), N - written);
}

#[test]
fn what_is_still_open_at_the_drain_deadline_is_logged_as_shutdown_with_its_bytes() {
    let (echo, udp) = (echo_backend(), udp_echo(b""));
    let config = yaml(echo, greeter(), udp, "{ access: true }")
        .replace(
            "workers: 2",
            "workers: 2\nshutdown: { drain_timeout: 300ms }",
        )
        .replace("session_idle: 300ms", "session_idle: 60s");
    let mut lb = binary::spawn(&config, None);
    let mut c = TcpStream::connect(bound(&lb, "echo")).unwrap();
    c.write_all(&[7; 1000]).unwrap();
    let mut back = [0u8; 1000];
    c.read_exact(&mut back).unwrap();
    let s = client("127.0.0.1");
    exchange(&s, bound(&lb, "stream"), b"open");
    lb.signal(libc::SIGTERM);
    assert!(lb.wait_exit(Duration::from_secs(10)).success());
    let line = line_for(&lb, "echo", c.local_addr().unwrap());
    assert_line(
        &line,
        &[
            ("to_backend", 1000.into()),
            ("to_client", 1000.into()),
            ("end", "shutdown".into()),
            ("closed_by", "tollgate".into()),
        ],
    );
    let line = line_for(&lb, "stream", s.local_addr().unwrap());
    assert_line(
        &line,
        &[
            ("to_backend", 4.into()),
            ("to_client", 4.into()),
            ("end", "shutdown".into()),
        ],
    );
}
