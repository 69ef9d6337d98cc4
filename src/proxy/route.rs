//! Which pool a TCP connection goes to: the listener's own, or the one its TLS ClientHello's
//! server name routes to (`sni`). The ClientHello is peeked, never read: the backend gets the
//! client's bytes unchanged and terminates TLS itself. A ClientHello that is malformed, not
//! TLS, not complete within `peek_timeout`, or that names no routed server when there is no
//! `default_pool`, closes the connection before any backend is touched, counted as
//! `reason="sni"`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;
use tracing::warn;

use super::peek::{self, PeekError};
use super::throttle::LogThrottle;
use crate::sni::{self, Peeked};
use crate::state::{ListenerSpec, Pool};

static SNI_LOG: LogThrottle = LogThrottle::new();

/// Most ClientHellos fit this; a larger one is peeked again into [`sni::MAX_PEEK`] bytes.
const FIRST_PEEK: usize = 2048;

/// The pool for a connection from `peer`; `None`: refused (counted and logged here).
pub async fn pool_for(
    client: &TcpStream,
    peer: SocketAddr,
    spec: &ListenerSpec,
) -> Option<Arc<Pool>> {
    let Some(sni) = &spec.sni else {
        return spec.pool.clone();
    };
    let why = match tokio::time::timeout(sni.peek_timeout, server_name(client)).await {
        Ok(Ok(name)) => match sni.routes.route(name.as_deref()) {
            Some(pool) => return Some(pool.clone()),
            None => match name {
                Some(name) => format!("no route for `{name}` and no default_pool"),
                None => "a ClientHello without a server name, and no default_pool".to_owned(),
            },
        },
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no complete ClientHello within {:?}", sni.peek_timeout),
    };
    spec.live.rejected_sni.fetch_add(1, Ordering::Relaxed);
    if let Some(suppressed) = SNI_LOG.allow() {
        warn!(listener = %spec.name, client = %peer, error = %why, suppressed, "cannot route by TLS server name; closing client");
    }
    None
}

/// The server name of the ClientHello the client starts with, peeked.
async fn server_name(client: &TcpStream) -> Result<Option<String>, PeekError<sni::Invalid>> {
    /// The first buffer was too small for this ClientHello.
    struct Larger;
    let mut buf = vec![0u8; FIRST_PEEK];
    let first = peek::peek_until(client, &mut buf, |bytes| match sni::server_name(bytes) {
        Ok(Peeked::Done(name)) => Ok(Some(name)),
        Ok(Peeked::Incomplete) if bytes.len() == FIRST_PEEK => Err(Err(Larger)),
        Ok(Peeked::Incomplete) => Ok(None),
        Err(e) => Err(Ok(e)),
    })
    .await;
    match first {
        Ok(name) => Ok(name),
        Err(PeekError::Invalid(Ok(e))) => Err(PeekError::Invalid(e)),
        Err(PeekError::Invalid(Err(Larger))) => {
            buf.resize(sni::MAX_PEEK, 0);
            peek::peek_until(client, &mut buf, |bytes| match sni::server_name(bytes) {
                Ok(Peeked::Done(name)) => Ok(Some(name)),
                Ok(Peeked::Incomplete) => Ok(None),
                Err(e) => Err(e),
            })
            .await
        }
        Err(PeekError::Closed) => Err(PeekError::Closed),
        Err(PeekError::Io(e)) => Err(PeekError::Io(e)),
    }
}
