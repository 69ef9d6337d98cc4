//! One probe of one backend, bounded by the check's timeout: a TCP connect, a send/expect
//! exchange, an HTTP GET (hyper's client, not a hand-written parser), or a UDP datagram
//! whose reply must match (an ICMP port unreachable counts as a failure).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// What to probe; the control plane builds it from the pool's check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Tcp,
    SendExpect {
        send: Vec<u8>,
        expect: Vec<u8>,
    },
    Http {
        path: String,
        host: Option<String>,
        expect_status: Vec<(u16, u16)>,
    },
    Udp {
        send: Vec<u8>,
        expect: Vec<u8>,
    },
}

/// Runs `probe` against `addr` within `timeout`: `Ok(detail)` on a pass, `Err(reason)`.
pub async fn run(probe: &Probe, addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    match tokio::time::timeout(timeout, attempt(probe, addr)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

async fn attempt(probe: &Probe, addr: SocketAddr) -> Result<String, String> {
    match probe {
        Probe::Tcp => {
            TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            Ok("connected".to_owned())
        }
        Probe::SendExpect { send, expect } => {
            let mut s = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            s.write_all(send).await.map_err(|e| format!("send: {e}"))?;
            let got = read_prefix(&mut s, expect.len()).await?;
            expect_prefix(&got, expect)
        }
        Probe::Http {
            path,
            host,
            expect_status,
        } => http(addr, path, host.as_deref(), expect_status).await,
        Probe::Udp { send, expect } => {
            let local: SocketAddr = if addr.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let socket = UdpSocket::bind(local)
                .await
                .map_err(|e| format!("socket: {e}"))?;
            socket
                .connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            socket.send(send).await.map_err(|e| format!("send: {e}"))?;
            let mut buf = vec![0u8; expect.len().max(512)];
            // A connected UDP socket reports ICMP port unreachable as ECONNREFUSED.
            let n = socket
                .recv(&mut buf)
                .await
                .map_err(|e| format!("receive: {e}"))?;
            expect_prefix(&buf[..n], expect)
        }
    }
}

/// Reads until `want` bytes or end of stream.
async fn read_prefix(s: &mut TcpStream, want: usize) -> Result<Vec<u8>, String> {
    let mut got = Vec::with_capacity(want);
    let mut buf = [0u8; 512];
    while got.len() < want {
        let n = s
            .read(&mut buf)
            .await
            .map_err(|e| format!("receive: {e}"))?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(got)
}

fn expect_prefix(got: &[u8], expect: &[u8]) -> Result<String, String> {
    if got.starts_with(expect) {
        Ok("expected reply".to_owned())
    } else {
        let shown = String::from_utf8_lossy(&got[..got.len().min(32)])
            .escape_debug()
            .to_string();
        Err(format!("unexpected reply \"{shown}\""))
    }
}

async fn http(
    addr: SocketAddr,
    path: &str,
    host: Option<&str>,
    expect: &[(u16, u16)],
) -> Result<String, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("http handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let host = host.map_or_else(|| addr.to_string(), str::to_owned);
    let req = Request::get(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "tollgate-health-check")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let result = sender
        .send_request(req)
        .await
        .map_err(|e| format!("http: {e}"));
    driver.abort();
    let status = result?.status().as_u16();
    if expect.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status)) {
        Ok(format!("HTTP {status}"))
    } else {
        Err(format!("HTTP {status}"))
    }
}
