//! Each active check type against real peers that answer right, answer wrong, stay silent
//! or refuse.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::Duration;

use common::*;
use tollgate::health::probe::{Failure, Probe, run};
use tollgate::proxy_protocol::{self, Decoded, Version};

const T: Duration = Duration::from_millis(500);

/// Runs one probe; a failure is the backend's (nothing here runs out of local resources).
fn probe(p: &Probe, addr: SocketAddr) -> Result<String, String> {
    probe_with(p, addr, None)
}

fn probe_with(p: &Probe, addr: SocketAddr, proxy: Option<Version>) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(p, addr, T, proxy)).map_err(|f| match f {
        Failure::Backend(detail) => detail,
        Failure::Local(detail) => panic!("a local failure against a live peer: {detail}"),
    })
}

/// A TCP peer that reads a little, then writes `reply` (or nothing, staying silent).
fn replying(reply: Option<&'static [u8]>) -> SocketAddr {
    backend(move |mut s| {
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf);
        match reply {
            Some(r) => drop(s.write_all(r)),
            None => std::thread::sleep(Duration::from_secs(3)),
        }
    })
}

/// A TCP peer that accepts and never reads or writes (connect succeeds, nothing more).
fn silent() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let held: Vec<_> = l.incoming().take(16).collect();
        std::thread::sleep(Duration::from_secs(10));
        drop(held);
    });
    addr
}

#[test]
fn tcp_check() {
    assert!(probe(&Probe::Tcp, silent()).is_ok());
    let e = probe(&Probe::Tcp, refused_addr()).unwrap_err();
    assert!(e.contains("refused"), "{e}");
}

#[test]
fn send_expect_check() {
    let p = Probe::SendExpect {
        send: b"PING\r\n".to_vec(),
        expect: b"+PONG".to_vec(),
    };
    assert!(probe(&p, replying(Some(b"+PONG\r\n"))).is_ok());
    assert!(
        probe(&p, replying(Some(b"-ERR nope\r\n")))
            .unwrap_err()
            .contains("unexpected reply")
    );
    assert!(
        probe(&p, replying(Some(b"+PO"))).is_err(),
        "a short reply is wrong"
    );
    assert!(probe(&p, replying(None)).unwrap_err().contains("no answer"));
    assert!(probe(&p, refused_addr()).is_err());
}

fn http_peer(status_line: &'static str) -> SocketAddr {
    backend(move |mut s| {
        let mut head = Vec::new();
        let mut buf = [0u8; 512];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8_lossy(&head).to_string();
        // Only the configured path and Host are answered well.
        let status = if text.starts_with("GET /healthz HTTP/1.1")
            && text.to_lowercase().contains("host: svc.internal")
        {
            status_line
        } else {
            "404 Not Found"
        };
        let _ = s.write_all(
            format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .as_bytes(),
        );
    })
}

#[test]
fn http_check() {
    let p = Probe::Http {
        path: "/healthz".into(),
        host: Some("svc.internal".into()),
        expect_status: vec![(200, 399)],
    };
    assert_eq!(probe(&p, http_peer("200 OK")), Ok("HTTP 200".into()));
    assert_eq!(
        probe(&p, http_peer("503 Service Unavailable")),
        Err("HTTP 503".into())
    );
    let wrong_host = Probe::Http {
        path: "/healthz".into(),
        host: Some("other".into()),
        expect_status: vec![(200, 399)],
    };
    assert_eq!(
        probe(&wrong_host, http_peer("200 OK")),
        Err("HTTP 404".into())
    );
    assert!(probe(&p, silent()).unwrap_err().contains("no answer"));
    assert!(probe(&p, refused_addr()).is_err());
    let only_204 = Probe::Http {
        path: "/healthz".into(),
        host: Some("svc.internal".into()),
        expect_status: vec![(204, 204)],
    };
    assert!(probe(&only_204, http_peer("200 OK")).is_err());
}

fn udp_peer(reply: &'static [u8]) -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((_, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(reply, from);
        }
    });
    addr
}

#[test]
fn udp_check() {
    let p = Probe::Udp {
        send: b"status?".to_vec(),
        expect: b"ok".to_vec(),
    };
    assert!(probe(&p, udp_peer(b"ok 42")).is_ok());
    assert!(
        probe(&p, udp_peer(b"bad"))
            .unwrap_err()
            .contains("unexpected reply")
    );
    // Nobody listens: the kernel's ICMP port unreachable fails the check at once.
    let nobody = {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let e = probe(&p, nobody).unwrap_err();
    assert!(e.contains("refused"), "{e}");
    // A peer that never answers: timeout.
    let mute = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert!(
        probe(&p, mute.local_addr().unwrap())
            .unwrap_err()
            .contains("no answer")
    );
}

/// A TCP peer that requires a PROXY header on every connection (as an nginx with `listen
/// ... proxy_protocol` does): it answers `local` to a LOCAL / UNKNOWN header (a check), and
/// closes on anything that is not a header. Then it reads an HTTP request or `ping`, and
/// answers.
fn header_required() -> SocketAddr {
    backend(|mut s| {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 512];
        let len = loop {
            match proxy_protocol::decode(&buf) {
                Ok(Decoded::Done { header, len }) if header.addresses.is_none() => break len,
                Ok(Decoded::Incomplete) => match s.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                },
                _ => return,
            }
        };
        if buf.len() == len {
            let _ = s.read(&mut chunk);
        }
        let _ =
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\npong");
    })
}

/// `health_check.proxy_protocol`: each TCP-based probe starts with a header the backend
/// accepts; without it the same backend fails the check.
#[test]
fn checks_can_start_with_a_proxy_header() {
    let peer = header_required();
    let send_expect = Probe::SendExpect {
        send: b"ping".to_vec(),
        expect: b"HTTP/1.1 200".to_vec(),
    };
    let http = Probe::Http {
        path: "/".into(),
        host: None,
        expect_status: vec![(200, 299)],
    };
    for version in [Version::V1, Version::V2] {
        probe_with(&send_expect, peer, Some(version)).unwrap();
        probe_with(&http, peer, Some(version)).unwrap();
        probe_with(&Probe::Tcp, peer, Some(version)).unwrap();
    }
    assert!(probe(&send_expect, peer).is_err(), "no header, no pass");
    assert!(probe(&http, peer).is_err(), "no header, no pass");
}
