//! Reading what a TCP socket has received without taking it (`recv` with `MSG_PEEK`), which
//! tokio offers only as an async call that cannot tell "nothing new" from "data": a trusted
//! balancer's PROXY header is looked at where it lies, and only it is then read, so what
//! follows stays queued for the forwarding.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Copies up to `buf.len()` of the bytes queued on `socket` into `buf`, leaving them queued;
/// `Ok(0)` means the peer closed with nothing queued; `WouldBlock` that nothing is queued.
pub fn peek(socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the descriptor is open for the call (it is borrowed); the kernel writes at most
    // `buf.len()` bytes through the pointer, which points at that many live, writable bytes.
    let rc = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(rc).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    #[test]
    fn peeked_bytes_stay_for_the_next_read() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 8];
        let nothing = peek(s.as_fd(), &mut buf).unwrap_err();
        assert_eq!(nothing.kind(), io::ErrorKind::WouldBlock);
        c.write_all(b"hello world").unwrap();
        let mut n = 0;
        for _ in 0..1000 {
            match peek(s.as_fd(), &mut buf) {
                Ok(k) if k == buf.len() => {
                    n = k;
                    break;
                }
                _ => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
        assert_eq!(&buf[..n], b"hello wo");
        assert_eq!(peek(s.as_fd(), &mut buf).unwrap(), 8, "still there");
        s.set_nonblocking(false).unwrap();
        let mut all = [0u8; 11];
        s.read_exact(&mut all).unwrap();
        assert_eq!(&all, b"hello world");
        drop(c);
        let closed = (0..1000).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(1));
            matches!(peek(s.as_fd(), &mut buf), Ok(0))
        });
        assert!(closed, "a closed peer peeks as 0 bytes");
    }
}
