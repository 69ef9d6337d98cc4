//! What a TCP socket's send queue still holds, and accepting only once data has come
//! (`TCP_DEFER_ACCEPT`), which std, tokio and socket2 do not expose.
//!
//! A connection that ends with a reset (`SO_LINGER` 0, then close) throws away whatever its
//! send queue still holds, so before resetting a leg the proxy waits for the bytes it already
//! wrote there to go out ([`unsent`]); tests use [`outstanding`] to know that a peer has
//! acknowledged everything before they reset it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Bytes written to the socket that the kernel has not sent yet (`SIOCOUTQNSD`): they are
/// lost if the socket is reset now.
pub fn unsent(socket: BorrowedFd<'_>) -> io::Result<usize> {
    queue(socket, libc::SIOCOUTQNSD)
}

/// Bytes written to the socket that the peer has not acknowledged yet (`SIOCOUTQ`): sent
/// and in flight, or not sent at all.
pub fn outstanding(socket: BorrowedFd<'_>) -> io::Result<usize> {
    queue(socket, libc::TIOCOUTQ)
}

/// Lets `accept` return a connection only once its first data has arrived, waiting at most
/// `seconds` for it (0 turns it off): for client-first protocols such as TLS, whose first
/// bytes decide where the connection goes.
pub fn set_defer_accept(socket: BorrowedFd<'_>, seconds: u32) -> io::Result<()> {
    let value = libc::c_int::try_from(seconds).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor is open for the call (it is borrowed); the kernel reads one int
    // through the pointer, which points at a live c_int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn queue(socket: BorrowedFd<'_>, request: libc::Ioctl) -> io::Result<usize> {
    let mut bytes: libc::c_int = 0;
    // SAFETY: the descriptor is open for the call (it is borrowed); both requests write one
    // int through the pointer, which points at a live, writable c_int.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), request, &mut bytes) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(bytes).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    #[test]
    fn a_send_queue_empties_as_the_peer_reads() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut b, _) = l.accept().unwrap();
        assert_eq!(unsent(a.as_fd()).unwrap(), 0);
        assert_eq!(outstanding(a.as_fd()).unwrap(), 0);
        // Far more than the peer's receive window: most of it stays queued, unsent.
        a.set_nonblocking(true).unwrap();
        let mut written = 0;
        while let Ok(n) = a.write(&[1u8; 65_536]) {
            written += n;
        }
        assert!(unsent(a.as_fd()).unwrap() > 0, "{written} bytes written");
        a.set_nonblocking(false).unwrap();
        let mut got = vec![0u8; written];
        b.read_exact(&mut got).unwrap();
        assert_eq!(unsent(a.as_fd()).unwrap(), 0);
    }
}
