//! One probe of one backend, bounded by the check's timeout: a TCP connect, a send/expect
//! exchange, an HTTP GET (hyper's client, not a hand-written parser), or a UDP datagram
//! whose reply must match (an ICMP port unreachable counts as a failure).
//!
//! A probe that cannot even be attempted because this host is out of something (descriptors,
//! buffers, memory, local ports) says nothing about the backend: it is reported as a
//! [`Failure::Local`], which leaves the backend's health as it was.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::proxy_protocol::{self, Version};

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

/// Why a probe did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The backend failed it: refused, reset, timed out, answered wrong.
    Backend(String),
    /// This host could not make the attempt (EMFILE, ENFILE, ENOBUFS, ENOMEM,
    /// EADDRNOTAVAIL): nothing is known about the backend.
    Local(String),
}

impl Failure {
    pub fn detail(&self) -> &str {
        match self {
            Failure::Backend(d) | Failure::Local(d) => d,
        }
    }
}

/// The result of one probe: `Ok(what was seen)` on a pass.
pub type Outcome = Result<String, Failure>;

/// Failures of this host, not of the backend: out of descriptors, buffers, memory or
/// ephemeral ports.
pub fn is_local(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    )
}

/// An I/O error of step `what`, sorted by whose fault it is.
fn io(what: &'static str) -> impl Fn(std::io::Error) -> Failure {
    move |e| {
        let detail = format!("{what}: {e}");
        if is_local(&e) {
            Failure::Local(detail)
        } else {
            Failure::Backend(detail)
        }
    }
}

/// Runs `probe` against `addr` within `timeout`; a TCP probe starts with a PROXY header of
/// `proxy`'s version when set (`LOCAL` / `UNKNOWN`: a check of the balancer's own, not a
/// relayed client), as HAProxy's `check-send-proxy` does.
pub async fn run(
    probe: &Probe,
    addr: SocketAddr,
    timeout: Duration,
    proxy: Option<Version>,
) -> Outcome {
    match tokio::time::timeout(timeout, attempt(probe, addr, proxy)).await {
        Ok(result) => result,
        Err(_) => Err(Failure::Backend(format!("no answer within {timeout:?}"))),
    }
}

async fn attempt(probe: &Probe, addr: SocketAddr, proxy: Option<Version>) -> Outcome {
    match probe {
        Probe::Tcp => {
            connect(addr, proxy).await?;
            Ok("connected".to_owned())
        }
        Probe::SendExpect { send, expect } => {
            let mut s = connect(addr, proxy).await?;
            s.write_all(send).await.map_err(io("send"))?;
            let got = read_prefix(&mut s, expect.len()).await?;
            expect_prefix(&got, expect)
        }
        Probe::Http {
            path,
            host,
            expect_status,
        } => {
            let stream = connect(addr, proxy).await?;
            http(stream, addr, path, host.as_deref(), expect_status).await
        }
        Probe::Udp { send, expect } => {
            let local: SocketAddr = if addr.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let socket = UdpSocket::bind(local).await.map_err(io("socket"))?;
            socket.connect(addr).await.map_err(io("connect"))?;
            socket.send(send).await.map_err(io("send"))?;
            let mut buf = vec![0u8; expect.len().max(512)];
            // A connected UDP socket reports ICMP port unreachable as ECONNREFUSED.
            let n = socket.recv(&mut buf).await.map_err(io("receive"))?;
            expect_prefix(&buf[..n], expect)
        }
    }
}

/// A TCP connection to `addr`, with the PROXY header written first when asked for.
async fn connect(addr: SocketAddr, proxy: Option<Version>) -> Result<TcpStream, Failure> {
    let mut s = TcpStream::connect(addr).await.map_err(io("connect"))?;
    if let Some(version) = proxy {
        let mut header = Vec::with_capacity(16);
        proxy_protocol::encode(version, None, &[], &mut header);
        s.write_all(&header).await.map_err(io("send"))?;
    }
    Ok(s)
}

/// Reads until `want` bytes or end of stream.
async fn read_prefix(s: &mut TcpStream, want: usize) -> Result<Vec<u8>, Failure> {
    let mut got = Vec::with_capacity(want);
    let mut buf = [0u8; 512];
    while got.len() < want {
        let n = s.read(&mut buf).await.map_err(io("receive"))?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(got)
}

fn expect_prefix(got: &[u8], expect: &[u8]) -> Outcome {
    if got.starts_with(expect) {
        Ok("expected reply".to_owned())
    } else {
        let shown = String::from_utf8_lossy(&got[..got.len().min(32)])
            .escape_debug()
            .to_string();
        Err(Failure::Backend(format!("unexpected reply \"{shown}\"")))
    }
}

async fn http(
    stream: TcpStream,
    addr: SocketAddr,
    path: &str,
    host: Option<&str>,
    expect: &[(u16, u16)],
) -> Outcome {
    let backend = |what: &str, e: &dyn std::fmt::Display| Failure::Backend(format!("{what}: {e}"));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| backend("http handshake", &e))?;
    let driver = tokio::spawn(conn);
    let host = host.map_or_else(|| addr.to_string(), str::to_owned);
    let req = Request::get(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "tollgate-health-check")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        // The path and host were validated with the config; this cannot fail on them.
        .map_err(|e| Failure::Local(format!("request: {e}")))?;
    let result = sender
        .send_request(req)
        .await
        .map_err(|e| backend("http", &e));
    driver.abort();
    let status = result?.status().as_u16();
    if expect.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status)) {
        Ok(format!("HTTP {status}"))
    } else {
        Err(Failure::Backend(format!("HTTP {status}")))
    }
}
