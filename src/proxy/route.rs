//! Which pool a TCP connection goes to: the listener's own, or the one its TLS ClientHello's
//! server name routes to (`sni`). The ClientHello is read and handed back with the pool, to
//! be the first bytes the backend gets: it gets the client's bytes unchanged and terminates
//! TLS itself. A ClientHello that is malformed, not
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

/// Most ClientHellos fit this; a larger one is read on into [`sni::MAX_PEEK`] bytes.
const FIRST_READ: usize = 2048;

/// Where a connection goes, and the bytes read from it on the way that the backend is to
/// get first (the ClientHello, when routed by it; none otherwise).
pub struct Routed {
    pub pool: Arc<Pool>,
    pub first: Vec<u8>,
}

/// The pool for a connection from `peer`; `None`: refused (counted and logged here).
pub async fn pool_for(client: &TcpStream, peer: SocketAddr, spec: &ListenerSpec) -> Option<Routed> {
    let Some(sni) = &spec.sni else {
        return spec.pool.clone().map(|pool| Routed {
            pool,
            first: Vec::new(),
        });
    };
    let mut hello = Vec::new();
    let why = match tokio::time::timeout(sni.peek_timeout, server_name(client, &mut hello)).await {
        Ok(Ok(name)) => match sni.routes.route(name.as_deref()) {
            Some(pool) => {
                return Some(Routed {
                    pool: pool.clone(),
                    first: hello,
                });
            }
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

/// The server name of the ClientHello the client starts with, read into `hello` (which
/// holds exactly the bytes read when this returns a name).
async fn server_name(
    client: &TcpStream,
    hello: &mut Vec<u8>,
) -> Result<Option<String>, PeekError<sni::Invalid>> {
    peek::read_until(
        client,
        hello,
        (FIRST_READ, sni::MAX_PEEK),
        |bytes| match sni::server_name(bytes) {
            Ok(Peeked::Done(name)) => Ok(Some(name)),
            Ok(Peeked::Incomplete) => Ok(None),
            Err(e) => Err(e),
        },
    )
    .await
}
