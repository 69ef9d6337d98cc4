//! The accept loop of one worker (its sockets are bound by `bind.rs`).
//!
//! Every worker owns its own `SO_REUSEPORT` socket per bind address, so the kernel spreads
//! connections across workers and no lock is shared on accept. Each accepted connection takes
//! a `max_connections` slot (`slot.rs`; at the cap the loop stops accepting and the kernel
//! queues new clients), and the loop survives resource exhaustion (EMFILE, ENFILE, ENOBUFS,
//! ENOMEM) by pausing with back-off, counts every error and logs at most once a second.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::admission::{LOG_EVERY_SECS, Reason, Refusal};

pub use super::bind::{
    BindKey, BoundSocket, Listening, Transport, bind, bind_any, defer_seconds, ensure_unclaimed,
};
use super::slot::{Slot, WaitingAtCap};
use super::sockets;
use super::tcp::{self, Admitted};
use super::throttle::{LogThrottle, SourceLogFilter};
use super::{DataPlane, Tracker};
use crate::state::ListenerSpec;

/// Refusals are logged once per source per `LOG_EVERY_SECS` (ACL refusals keep no
/// per-source state), and at most a few lines a second overall, so a flood from many
/// addresses cannot flood the log.
static REFUSED_LOG: LogThrottle = LogThrottle::with_budget(10);
static REFUSED_SOURCES: SourceLogFilter = SourceLogFilter::new();

const PAUSE_MIN: Duration = Duration::from_millis(10);
const PAUSE_MAX: Duration = Duration::from_millis(500);

/// The listener spec the socket of `key` serves in the current snapshot, if any.
fn current_spec(plane: &DataPlane, key: &BindKey) -> Option<Arc<ListenerSpec>> {
    key.spec(&plane.snapshot.load()).cloned()
}

/// Accepts until `shutdown` turns true or a published snapshot no longer has this socket's
/// listener and address (a reload removed it), spawning a task per connection on the
/// current (worker) runtime. Returning drops the socket: new connects to it are refused,
/// while connections already accepted carry on.
pub async fn accept_loop(
    bound: BoundSocket,
    plane: Arc<DataPlane>,
    mut shutdown: watch::Receiver<bool>,
    tracker: Tracker,
) {
    let BoundSocket { key, socket } = bound;
    let Listening::Tcp(socket) = socket else {
        warn!(addr = %key.configured(), "a UDP socket was handed to the TCP accept loop");
        return;
    };
    let listener = match TcpListener::from_std(socket) {
        Ok(l) => l,
        Err(e) => {
            warn!(addr = %key.configured(), error = %e, "cannot register listening socket");
            return;
        }
    };
    let mut versions = plane.snapshot.subscribe();
    let mut errors = ErrorLog::default();
    let mut pause = PAUSE_MIN;
    // The spec is looked up again only when a new snapshot has been published.
    let Some(mut spec) = current_spec(&plane, &key) else {
        return;
    };
    defer_accept(&listener, &spec);
    // In the set a binary upgrade hands over for as long as this loop serves the socket.
    let _entered = plane.listening.enter(&key, &listener);
    let mut paused = plane.listening.paused();
    loop {
        let mut handing_over = false;
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => return,
            () = sockets::until(&mut paused, true) => {
                handing_over = true;
                Err(io::Error::from(io::ErrorKind::Interrupted))
            }
            r = listener.accept() => r,
            _ = snapshot_changed(&mut versions) => Err(io::Error::from(io::ErrorKind::Interrupted)),
        };
        if handing_over {
            // A binary upgrade is taking the socket over: accept nothing (the socket stays
            // open, clients queue) until it has, or has failed.
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                () = sockets::until(&mut paused, false) => continue,
            }
        }
        if versions.has_changed().unwrap_or(false)
            || matches!(&accepted, Err(e) if e.kind() == io::ErrorKind::Interrupted)
        {
            versions.borrow_and_update();
            match current_spec(&plane, &key) {
                Some(now) => {
                    spec = now;
                    defer_accept(&listener, &spec);
                }
                None => {
                    // A reload removed this socket. A client accepted just now is still
                    // served, under the spec it arrived with; then the socket closes.
                    if let Ok((client, peer)) = accepted {
                        let at = (&key, &mut shutdown, &versions);
                        admit(client, peer, &spec, &plane, at, &tracker).await;
                    }
                    return;
                }
            }
        }
        match accepted {
            Ok((client, peer)) => {
                pause = PAUSE_MIN;
                let at = (&key, &mut shutdown, &versions);
                if !admit(client, peer, &spec, &plane, at, &tracker).await {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                spec.live.accept_errors.fetch_add(1, Ordering::Relaxed);
                if is_per_connection(&e) {
                    debug!(listener = %spec.name, error = %e, "accept failed for one connection");
                    continue;
                }
                errors.report(&spec.name, &e, pause);
                // Resource exhaustion: the pending connection stays queued in the kernel.
                // Retrying at once would spin, so wait, longer each time it persists.
                tokio::select! {
                    _ = shutdown.wait_for(|stop| *stop) => return,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(PAUSE_MAX);
            }
        }
    }
}

/// An `sni` listener's clients speak first (the ClientHello decides where they go), so
/// its socket hands over a connection only once that has arrived (`TCP_DEFER_ACCEPT`, for
/// at most `peek_timeout`): the task finds the bytes at once instead of waking twice, and
/// a client that connects and sends nothing never takes a task or a slot. Any other
/// listener may serve protocols where the server speaks first: off there.
fn defer_accept(listener: &TcpListener, spec: &ListenerSpec) {
    let seconds = defer_seconds(spec.sni.as_ref().map(|s| s.peek_timeout));
    if let Err(e) = crate::sys::socket::set_defer_accept(listener.as_fd(), seconds) {
        debug!(listener = %spec.name, error = %e, "TCP_DEFER_ACCEPT refused; accepting as usual");
    }
}

/// Admission of one accepted client: the admission policy (ACLs, per-source limits), then a `max_connections` slot, then a
/// task of its own. Returns false when the loop must stop (shutdown, or this listener was
/// removed while waiting for a slot).
async fn admit(
    client: tokio::net::TcpStream,
    peer: SocketAddr,
    spec: &Arc<ListenerSpec>,
    plane: &Arc<DataPlane>,
    (key, shutdown, versions): (&BindKey, &mut watch::Receiver<bool>, &watch::Receiver<u64>),
    tracker: &Tracker,
) -> bool {
    // A trusted balancer in front (`proxy_protocol.accept_from`) is not the client: the
    // client its header names is admitted once the header is in (`tcp::serve`).
    let trusted = spec
        .proxy_accept
        .as_ref()
        .is_some_and(|from| from.matching(peer.ip()).is_some());
    let ticket = match if trusted {
        Ok(None)
    } else {
        spec.admission.admit(peer.ip())
    } {
        Ok(ticket) => ticket,
        Err(refused) => {
            // Dropping `client` closes it at once, before a slot or a backend is touched.
            spec.live
                .rejected(refused.reason)
                .fetch_add(1, Ordering::Relaxed);
            // Limit refusals carry their source's own once-per-interval flag; ACL and
            // table-full refusals have no per-source state, so a fixed filter stands in.
            let first = match refused.reason {
                Reason::RateLimit | Reason::SourceLimit => refused.log,
                // ACL refusals log at debug: unless that is on, they cost nothing more.
                Reason::Acl if !tracing::enabled!(tracing::Level::DEBUG) => false,
                Reason::Acl | Reason::SourceTableFull => {
                    REFUSED_SOURCES.first_in(peer.ip(), LOG_EVERY_SECS)
                }
            };
            if first {
                log_refusal(&spec.name, peer, &refused);
            }
            plane
                .access
                .refused(&spec.name, peer, refused.reason.label());
            return true;
        }
    };
    // The slot is taken after accepting: a permit held while waiting in accept would be
    // unusable by the other workers, and with a small cap they would starve. At the cap the
    // loop waits here, holding this one client, and accepts nothing more until a connection
    // ends — or until a reload removes the listener, which must not leave its socket open.
    let slot = match Slot::try_take(&spec.live) {
        Some(slot) => slot,
        None => match wait_for_slot(spec, plane, key, shutdown, versions).await {
            Some(slot) => slot,
            None => return false,
        },
    };
    spec.live.accepted.fetch_add(1, Ordering::Relaxed);
    let conn = Admitted {
        client,
        peer,
        spec: spec.clone(),
        slot,
        ticket,
        guard: tracker.enter(),
        trusted,
    };
    tokio::spawn(tcp::serve(conn, plane.clone()));
    true
}

fn log_refusal(listener: &str, client: SocketAddr, refused: &Refusal) {
    let Some(suppressed) = REFUSED_LOG.allow() else {
        return;
    };
    let reason = refused.reason.label();
    let rule = refused.rule;
    match refused.reason {
        Reason::Acl => {
            debug!(listener, %client, reason, %rule, suppressed, "source refused; closed");
        }
        Reason::RateLimit | Reason::SourceLimit => {
            info!(listener, %client, reason, %rule, suppressed, "source refused; closed");
        }
        Reason::SourceTableFull => {
            warn!(listener, %client, reason, %rule, suppressed, "source refused: every tracked source is still limited (raise limits.per_source.max_tracked_sources); closed");
        }
    }
}

/// At the cap: waits for a slot, or returns `None` when the loop must stop instead.
async fn wait_for_slot(
    spec: &Arc<ListenerSpec>,
    plane: &Arc<DataPlane>,
    key: &BindKey,
    shutdown: &mut watch::Receiver<bool>,
    versions: &watch::Receiver<u64>,
) -> Option<Slot> {
    // A receiver of our own, so that what this wait sees does not hide a change from the
    // accept loop, which refreshes its spec on it.
    let mut versions = versions.clone();
    let _at_cap = WaitingAtCap::begin(spec);
    loop {
        if let Some(slot) = Slot::try_take(&spec.live) {
            return Some(slot);
        }
        // A listener already removed does not wait: its socket must close now.
        current_spec(plane, key)?;
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return None,
            p = spec.live.slots.clone().acquire_owned() => return match p {
                Ok(p) => Some(Slot::new(p, spec.live.clone())),
                Err(_) => None,
            },
            _ = snapshot_changed(&mut versions) => {
                current_spec(plane, key)?;
            }
        }
    }
}

/// Resolves when a new snapshot is published. Never resolves if the publisher is gone (it
/// lives as long as the data plane), so a closed channel cannot turn into a busy loop.
async fn snapshot_changed(versions: &mut watch::Receiver<u64>) {
    if versions.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Errors that concern only the connection being accepted (it was reset while queued, a
/// firewall refused it, or — as accept(2) documents for Linux — a network error pending on
/// the new socket); the listener is fine and the next accept may succeed at once.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::ECONNRESET
                | libc::EPERM
                | libc::EPROTO
                | libc::EINTR
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
        )
    )
}

/// Logs accept errors at most once a second, with how many were suppressed in between.
#[derive(Default)]
struct ErrorLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    fn report(&mut self, listener: &str, e: &io::Error, pause: Duration) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        warn!(listener, error = %e, suppressed = self.suppressed, pause = ?pause, "accept failed; pausing listener");
        self.last = Some(now);
        self.suppressed = 0;
    }
}
