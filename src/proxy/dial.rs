//! Dialing a backend: a non-blocking connect within the connect timeout, waiting out a
//! short shortage of this host's resources (descriptors, buffers, ephemeral ports) instead
//! of failing the client, and telling a failure of this host from one of the backend (only
//! the latter counts against the backend's health).

use std::net::SocketAddr;

use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::state::ConnectFailure;

/// Why a connect attempt failed: on this host (no socket could be made), at the backend, or
/// the backend did not answer before the deadline.
pub(super) enum Dial {
    Local(std::io::Error),
    Backend(std::io::Error),
    TimedOut,
}

/// Dials `addr` until `deadline`. While the host is out of descriptors or buffers it waits
/// (with back-off) and tries again, so a short exhaustion delays the client instead of
/// failing it; if the deadline passes that way, the local error is what is reported.
pub(super) async fn dial_until(
    addr: SocketAddr,
    deadline: tokio::time::Instant,
) -> Result<TcpStream, Dial> {
    let mut pause = std::time::Duration::from_millis(10);
    loop {
        match tokio::time::timeout_at(deadline, dial(addr)).await {
            Err(_) => return Err(Dial::TimedOut),
            Ok(Err(Dial::Local(e))) if is_local(&e) => {
                if tokio::time::Instant::now() + pause >= deadline {
                    return Err(Dial::Local(e));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(200));
            }
            Ok(other) => return other,
        }
    }
}

pub(super) fn failure_reason(e: &std::io::Error) -> ConnectFailure {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => ConnectFailure::Refused,
        Some(libc::ETIMEDOUT) => ConnectFailure::Timeout,
        Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN | libc::ENETDOWN) => {
            ConnectFailure::Unreachable
        }
        _ => ConnectFailure::Other,
    }
}

/// Failures of this host, not of the backend, that pass: out of descriptors, buffers,
/// memory, or ephemeral ports (EADDRNOTAVAIL). The dial waits and retries on them.
fn is_local(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    )
}

/// Connects to `addr`: a non-blocking socket (one `socket` call with the flag) with
/// `TCP_NODELAY`, `connect`, then the writable event. A refused or reset connect raises the
/// error and hang-up flags with it, so `SO_ERROR` is read only then, not after every connect.
async fn dial(addr: SocketAddr) -> Result<TcpStream, Dial> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )
    .map_err(Dial::Local)?;
    socket.set_tcp_nodelay(true).map_err(Dial::Local)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(classify(e)),
    }
    let stream = TcpStream::from_std(socket.into()).map_err(Dial::Local)?;
    let ready = stream
        .ready(Interest::WRITABLE)
        .await
        .map_err(Dial::Local)?;
    // Readiness asked for WRITABLE carries WRITABLE and WRITE_CLOSED only; a failed connect
    // (EPOLLERR | EPOLLHUP) shows as write-closed.
    if ready.is_write_closed() {
        let e = match stream.take_error() {
            Ok(Some(e)) | Err(e) => e,
            Ok(None) => std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        };
        return Err(classify(e));
    }
    Ok(stream)
}

fn classify(e: std::io::Error) -> Dial {
    if is_local(&e) {
        Dial::Local(e)
    } else {
        Dial::Backend(e)
    }
}
