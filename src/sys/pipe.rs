//! Pipes for `splice(2)` forwarding.
//!
//! A [`Pipe`] is a kernel buffer between two sockets: bytes are spliced from the source socket
//! into it and from it into the destination socket without entering user space. It tracks how
//! many bytes it holds, so a pipe that still holds data (a connection that ended mid-transfer)
//! is closed instead of being handed to another connection. Making one can be refused, and
//! [`PipeError`] says how, so that the pool (`pipe_pool.rs`) can count it and back off.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Below this a pipe is not worth splicing through (see [`Pipe::new`]).
pub const MIN_USEFUL_CAPACITY: usize = 64 * 1024;

const SPLICE_FLAGS: libc::c_uint = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;

/// A non-blocking, close-on-exec pipe and the number of bytes it currently holds.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
    held: usize,
}

impl Pipe {
    /// Creates a pipe and asks the kernel for `size` bytes of capacity. The kernel may grant
    /// less (`fs.pipe-max-size`, per-user pipe quotas), so the real capacity is read back; a
    /// pipe below 64 KiB is refused as [`PipeError::Small`].
    pub fn new(size: usize) -> Result<Pipe, PipeError> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid, writable array of two ints, as pipe2 requires.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EMFILE | libc::ENFILE) => PipeError::Descriptors(e),
                _ => PipeError::Other(e),
            });
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let want = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
        // SAFETY: F_SETPIPE_SZ takes an int argument; `write` is an open pipe descriptor.
        // A refusal (EPERM above fs.pipe-max-size, or once an unprivileged user holds more
        // than fs.pipe-user-pages-soft) is fine as long as what we have is useful: the
        // capacity is read back and judged below.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, want) };
        // SAFETY: F_GETPIPE_SZ takes no argument; `write` is an open pipe descriptor.
        let got = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        if got <= 0 {
            return Err(PipeError::Other(io::Error::last_os_error()));
        }
        let capacity = usize::try_from(got).unwrap_or(0);
        if capacity < MIN_USEFUL_CAPACITY {
            // The kernel granted a token pipe (an unprivileged user past its pipe quota gets
            // two pages): splicing a page at a time costs more than copying.
            return Err(PipeError::Small(capacity));
        }
        Ok(Pipe {
            read,
            write,
            capacity,
            held: 0,
        })
    }

    /// Bytes the pipe can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes spliced in and not yet spliced out.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Moves up to the capacity from `src` (a socket) into the pipe, which must be empty —
    /// so a `WouldBlock` can only mean `src` has nothing to read, never a full pipe (callers
    /// clear the socket's readiness on it). `Ok(0)` is end of stream.
    pub fn fill_from(&mut self, src: BorrowedFd<'_>) -> io::Result<usize> {
        debug_assert_eq!(self.held, 0, "fill_from on a pipe that still holds bytes");
        let room = self.capacity - self.held;
        let n = splice(src, self.write.as_fd(), room)?;
        self.held += n;
        Ok(n)
    }

    /// Writes `bytes` into the pipe (a buffer's bytes that are to travel as a pipe, in a
    /// binary upgrade); fails when they do not all fit.
    pub fn fill_from_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut written = 0;
        while written < bytes.len() {
            let rest = &bytes[written..];
            // SAFETY: `write` is an open pipe descriptor; the kernel reads at most
            // `rest.len()` bytes from a pointer into a live slice of that length.
            let n =
                unsafe { libc::write(self.write.as_raw_fd(), rest.as_ptr().cast(), rest.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            written += n as usize;
            self.held += n as usize;
        }
        Ok(())
    }

    /// The read and write ends, borrowed (to send them to another process).
    pub fn ends(&self) -> (BorrowedFd<'_>, BorrowedFd<'_>) {
        (self.read.as_fd(), self.write.as_fd())
    }

    /// The pipe's two descriptors (read end, write end); what it holds stays in it.
    pub fn into_parts(self) -> (OwnedFd, OwnedFd) {
        (self.read, self.write)
    }

    /// A pipe from its two descriptors, as another process handed them over: checked to be
    /// the two ends of a pipe, made non-blocking, its capacity and the bytes it holds read
    /// from the kernel.
    pub fn from_parts(read: OwnedFd, write: OwnedFd) -> io::Result<Pipe> {
        for fd in [&read, &write] {
            // SAFETY: F_GETFL takes no argument and only reads the descriptor's flags; it
            // fails with EBADF on a closed one, which is reported.
            let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
            if flags < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: F_SETFL takes an int of flags; the descriptor is open (owned here).
            if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: F_GETPIPE_SZ takes no argument; it fails (EBADF, EINVAL) on anything but a
        // pipe, which is how a wrong descriptor is refused.
        let got = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        if got <= 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a pipe"));
        }
        let mut held: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int, through a pointer to a live c_int.
        if unsafe { libc::ioctl(read.as_raw_fd(), libc::FIONREAD, &raw mut held) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Pipe {
            read,
            write,
            capacity: usize::try_from(got).unwrap_or(0),
            held: usize::try_from(held).unwrap_or(0),
        })
    }

    /// Moves what the pipe holds into `dst` (a socket). `WouldBlock` means `dst` is full.
    pub fn drain_into(&mut self, dst: BorrowedFd<'_>) -> io::Result<usize> {
        let n = splice(self.read.as_fd(), dst, self.held)?;
        self.held -= n.min(self.held);
        Ok(n)
    }
}

/// Why no pipe could be made.
#[derive(Debug, thiserror::Error)]
pub enum PipeError {
    /// EMFILE or ENFILE: the process or the system is out of descriptors (ENFILE is also what
    /// an unprivileged user past `fs.pipe-user-pages-hard` gets).
    #[error("no descriptor for a pipe")]
    Descriptors(#[source] io::Error),
    /// The kernel made the pipe but smaller than [`MIN_USEFUL_CAPACITY`]: the per-user quota
    /// `fs.pipe-user-pages-soft` is used up.
    #[error("the kernel granted a pipe of only {0} bytes (per-user pipe quota)")]
    Small(usize),
    #[error("cannot make a pipe")]
    Other(#[source] io::Error),
}

fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call (they are borrowed);
    // null offsets are required for pipes and sockets; the kernel writes no user memory.
    let rc = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            SPLICE_FLAGS,
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

    #[test]
    fn pipe_reports_a_real_capacity() {
        let pipe = Pipe::new(256 * 1024).unwrap();
        assert!(pipe.capacity() >= 4096);
    }

    #[test]
    fn splices_bytes_between_sockets() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l2.local_addr().unwrap()).unwrap();
        let (mut d, _) = l2.accept().unwrap();
        a.write_all(b"hello splice").unwrap();
        let mut pipe = Pipe::new(65_536).unwrap();
        let mut moved = 0;
        while moved < 12 {
            match pipe.fill_from(b.as_fd()) {
                Ok(n) => moved += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(pipe.held(), 12);
        assert_eq!(pipe.drain_into(c.as_fd()).unwrap(), 12);
        assert_eq!(pipe.held(), 0);
        let mut got = [0u8; 12];
        d.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello splice");
    }
}
