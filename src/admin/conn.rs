//! One admin connection, from accept to close: hyper's HTTP/1.1 server under the bounds of
//! DESIGN.md §3.4 (header count, head size, header deadline, whole-connection lifetime), and
//! a lingering close.
//!
//! The lingering close is why a client that is still sending a body reads our answer (a 413
//! for a body over the limit) instead of a reset: closing a socket whose receive buffer holds
//! unread bytes makes the kernel send RST, and a client's kernel that gets RST may discard the
//! answer it has not read yet. So once hyper is done, the connection sends FIN and then reads
//! and discards what the client still sends, until it closes, for at most [`LINGER_TIME`] and
//! [`LINGER_BYTES`] (as Apache's and nginx's lingering close do).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::debug;

use super::admission::{Admitted, Slot};
use super::fds::Conn;
use super::{Ctx, routes};

/// Time allowed for a request's headers to arrive.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest an admin connection may live, requests included.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
const MAX_HEADERS: usize = 64;
/// Bytes of request line plus headers.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Longest a closing connection keeps reading what the client still sends.
const LINGER_TIME: Duration = Duration::from_secs(2);
/// Most bytes a closing connection reads and discards: more than any sane client sends
/// after a refusal, little enough to cost the control plane nothing (a few milliseconds).
const LINGER_BYTES: usize = 16 * 1024 * 1024;

/// Serves one admitted connection until it ends, its lifetime is up, or admission closes it
/// to make room for another (`admission.rs`).
pub(super) async fn serve(stream: Conn, peer: SocketAddr, ctx: Arc<Ctx>, admitted: Admitted) {
    let Admitted { ticket, closed, .. } = admitted;
    tokio::select! {
        () = serve_until_closed(stream, peer, ctx, ticket.slot()) => {}
        _ = closed => debug!(%peer, "admin: idle connection closed to make room for a new one"),
    }
    drop(ticket);
}

async fn serve_until_closed(stream: Conn, peer: SocketAddr, ctx: Arc<Ctx>, slot: Slot) {
    // The connection is busy (never closed for room) only while a handler runs.
    let service = service_fn(move |req| {
        let busy = slot.busy();
        let ctx = ctx.clone();
        async move {
            let reply = routes::handle(req, ctx).await;
            drop(busy);
            reply
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD_BYTES.max(8192))
        .serve_connection(TokioIo::new(stream), service)
        .without_shutdown();
    match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
        Ok(Ok(parts)) => linger(parts.io.into_inner()).await,
        Ok(Err(e)) => debug!(%peer, error = %e, "admin: connection ended with an error"),
        Err(_) => debug!(%peer, "admin: connection lifetime reached; closed"),
    }
}

/// Sends FIN, then discards what the client still sends until it closes (or the bounds).
async fn linger(mut stream: Conn) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    let mut left = LINGER_BYTES;
    let deadline = tokio::time::Instant::now() + LINGER_TIME;
    while left > 0 {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => return,
        }
    }
}
