//! Listening sockets and the accept loop of one worker.
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

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::admission::{LOG_EVERY_SECS, Reason, Refusal};

use super::slot::{Slot, WaitingAtCap};
use super::tcp::{self, Admitted};
use super::throttle::{LogThrottle, SourceLogFilter};
use super::{DataPlane, Tracker};
use crate::state::{ListenerSpec, Snapshot};

/// Listen backlog; the kernel clamps it to `net.core.somaxconn`.
const BACKLOG: i32 = 4096;
/// Refusals are logged once per source per `LOG_EVERY_SECS` (ACL refusals keep no
/// per-source state), and at most a few lines a second overall, so a flood from many
/// addresses cannot flood the log.
static REFUSED_LOG: LogThrottle = LogThrottle::with_budget(10);
static REFUSED_SOURCES: SourceLogFilter = SourceLogFilter::new();

const PAUSE_MIN: Duration = Duration::from_millis(10);
const PAUSE_MAX: Duration = Duration::from_millis(500);

/// Binds one `SO_REUSEPORT` listening socket (non-blocking, close-on-exec, v6-only on IPv6).
/// `TCP_NODELAY` is set here because accepted sockets inherit it: Nagle would delay the small
/// writes the proxy passes on, and one option on the listener saves a syscall per client.
/// `defer` (seconds, 0 for none) is `TCP_DEFER_ACCEPT` ([`defer_seconds`]), set before the
/// socket listens so that no early client escapes it.
pub fn bind(addr: SocketAddr, defer: u32) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    if defer > 0 {
        crate::sys::socket::set_defer_accept(socket.as_fd(), defer)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Fails when another socket already holds `addr`. `SO_REUSEPORT` would otherwise let a
/// second tollgate (or any process of the same user that set it) join the port and silently
/// take a share of the connections (or datagrams); a probe bound without it is refused in
/// that case.
pub fn ensure_unclaimed(transport: Transport, addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let (ty, proto) = match transport {
        Transport::Tcp => (Type::STREAM, Protocol::TCP),
        Transport::Udp => (Type::DGRAM, Protocol::UDP),
    };
    let probe = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    // SO_REUSEADDR so that sockets in TIME_WAIT from an earlier run do not count as holders.
    probe.set_reuse_address(true)?;
    if addr.is_ipv6() {
        probe.set_only_v6(true)?;
    }
    probe.bind(&addr.into())
}

pub use crate::state::Transport;

/// Which listening socket this is, as a reload recognises it. A fixed address is one
/// socket whatever listener serves it, so renaming a listener (or moving an address to
/// another listener) keeps its sockets and the clients queued on them. A port-0 address asks
/// for a fresh port: it belongs to its listener's name (two listeners may both ask for
/// `127.0.0.1:0`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BindKey {
    Fixed(Transport, SocketAddr),
    Fresh(Transport, Arc<str>, SocketAddr),
}

impl BindKey {
    /// The key of `configured` (the address as written) in listener `listener`.
    pub fn new(listener: &str, transport: Transport, configured: SocketAddr) -> BindKey {
        if configured.port() == 0 {
            BindKey::Fresh(transport, listener.into(), configured)
        } else {
            BindKey::Fixed(transport, configured)
        }
    }

    /// The address as configured (port 0 as written).
    pub fn configured(&self) -> SocketAddr {
        match self {
            BindKey::Fixed(_, a) | BindKey::Fresh(_, _, a) => *a,
        }
    }

    pub fn transport(&self) -> Transport {
        match self {
            BindKey::Fixed(t, _) | BindKey::Fresh(t, _, _) => *t,
        }
    }

    /// The listener of `snapshot` that this socket serves now, if any.
    pub fn spec<'s>(&self, snapshot: &'s Snapshot) -> Option<&'s Arc<ListenerSpec>> {
        let serves = |l: &ListenerSpec, addr: &SocketAddr| {
            l.bind.contains(addr) && l.transport() == self.transport()
        };
        match self {
            BindKey::Fixed(_, addr) => snapshot.listeners.values().find(|l| serves(l, addr)),
            BindKey::Fresh(_, name, addr) => snapshot.listener(name).filter(|l| serves(l, addr)),
        }
    }
}

/// A bound listening socket of either transport.
#[derive(Debug)]
pub enum Listening {
    Tcp(std::net::TcpListener),
    Udp(crate::sys::udp::Bound),
}

impl Listening {
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Listening::Tcp(s) => s.local_addr(),
            Listening::Udp(s) => Ok(s.local),
        }
    }
}

/// Binds one worker's socket for `addr`: a listening TCP socket, or a UDP socket that reports
/// each datagram's local address (for replies from the address the client sent to).
pub fn bind_any(transport: Transport, addr: SocketAddr, defer: u32) -> io::Result<Listening> {
    match transport {
        Transport::Tcp => bind(addr, defer).map(Listening::Tcp),
        Transport::Udp => {
            crate::sys::udp::bind_listener(addr, crate::sys::udp::Offloads::default())
                .map(Listening::Udp)
        }
    }
}

/// One listening socket of one worker, and the key a reload recognises it by.
pub struct BoundSocket {
    pub key: BindKey,
    pub socket: Listening,
}

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
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => return,
            r = listener.accept() => r,
            _ = snapshot_changed(&mut versions) => Err(io::Error::from(io::ErrorKind::Interrupted)),
        };
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

/// `TCP_DEFER_ACCEPT` for a listener whose ClientHello may take `peek` (an `sni` listener),
/// in whole seconds; 0 (off) for any other. Binding sets it first; the accept loop keeps it
/// in step with reloads.
pub fn defer_seconds(peek: Option<Duration>) -> u32 {
    peek.map_or(0, |p| {
        u32::try_from(p.as_secs_f64().ceil() as u64)
            .unwrap_or(u32::MAX)
            .max(1)
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Clients rely on inheriting `TCP_NODELAY` from the listening socket (no setsockopt per
    /// connection); this is Linux behaviour, checked here so a kernel change cannot slip by.
    #[test]
    fn accepted_sockets_inherit_nodelay() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), 0).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        listener.set_nonblocking(false).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
