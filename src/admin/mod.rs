//! The admin HTTP API (DESIGN.md §3.4) on hyper, run by the control plane's own runtime so it
//! can never slow the data plane. This file owns the listening socket and its accept loop,
//! restarted should it ever end. Who gets one of the few connection slots is
//! `admission.rs` (fair: idle connections make room, so `/readyz` always answers); accepting
//! at the descriptor limit, from a reserve, is `fds.rs`; one connection's bounds (header
//! count, size and deadline, lifetime, lingering close) are `conn.rs`; the Host and Origin
//! rules `guard.rs`; routing, handlers and the body cap `routes.rs`; bearer-token checks
//! `auth.rs`; the JSON views `views.rs`.
//!
//! It must not parse HTTP itself, touch sockets of the data plane, or block.

mod admission;
mod auth;
mod conn;
mod fds;
mod guard;
pub mod input;
mod routes;

pub use routes::ROUTES;
mod views;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::{error, info, warn};

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

/// The admin socket, bound before any worker starts (so a bad address fails the start), and
/// the descriptors held in reserve for it.
pub struct Socket {
    listener: std::net::TcpListener,
    reserve: Option<Arc<crate::sys::FdReserve>>,
}

impl Socket {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Another descriptor for the same socket (a binary upgrade hands it over).
    pub fn duplicate(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        std::os::fd::AsFd::as_fd(&self.listener).try_clone_to_owned()
    }
}

/// Binds the admin socket and takes its reserve of descriptors.
pub fn bind(addr: SocketAddr) -> std::io::Result<Socket> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(Socket {
        listener,
        reserve: fds::reserve(),
    })
}

/// Takes over an admin socket bound by the process that upgraded to this one.
pub fn adopt(listener: std::net::TcpListener) -> std::io::Result<Socket> {
    listener.set_nonblocking(true)?;
    Ok(Socket {
        listener,
        reserve: fds::reserve(),
    })
}

/// Whether the admin API still accepts, once a binary upgrade hands its socket over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminOff {
    Serving,
    /// Asked to stop accepting.
    Asked,
    /// Accepts nothing more (requests already accepted are still answered), until the
    /// handover settles: back to `Serving` if the new process died, else `Gone`.
    Stopped,
    /// The new process serves for good: the admin API ends once its requests are answered.
    Gone,
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

/// The running admin API: what its accept loop needs, kept across restarts of that loop.
struct Server {
    acceptor: fds::Acceptor,
    admission: Arc<Admission>,
    ctx: Arc<Ctx>,
    /// Connections being served, so that a handed-over API answers what it accepted.
    conns: crate::proxy::Tracker,
}

/// How long a handed-over admin API waits for the requests it had accepted (the upgrade's
/// own among them) to be answered.
const HANDOVER_GRACE: Duration = Duration::from_secs(2);

/// Serves the admin API until the future is dropped, or until `off` is asked (a binary
/// upgrade handed the socket to the new process: from then on only it accepts, while
/// requests already accepted here, the upgrade's own among them, are answered), and the
/// handover settles (`Gone`); if the new process died first (`Serving` again), it accepts
/// again. The accept
/// loop runs in a task of its own; should it ever end (a bug), it is logged and started
/// again in a second on the same socket, so one bad request cannot take the operator's view
/// away for good. (Nothing is duplicated to restart: at the open-file limit a `dup` would
/// fail.)
pub async fn serve(socket: Socket, control: Handle, off: Arc<watch::Sender<AdminOff>>) {
    let mut asked = off.subscribe();
    let listener = match TcpListener::from_std(socket.listener) {
        Ok(l) => l,
        Err(e) => {
            error!(error = %e, "admin: cannot register the listening socket; no admin API");
            return;
        }
    };
    let bind = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            error!(error = %e, "admin: the listening socket has no address; no admin API");
            return;
        }
    };
    let metrics = match Metrics::new(control.clone()) {
        Ok(m) => m,
        Err(e) => {
            error!(error = %e, "admin: cannot set up metrics; no admin API");
            return;
        }
    };
    let server = Arc::new(Server {
        acceptor: fds::Acceptor::new(listener, socket.reserve),
        admission: Arc::new(Admission::default()),
        ctx: Arc::new(Ctx {
            control,
            metrics,
            bind,
            changes: Semaphore::new(MAX_CHANGES_IN_FLIGHT),
        }),
        conns: crate::proxy::Tracker::default(),
    });
    loop {
        let mut task = tokio::spawn(accept_loop(server.clone()));
        let ended = tokio::select! {
            ended = &mut task => ended,
            () = handed_over(&mut asked) => {
                task.abort();
                let _ = (&mut task).await;
                // Unless the handover has settled meanwhile.
                off.send_if_modified(|o| {
                    let asked = *o == AdminOff::Asked;
                    if asked {
                        *o = AdminOff::Stopped;
                    }
                    asked
                });
                info!("admin API handed over to the new process; no longer accepting here");
                let _ = asked
                    .wait_for(|o| matches!(o, AdminOff::Serving | AdminOff::Gone))
                    .await;
                if *asked.borrow() == AdminOff::Serving {
                    info!("admin API accepting again: the new process died before the handover settled");
                    continue;
                }
                let _ = tokio::time::timeout(HANDOVER_GRACE, server.conns.wait_idle()).await;
                return;
            }
        };
        let why = match ended {
            Ok(()) => "it returned".to_owned(),
            Err(e) => format!("it panicked: {e}"),
        };
        error!(
            why,
            "the admin API stopped unexpectedly; restarting it in 1 s"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Resolves once the admin API is asked to stop accepting.
async fn handed_over(off: &mut watch::Receiver<AdminOff>) {
    let _ = off.wait_for(|o| *o != AdminOff::Serving).await;
}

async fn accept_loop(server: Arc<Server>) {
    loop {
        let (stream, peer) = server.acceptor.next().await;
        let Some(admitted) = server.admission.admit(peer.ip(), Instant::now()) else {
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
        let serving = server.conns.enter();
        let ctx = server.ctx.clone();
        tokio::spawn(async move {
            conn::serve(stream, peer, ctx, admitted).await;
            drop(serving);
        });
    }
}
