//! Listening sockets: binding one per worker and address (`SO_REUSEPORT`, non-blocking,
//! close-on-exec, `TCP_NODELAY` for the clients to inherit, `TCP_DEFER_ACCEPT` for `sni`
//! listeners), the check that no other process holds an address, and what identifies a
//! socket across reloads ([`BindKey`]). The accept loop that serves them is `listener.rs`.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::state::{ListenerSpec, Snapshot};

/// Listen backlog; the kernel clamps it to `net.core.somaxconn`.
const BACKLOG: i32 = 4096;
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
