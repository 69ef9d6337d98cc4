//! The admin HTTP API (DESIGN.md §3.4) on hyper, run by the control plane's own runtime so it
//! can never slow the data plane. This file owns the listening socket and its accept loop.
//! Who gets one of the few connection slots is `admission.rs` (fair: idle connections make
//! room, so `/readyz` always answers); one connection's bounds (header count, size and
//! deadline, lifetime, lingering close) are `conn.rs`; the Host and Origin rules `guard.rs`;
//! routing, handlers and the body cap `routes.rs`; bearer-token checks `auth.rs`; the JSON
//! views `views.rs`.
//!
//! It must not parse HTTP itself, touch sockets of the data plane, or block.

mod admission;
mod auth;
mod conn;
mod guard;
pub mod input;
mod routes;

pub use routes::ROUTES;
mod views;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::control::Handle;
use crate::metrics::Metrics;
use crate::proxy::throttle::LogThrottle;
use admission::{Admission, MAX_CHANGES_IN_FLIGHT};

/// Request bodies are small JSON documents.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;
/// Time allowed for a request body to arrive.
pub(crate) const BODY_TIMEOUT: Duration = Duration::from_secs(5);

static FULL_LOG: LogThrottle = LogThrottle::new();
static DISPLACED_LOG: LogThrottle = LogThrottle::new();

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
    /// Changes being handled (see `routes::may_change`).
    pub changes: Semaphore,
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
        changes: Semaphore::new(MAX_CHANGES_IN_FLIGHT),
    });
    let admission = Arc::new(Admission::default());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!(error = %e, "admin: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(admitted) = admission.admit(peer.ip(), Instant::now()) else {
            if let Some(suppressed) = FULL_LOG.allow() {
                warn!(%peer, suppressed, "admin: every connection is busy; closing new connection");
            }
            continue;
        };
        if let Some(displaced) = admitted.displaced
            && let Some(suppressed) = DISPLACED_LOG.allow()
        {
            info!(%peer, %displaced, suppressed, "admin: connection cap reached; closed the idlest connection of the address holding the most");
        }
        tokio::spawn(conn::serve(stream, peer, ctx.clone(), admitted));
    }
}
