//! UDP sockets for the data plane and the batched system calls that std, tokio and socket2
//! do not offer: `recvmmsg(2)` and `sendmmsg(2)` with the control messages a UDP load
//! balancer needs — the address a client sent to (`IP_PKTINFO` / `IPV6_PKTINFO` on receive),
//! the address a reply leaves from (the same messages on send), and the kernel's UDP
//! segmentation offloads (`UDP_GRO` on receive, `UDP_SEGMENT` on send).
//!
//! - this file: binding a listener socket ([`bind_listener`]) and connecting a session's
//!   upstream socket ([`connect_upstream`]), and what each may offload ([`OffloadState`]);
//! - `recv.rs`: [`RecvBatch`] and [`recv_batch`], with [`Datagram::segments`] splitting what
//!   GRO coalesced;
//! - `send.rs`: [`SendBatch`] and [`send_batch`], with the fallback to one datagram per
//!   message when the kernel refuses `UDP_SEGMENT`;
//! - `cmsg.rs`: reading and writing control messages, bounds-checked;
//! - `addr.rs`: socket addresses to and from their C form.
//!
//! Batches are owned by the caller and reused: nothing here allocates per datagram. Every
//! call is non-blocking on a non-blocking socket and reports `WouldBlock` untouched, so the
//! shell drives it from tokio's readiness (`UdpSocket::try_io`). Nothing here knows about
//! listeners, sessions or configuration.

mod addr;
mod cmsg;
mod recv;
mod send;
#[cfg(test)]
mod tests;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{Domain, Protocol, Socket, Type};

pub use recv::{Datagram, RecvBatch, Segments, recv_batch};
pub use send::{Route, SendBatch, Sent, send_batch};

/// Messages moved by one `recvmmsg` / `sendmmsg` call at most. Envoy reads 16 per call and
/// quinn 32; past that the syscall is already a small share of the cost per datagram.
pub const MAX_BATCH: usize = 32;

/// The largest UDP payload over IPv4 (65 535 minus the IP and UDP headers), and the most
/// bytes one `UDP_SEGMENT` send may carry whatever the family.
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// Bytes a receive slot holds: any datagram (an IPv6 one may reach 65 527 bytes) and any
/// run GRO coalesces (at most 64 KiB), so nothing is ever truncated.
pub const RECV_SLOT: usize = 65_535;

/// Segments one `UDP_SEGMENT` send may carry (the kernel's `UDP_MAX_SEGMENTS`, 64 on the
/// kernels that introduced it; later ones allow more).
pub const MAX_GSO_SEGMENTS: usize = 64;

/// Which offloads to try on a new socket. Both are on by default; tests and operators who
/// suspect the kernel turn them off to force the one-datagram-per-message paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offloads {
    /// `UDP_GRO`: the kernel may hand over a run of equal-sized datagrams from one source
    /// in one receive; [`Datagram::segments`] splits it again.
    pub gro: bool,
    /// `UDP_SEGMENT`: [`SendBatch::push_segments`] may go out as one message.
    pub gso: bool,
}

impl Offloads {
    pub const ALL: Offloads = Offloads {
        gro: true,
        gso: true,
    };
    pub const NONE: Offloads = Offloads {
        gro: false,
        gso: false,
    };
}

impl Default for Offloads {
    fn default() -> Offloads {
        Offloads::ALL
    }
}

/// What one socket may offload, as learned from the kernel: GRO is settled when the socket
/// is made; GSO is switched off for good the first time a send with `UDP_SEGMENT` is refused
/// for a reason that will not go away (see [`send_batch`]).
#[derive(Debug)]
pub struct OffloadState {
    gro: bool,
    gso: AtomicBool,
}

impl OffloadState {
    /// Neither offload: for sockets made elsewhere (and tests of the fallback paths).
    pub const fn none() -> OffloadState {
        OffloadState {
            gro: false,
            gso: AtomicBool::new(false),
        }
    }

    /// No GRO, and GSO as `gso` says: for a socket only sent on, whose kernel is known to
    /// take `UDP_SEGMENT` from another socket's probe (saving the `getsockopt` per socket).
    pub const fn sending(gso: bool) -> OffloadState {
        OffloadState {
            gro: false,
            gso: AtomicBool::new(gso),
        }
    }

    /// Whether receives may return coalesced runs (`Datagram::segment` set).
    pub fn gro(&self) -> bool {
        self.gro
    }

    /// Whether sends use `UDP_SEGMENT` for runs of equal-sized datagrams.
    pub fn gso(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// Sends split every run into one datagram per message from now on.
    pub fn disable_gso(&self) {
        self.gso.store(false, Ordering::Relaxed);
    }
}

/// A UDP socket made here: non-blocking, close-on-exec, with what it may offload.
#[derive(Debug)]
pub struct Bound {
    pub socket: UdpSocket,
    /// The address it is bound to (the real port when port 0 was asked for).
    pub local: SocketAddr,
    pub offload: OffloadState,
    /// Whether receives report the address each datagram was sent to (`Datagram::local`):
    /// true on wildcard binds, where that address is the only way to know which one a
    /// client used; elsewhere it is `local`'s address.
    pub pktinfo: bool,
}

/// Binds one worker's `SO_REUSEPORT` socket for a UDP listener: every worker binds its own,
/// and the kernel spreads clients over them by their address, so a client stays with one
/// worker (and that worker's session table) for as long as the set of sockets is unchanged.
///
/// `SO_REUSEADDR` is not set: on UDP it would let any process of the user bind the port
/// alongside and take a share of the datagrams, which is what `SO_REUSEPORT`'s same-user
/// rule already allows only for tollgate's own sockets.
///
/// On a wildcard bind (`0.0.0.0`, `[::]`) the socket asks for the destination address of
/// every datagram (`IP_PKTINFO` / `IPV6_RECVPKTINFO`), so replies leave from the address the
/// client sent to, whichever of the host's addresses that was.
///
/// IPv6 sockets are v6-only, as on the TCP side: `[::]:53` and `0.0.0.0:53` are two sockets,
/// so both can be listed (a dual-stack `[::]` would hold the IPv4 port too and make the
/// second bind fail), IPv4 clients never appear as `::ffff:a.b.c.d`, and each family's
/// replies carry that family's `PKTINFO`.
pub fn bind_listener(addr: SocketAddr, want: Offloads) -> io::Result<Bound> {
    let socket = new_socket(addr)?;
    socket
        .set_reuse_port(true)
        .map_err(|e| context(e, "SO_REUSEPORT"))?;
    if addr.is_ipv6() {
        socket
            .set_only_v6(true)
            .map_err(|e| context(e, "IPV6_V6ONLY"))?;
    }
    let pktinfo = addr.ip().is_unspecified();
    if pktinfo {
        let (level, name, what) = match addr {
            SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_PKTINFO, "IP_PKTINFO"),
            SocketAddr::V6(_) => (
                libc::IPPROTO_IPV6,
                libc::IPV6_RECVPKTINFO,
                "IPV6_RECVPKTINFO",
            ),
        };
        set_int(socket.as_fd(), level, name, 1).map_err(|e| context(e, what))?;
    }
    let offload = offloads(socket.as_fd(), want);
    socket
        .bind(&addr.into())
        .map_err(|e| context(e, &format!("bind {addr}")))?;
    finish(socket, offload, pktinfo)
}

/// Takes over a listener's socket bound by another process (a binary upgrade hands them
/// over): checked to be a bound UDP socket, made non-blocking, with the same offloads and
/// local-address reports as [`bind_listener`] gives (both are idempotent to set again).
pub fn adopt_listener(fd: std::os::fd::OwnedFd, want: Offloads) -> io::Result<Bound> {
    let socket = Socket::from(fd);
    if socket.r#type()? != Type::DGRAM {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a UDP socket",
        ));
    }
    socket.set_nonblocking(true)?;
    let addr = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("a UDP socket without an IP address"))?;
    let pktinfo = addr.ip().is_unspecified();
    let offload = offloads(socket.as_fd(), want);
    finish(socket, offload, pktinfo)
}

/// A session's upstream socket: bound to an ephemeral port of the backend's family and
/// connected to it, so the kernel delivers only that backend's datagrams to it (the socket
/// is the session's demultiplexer) and reports its ICMP errors (`ECONNREFUSED` from a
/// receive or send when nothing listens there).
///
/// Errors are the kernel's, unwrapped, so the caller can tell a local shortage (`EMFILE`,
/// `ENFILE`, `ENOBUFS`, `EADDRNOTAVAIL` when the ephemeral ports run out) from the rest.
pub fn connect_upstream(backend: SocketAddr, want: Offloads) -> io::Result<Bound> {
    let socket = new_socket(backend)?;
    let offload = offloads(socket.as_fd(), want);
    // No explicit bind: connect gives an unbound UDP socket an ephemeral port of the right
    // family. A session opens one of these per client, so every system call counts.
    socket.connect(&backend.into())?;
    finish(socket, offload, false)
}

/// A non-blocking, close-on-exec (socket2 sets `SOCK_CLOEXEC`) UDP socket of `addr`'s family,
/// non-blocking from `socket(2)` itself (`SOCK_NONBLOCK`) rather than by two `fcntl` calls.
fn new_socket(addr: SocketAddr) -> io::Result<Socket> {
    Socket::new(
        Domain::for_address(addr),
        Type::DGRAM.nonblocking(),
        Some(Protocol::UDP),
    )
}

fn finish(socket: Socket, offload: OffloadState, pktinfo: bool) -> io::Result<Bound> {
    let local = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("a UDP socket without an IP address"))?;
    Ok(Bound {
        socket: socket.into(),
        local,
        offload,
        pktinfo,
    })
}

/// Turns on what was asked for and the kernel grants. `UDP_GRO` is granted or refused by
/// `setsockopt`. `UDP_SEGMENT` has nothing to turn on: a kernel that knows it answers a
/// `getsockopt` for it (the socket's default segment size), one that does not says
/// `ENOPROTOOPT`; a refusal at send time switches it off later.
fn offloads(socket: BorrowedFd<'_>, want: Offloads) -> OffloadState {
    let gro = want.gro && set_int(socket, libc::SOL_UDP, libc::UDP_GRO, 1).is_ok();
    let gso = want.gso && get_int(socket, libc::SOL_UDP, libc::UDP_SEGMENT).is_ok();
    OffloadState {
        gro,
        gso: AtomicBool::new(gso),
    }
}

fn set_int(
    socket: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    let len = socklen_of::<libc::c_int>();
    // SAFETY: the descriptor is open (borrowed); the option value is a live c_int and `len`
    // is its size, as every option set here expects.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn get_int(socket: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int) -> io::Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = socklen_of::<libc::c_int>();
    // SAFETY: the descriptor is open (borrowed); `value` is a writable c_int and `len` says
    // so; the kernel writes at most `len` bytes and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// A C length as a `usize`: `size_t` on glibc, `socklen_t` or `int` on musl, so one helper
/// for every libc (0 for a negative one, which the kernel never reports).
fn as_len(n: impl TryInto<usize>) -> usize {
    n.try_into().unwrap_or(0)
}

/// The size of `T` as a `socklen_t`; every type passed here is a few bytes long.
fn socklen_of<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}

/// The error with the step that failed in front; its kind is kept (`AddrInUse` stays one).
fn context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}
