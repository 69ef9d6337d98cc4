//! The life of one TCP connection: a trusted balancer's PROXY header first when it comes
//! from one (`proxied.rs`), the pool (the listener's, or by the TLS server name:
//! `route.rs`), a backend from it, connect (with timeout, then the next candidate), the
//! PROXY header to the backend when configured, forward both ways, account (a connection a
//! failed leg ended counts as aborted, by side and failure), and log once when it ends
//! (and its access-log line, `access_log.rs`, when that is on).
//!
//! The listener spec (and through it the snapshot's pool and every backend of its generation)
//! is held only until the backend answers; the rest of the connection keeps only what it
//! needs (see [`Connected`]), so a long-lived connection does not keep an old generation
//! alive across reloads and DNS changes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::access_log::{TcpEnd, TcpRecord};
use super::copy::{self, ForwardError, Side, Start, Transfer};
use super::dial::{Dial, dial_until, failure_reason};
use super::resume;
use super::throttle::LogThrottle;

static NO_BACKEND_LOG: LogThrottle = LogThrottle::new();
static CONNECT_FAILED_LOG: LogThrottle = LogThrottle::new();
static LOCAL_LOG: LogThrottle = LogThrottle::new();
static BACKEND_ERROR_LOG: LogThrottle = LogThrottle::new();
use super::{DataPlane, PassiveDown, TrackerGuard, passive, proxied, route};
use crate::proxy_protocol;
use crate::state::{Backend, ConnectFailure, Failure, ListenerLive, ListenerSpec, Pool};

/// Everything a connection task owns; dropping it releases the listener slot and the
/// per-source count, and marks the
/// connection finished for the drain.
pub struct Admitted {
    pub client: TcpStream,
    pub peer: SocketAddr,
    /// Held until the backend answers, then dropped (see [`Connected`]).
    pub spec: Arc<ListenerSpec>,
    pub slot: super::slot::Slot,
    /// Its place among its source's open connections, when limited per source.
    pub ticket: Option<crate::admission::Ticket>,
    pub guard: TrackerGuard,
    /// From an `accept_from` source: a PROXY header comes first, and the client it names is
    /// admitted then (`ticket` is `None` until that).
    pub trusted: bool,
}

/// What a connection keeps of its listener spec once the backend answered: the listener's
/// name for its log line, the chosen backend (its address and live counters), and the idle
/// timeout. Not the spec itself: that would pin the snapshot's whole pool (a Maglev pool
/// holds a 256 KiB table) and every backend of its generation for as long as the connection
/// lives. One backend is a few words, and its counters are kept across generations anyway.
struct Connected {
    listener: Arc<str>,
    backend: Arc<Backend>,
    idle: Duration,
    /// `proxy_protocol.send`: the header to write to the backend first.
    proxy: Option<proxy_protocol::Version>,
}

/// Serves one connection to its end. No tracing span is made for it: a span costs an
/// allocation and field formatting per connection even when nothing is logged, so the few
/// (throttled) log lines name the listener, client and backend themselves.
///
/// The task's size is every idle connection's memory, so the future is written to keep it
/// small: an `async` block that uses `conn`'s fields where they are (an `async fn` would
/// keep its argument and the locals moved out of it side by side for the connection's
/// whole life), and the bytes sent first live in a block that ends before the forwarding.
/// That brings tokio's task for it from 1280 to 1024 bytes (`-Zprint-type-sizes`).
#[allow(clippy::manual_async_fn)] // the `async fn` it suggests is the larger form above
pub fn serve(mut conn: Admitted, plane: Arc<DataPlane>) -> impl Future<Output = ()> + Send {
    async move {
        // Written when it drops, however the connection ends; nothing when the log is off.
        let mut record = plane.access.tcp(&conn.spec.name, conn.peer);
        // From a trusted balancer: its header names the client, who is admitted now. Boxed,
        // as only these connections need the reading's state.
        let mut origin = None;
        if conn.trusted {
            match Box::pin(proxied::accept(&conn.client, conn.peer, &conn.spec)).await {
                Ok((client, header, ticket)) => {
                    record.client(client);
                    conn.peer = client;
                    conn.ticket = ticket;
                    origin = Some(header);
                }
                Err(why) => return record.end(TcpEnd::Refused(why)),
            }
        }
        // Routing, connecting and the first bytes, in a block: what only they need (the pool,
        // the ClientHello, the PROXY header's origin) is gone from the task before the
        // forwarding starts.
        let (
            live,
            Connected {
                listener,
                backend,
                idle,
                ..
            },
            upstream,
            from_client,
        ) = {
            // The pool: the listener's, or by the ClientHello's server name (read, and boxed,
            // as only `sni` listeners need that state). `first`: the ClientHello so read.
            let routed = match &conn.spec.sni {
                None => conn.spec.pool.clone().map(|pool| route::Routed {
                    pool,
                    first: Vec::new(),
                }),
                Some(_) => Box::pin(route::pool_for(&conn.client, conn.peer, &conn.spec)).await,
            };
            let Some(route::Routed { pool, first }) = routed else {
                return record.end(TcpEnd::Refused("sni"));
            };
            let live = Active::enter(conn.spec.live.clone());
            // The client socket has TCP_NODELAY already: it inherits it from the listening
            // socket. The connect phase (timer, dial, retries) is boxed: it is larger than the
            // forwarding phase, and unboxed it would set the size of every connection's task
            // for its whole life. It takes the spec by value and drops it when it ends.
            let connecting = Box::pin(connect(conn.spec, pool, conn.peer, &plane.failing));
            let (connected, upstream) = match connecting.await {
                Ok(connected) => connected,
                Err(end) => return record.end(end),
            };
            record.backend(connected.backend.address);
            // What the backend gets before the forwarding starts: the PROXY header, then the
            // bytes read from the client to route it, in one write. Those count as moved to
            // the backend.
            let from_client = first.len() as u64;
            if connected.proxy.is_some() || !first.is_empty() {
                let who = (&*connected.listener, conn.peer, connected.backend.address);
                let sent = send_first(
                    (&conn.client, &upstream),
                    first,
                    (connected.proxy, origin),
                    connected.idle,
                    who,
                );
                if let Err((end, e)) = Box::pin(sent).await {
                    return record.failed(end, &e);
                }
            }
            (live, connected, upstream, from_client)
        };
        let stats = &*backend.stats;
        stats.connections.fetch_add(1, Ordering::Relaxed);
        stats.active.fetch_add(1, Ordering::Relaxed);
        let _backend_active = scopeguard(|| {
            stats.active.fetch_sub(1, Ordering::Relaxed);
        });
        let legs = (&conn.client, &upstream);
        let counters = (stats, record.tally());
        let (result, moved) = copy::forward(
            legs,
            Start::Fresh { sent: from_client },
            idle,
            plane.mode(),
            &plane.pipes,
            counters,
            Some(&plane.handoff),
        )
        .await;
        if let Err(ForwardError::Frozen(frozen)) = result {
            let state = resume::state(&frozen, &listener, conn.peer, &backend, &mut record);
            let legs = (conn.client, upstream);
            return resume::hand_off(legs, *frozen, state, Some(conn.guard), &plane);
        }
        ended(
            &result,
            moved,
            &mut record,
            &live,
            (&listener, conn.peer, backend.address),
        );
        // The line is written before the drain can see this connection finished.
        drop(record);
        drop(conn.slot);
        drop(conn.ticket);
        drop(conn.guard);
    }
}

/// Accounts for a forwarding that ended (not frozen): the access-log line's end, the
/// listener's aborted count when a leg failed, and the connection's log line.
pub(super) fn ended(
    result: &Result<(), ForwardError>,
    moved: Transfer,
    record: &mut TcpRecord<'_>,
    live: &Active,
    who: Who<'_>,
) {
    match result {
        Ok(()) => record.end(TcpEnd::Closed),
        Err(ForwardError::Idle { .. }) => record.end(TcpEnd::Idle),
        Err(e @ ForwardError::Io { side, source, .. }) => {
            let end = match e.aborted() {
                Some((_, Failure::Reset)) => TcpEnd::Reset(*side),
                _ => TcpEnd::Error(*side),
            };
            record.failed(end, &format_args!("{e}: {source}"));
        }
        Err(ForwardError::Frozen(_)) => {}
    }
    if let Some((side, why)) = result.as_ref().err().and_then(ForwardError::aborted) {
        live.0.aborted(side, why).fetch_add(1, Ordering::Relaxed);
    }
    log_end(result, moved, who);
}

/// Writes to the backend what it gets before the forwarding: the PROXY header when one is
/// sent, then `first` (the ClientHello SNI routing read), within the idle timeout. Its own
/// future, boxed by the caller: only the connections that send something first pay for its
/// state, and none of it stays in the task once the forwarding starts.
async fn send_first(
    (client, upstream): (&TcpStream, &TcpStream),
    first: Vec<u8>,
    (proxy, origin): (
        Option<proxy_protocol::Version>,
        Option<Box<proxy_protocol::Header>>,
    ),
    idle: Duration,
    who: Who<'_>,
) -> Result<(), (TcpEnd, std::io::Error)> {
    let (listener, peer, backend) = who;
    let first = match proxy {
        Some(version) => match proxied::header(client, peer, version, origin.as_deref(), &first) {
            Ok(bytes) => bytes,
            Err(e) => {
                if let Some(suppressed) = LOCAL_LOG.allow() {
                    warn!(listener, client = %peer, error = %e, suppressed, "cannot make the PROXY header (the client socket's own address); closing client");
                }
                return Err((TcpEnd::LocalError, e));
            }
        },
        None => first,
    };
    let sent = tokio::time::timeout(idle, write_all(upstream, &first))
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the backend took no bytes",
            ))
        });
    if let Err(e) = sent {
        if let Some(suppressed) = BACKEND_ERROR_LOG.allow() {
            warn!(listener, client = %peer, %backend, error = %e, suppressed, "cannot send the first bytes (PROXY header, ClientHello) to the backend; closing client");
        }
        return Err((TcpEnd::Error(Side::Backend), e));
    }
    Ok(())
}

/// Which connection a log line is about: listener, client, backend.
pub(super) type Who<'a> = (&'a str, SocketAddr, SocketAddr);

fn log_end(result: &Result<(), ForwardError>, moved: Transfer, who: Who<'_>) {
    let (up, down) = (moved.to_backend, moved.to_client);
    let (listener, client, backend) = who;
    match result {
        Ok(()) => {
            debug!(listener, %client, %backend, to_backend = up, to_client = down, "connection closed")
        }
        Err(ForwardError::Idle { stranded: 0 }) => {
            debug!(listener, %client, %backend, to_backend = up, to_client = down, "connection idle; closed")
        }
        Err(ForwardError::Idle { stranded }) => {
            debug!(listener, %client, %backend, to_backend = up, to_client = down, stranded, "connection idle with bytes undelivered; both legs reset")
        }
        Err(
            e @ ForwardError::Io {
                side: Side::Backend,
                source,
                ..
            },
        ) => match BACKEND_ERROR_LOG.allow() {
            Some(suppressed) => {
                warn!(listener, %client, %backend, to_backend = up, to_client = down, error = %source, suppressed, "{e}; both legs reset")
            }
            None => {
                debug!(listener, %client, %backend, to_backend = up, to_client = down, error = %source, "{e}; both legs reset")
            }
        },
        Err(e @ ForwardError::Io { source, .. }) => {
            debug!(listener, %client, %backend, to_backend = up, to_client = down, error = %source, "{e}; both legs reset")
        }
        Err(ForwardError::Frozen(_)) => {}
    }
}

/// Tries `pool`'s candidates in order, each within the connect timeout, and returns what
/// the connection keeps of `spec`; `spec` itself is dropped when this ends. When no backend
/// can be reached, counts and logs it, and says why (no backend, or no local resources). One async fn, not a wrapper around a borrowing one: a
/// wrapper would store the spec and the client address twice in every connecting future.
async fn connect(
    spec: Arc<ListenerSpec>,
    pool: Arc<Pool>,
    client: SocketAddr,
    failing: &mpsc::Sender<PassiveDown>,
) -> Result<(Connected, TcpStream), TcpEnd> {
    let mut end = TcpEnd::NoBackend;
    for backend in pool.candidates(client) {
        let started = tokio::time::Instant::now();
        let deadline = started + spec.connect_timeout;
        let error = match dial_until(backend.address, deadline).await {
            Ok(stream) => {
                pool.live.connect_duration.observe(started.elapsed());
                passive::success(backend);
                let connected = Connected {
                    listener: spec.name.clone(),
                    backend: backend.clone(),
                    idle: spec.idle_timeout,
                    proxy: spec.proxy_send,
                };
                return Ok((connected, stream));
            }
            // Out of descriptors or memory here: every backend would fail alike, and it is
            // not the backend's fault, so no failure is counted against it.
            Err(Dial::Local(e)) => {
                if let Some(suppressed) = LOCAL_LOG.allow() {
                    warn!(listener = %spec.name, %client, backend = %backend.address, error = %e, suppressed, "no local resources to reach the backend; closing client");
                }
                end = TcpEnd::LocalError;
                break;
            }
            Err(Dial::Backend(e)) => {
                backend.stats.count_failure(failure_reason(&e));
                passive::failure(failing, &pool, backend);
                e.to_string()
            }
            Err(Dial::TimedOut) => {
                backend.stats.count_failure(ConnectFailure::Timeout);
                passive::failure(failing, &pool, backend);
                format!("timed out after {:?}", spec.connect_timeout)
            }
        };
        match CONNECT_FAILED_LOG.allow() {
            Some(suppressed) => {
                warn!(listener = %spec.name, %client, backend = %backend.address, pool = %pool.name, %error, suppressed, "backend connect failed")
            }
            None => {
                debug!(listener = %spec.name, %client, backend = %backend.address, pool = %pool.name, %error, "backend connect failed")
            }
        }
    }
    spec.live
        .rejected_no_backend
        .fetch_add(1, Ordering::Relaxed);
    if let Some(suppressed) = NO_BACKEND_LOG.allow() {
        warn!(listener = %spec.name, %client, suppressed, "no backend could be reached; closing client");
    }
    Err(end)
}

/// Writes all of `bytes` to a just-connected backend: its send buffer takes a header and a
/// ClientHello (at most a few KiB and [`crate::sni::MAX_PEEK`]) at once; the loop only
/// guards the unlikely short write.
async fn write_all(upstream: &TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    let mut written = 0;
    while written < bytes.len() {
        match upstream.try_write(&bytes[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => upstream.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A connection counted in its listener's `active` gauge for as long as this lives.
pub(super) struct Active(Arc<ListenerLive>);

impl Active {
    pub(super) fn enter(live: Arc<ListenerLive>) -> Active {
        live.active.fetch_add(1, Ordering::Relaxed);
        Active(live)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs `f` when dropped: keeps a gauge right on every exit path, including cancellation at
/// the drain deadline.
pub(super) fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
