//! The admin API at the process's descriptor limit. A few descriptors are held in reserve
//! (`sys::FdReserve`): when an accept fails with EMFILE or ENFILE, spares are released one at
//! a time until it succeeds, so `/metrics` and `/readyz` still answer while clients hold
//! every other descriptor. Every admin connection is a [`Conn`], which on drop (however the
//! connection ends: done, timed out, closed to make room) hands its descriptor back to a
//! reserve that is short, in place, instead of closing it: the number is never free for
//! another thread to take.
//!
//! While spares are missing (taken by another thread in the instant between a release and
//! the accept that was to use it) the reserve is refilled every few milliseconds, so that
//! it is whole again as soon as a descriptor comes free. It must not block: the reserve's
//! calls are syscalls that do not wait.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use tracing::warn;

use crate::proxy::throttle::LogThrottle;
use crate::sys::FdReserve;

/// Spare descriptors held for the admin API (plus one the reserve copies them from).
const RESERVED: usize = 4;
/// While spares are missing, how often the reserve tries to take them back. At the limit,
/// descriptors come free only for moments (the data plane accepts a client, cannot connect
/// it, closes it); trying often catches them, so the reserve is whole again by the time the
/// churn stops.
const REFILL_EVERY: Duration = Duration::from_millis(10);
/// Pause after an accept that failed even with the reserve spent.
const RETRY_OUT_OF_DESCRIPTORS: Duration = Duration::from_millis(10);
const RETRY_OTHER: Duration = Duration::from_millis(50);

static ACCEPT_LOG: LogThrottle = LogThrottle::new();

/// The admin listener and its reserve.
pub(super) struct Acceptor {
    listener: TcpListener,
    reserve: Option<Arc<FdReserve>>,
}

/// The reserve, taken when the admin socket is bound: before the workers start, so that a
/// flood of clients at start-up cannot take the descriptors first.
pub(super) fn reserve() -> Option<Arc<FdReserve>> {
    match FdReserve::new(RESERVED) {
        Ok(r) => Some(Arc::new(r)),
        Err(e) => {
            warn!(error = %e, "admin: cannot hold descriptors in reserve; at the open-file limit the admin API will not answer");
            None
        }
    }
}

impl Acceptor {
    pub(super) fn new(listener: TcpListener, reserve: Option<Arc<FdReserve>>) -> Acceptor {
        Acceptor { listener, reserve }
    }

    /// The next connection; accept errors are logged (at most once a second) and retried.
    pub(super) async fn next(&self) -> (Conn, SocketAddr) {
        loop {
            let short = self.reserve.as_ref().is_some_and(|r| r.spares() < RESERVED);
            let accepted = tokio::select! {
                accepted = self.accept() => accepted,
                () = tokio::time::sleep(REFILL_EVERY), if short => continue,
            };
            match accepted {
                Ok(accepted) => return accepted,
                Err(e) => {
                    let pause = if out_of_descriptors(&e) {
                        RETRY_OUT_OF_DESCRIPTORS
                    } else {
                        RETRY_OTHER
                    };
                    if let Some(suppressed) = ACCEPT_LOG.allow() {
                        warn!(error = %e, suppressed, ?pause, "admin: accept failed; retrying");
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Accepts one connection, releasing spares one at a time while the process is out of
    /// descriptors; the error when the reserve is spent too (or for any other failure).
    async fn accept(&self) -> io::Result<(Conn, SocketAddr)> {
        let reserve = self.reserve.as_ref();
        if let Some(r) = reserve {
            // Spares that went elsewhere come back when descriptors can be had again.
            r.refill();
        }
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    let conn = Conn {
                        stream: Some(stream),
                        reserve: reserve.cloned(),
                    };
                    return Ok((conn, peer));
                }
                // The pending connection stays queued; the retry takes the number just freed.
                Err(e) if out_of_descriptors(&e) && reserve.is_some_and(|r| r.release()) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// An admin connection's socket, whose descriptor goes back to the reserve when dropped.
pub(super) struct Conn {
    /// `Some` until drop.
    stream: Option<TcpStream>,
    reserve: Option<Arc<FdReserve>>,
}

impl Conn {
    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "connection dropped"))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let (Some(stream), Some(reserve)) = (self.stream.take(), self.reserve.take()) else {
            return;
        };
        // Out of the runtime's poller first; then the reserve keeps the number or closes it.
        if let Ok(std) = stream.into_std() {
            reserve.recycle(OwnedFd::from(std));
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}
