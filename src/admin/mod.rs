//! The admin HTTP API (DESIGN.md §3.4) on hyper, run by the control plane's own runtime so it
//! can never slow the data plane. This file owns the listening socket and the bounds on
//! every connection: a small connection cap, header count and size, a header deadline, a
//! body cap and a whole-connection lifetime. Routing and handlers are in `routes.rs`,
//! bearer-token checks in `auth.rs`, the JSON views in `views.rs`.
//!
//! It must not parse HTTP itself, touch sockets of the data plane, or block.

mod auth;
mod conn;
mod guard;
pub mod input;
mod routes;

pub use routes::ROUTES;
mod views;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::control::Handle;
use crate::metrics::Metrics;
use crate::proxy::throttle::LogThrottle;

/// Concurrent admin connections; more are closed at once.
const MAX_CONNECTIONS: usize = 32;
/// Concurrent admin connections from one address, so that one client cannot take every slot
/// (and leave `/readyz` unanswered for the health checker that withdraws this instance).
const MAX_PER_PEER: usize = 8;
/// Request bodies are small JSON documents.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;
/// Time allowed for a request body to arrive.
pub(crate) const BODY_TIMEOUT: Duration = Duration::from_secs(5);

static OVER_CAP_LOG: LogThrottle = LogThrottle::new();

type PeerCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// One of a peer's [`MAX_PER_PEER`] admin connections; released on drop.
struct PeerSlot {
    counts: PeerCounts,
    ip: IpAddr,
}

impl PeerSlot {
    fn take(counts: &PeerCounts, ip: IpAddr) -> Option<PeerSlot> {
        let mut map = counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(ip).or_insert(0);
        if *n >= MAX_PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Binds the admin socket (before any worker starts, so a bad address fails the start).
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// What every admin request can reach.
pub(crate) struct Ctx {
    pub control: Handle,
    pub metrics: Metrics,
    /// The address the admin socket is bound to (its real port): what `Host` must name.
    pub bind: SocketAddr,
}

/// Serves the admin API until the future is dropped.
pub async fn serve(listener: std::net::TcpListener, control: Handle) {
    let (listener, bind) = match TcpListener::from_std(listener).and_then(|l| {
        let bind = l.local_addr()?;
        Ok((l, bind))
    }) {
        Ok(bound) => bound,
        Err(e) => {
            warn!(error = %e, "admin: cannot register the listening socket");
            return;
        }
    };
    let metrics = match Metrics::new(control.clone()) {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, "admin: cannot set up metrics");
            return;
        }
    };
    let ctx = Arc::new(Ctx {
        control,
        metrics,
        bind,
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_peer: PeerCounts = Arc::new(Mutex::new(HashMap::new()));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!(error = %e, "admin: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (Ok(permit), Some(peer_slot)) = (
            slots.clone().try_acquire_owned(),
            PeerSlot::take(&per_peer, peer.ip()),
        ) else {
            if let Some(suppressed) = OVER_CAP_LOG.allow() {
                warn!(%peer, suppressed, "admin: connection cap reached; closing new connection");
            }
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            conn::serve(stream, peer, ctx).await;
            drop((permit, peer_slot));
        });
    }
}
