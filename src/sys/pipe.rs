//! Pipes for `splice(2)` forwarding and a bounded pool of them.
//!
//! A [`Pipe`] is a kernel buffer between two sockets: bytes are spliced from the source socket
//! into it and from it into the destination socket without entering user space. It tracks how
//! many bytes it holds, so a pipe that still holds data (a connection that ended mid-transfer)
//! is closed instead of being handed to another connection. The [`PipePool`] bounds how many
//! pipes exist at once — each costs two file descriptors and up to its capacity in kernel
//! memory — and callers fall back to a buffered copy when it says no.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Below this a pipe is not worth splicing through (see [`Pipe::new`]).
const MIN_USEFUL_CAPACITY: usize = 64 * 1024;

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
    /// less (`fs.pipe-max-size`, per-user pipe quotas), so the real capacity is read back.
    pub fn new(size: usize) -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid, writable array of two ints, as pipe2 requires.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let want = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
        // SAFETY: F_SETPIPE_SZ takes an int argument; `write` is an open pipe descriptor.
        // A refusal (EPERM above pipe-max-size) is fine: we keep the default capacity.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, want) };
        // SAFETY: F_GETPIPE_SZ takes no argument; `write` is an open pipe descriptor.
        let got = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        if got <= 0 {
            return Err(io::Error::last_os_error());
        }
        let capacity = usize::try_from(got).unwrap_or(0);
        if capacity < MIN_USEFUL_CAPACITY {
            // The kernel granted a token pipe (per-user pipe quota exhausted): splicing a page
            // at a time costs more than copying, so report it as unavailable.
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("pipe capacity only {capacity} bytes"),
            ));
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

    /// Moves what the pipe holds into `dst` (a socket). `WouldBlock` means `dst` is full.
    pub fn drain_into(&mut self, dst: BorrowedFd<'_>) -> io::Result<usize> {
        let n = splice(self.read.as_fd(), dst, self.held)?;
        self.held -= n.min(self.held);
        Ok(n)
    }
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

/// A bounded set of pipes shared by every worker.
///
/// At most `max_open` pipes exist at once (in use or idle); at most `max_idle` idle ones are
/// kept for reuse. The lock is held only to push or pop one pipe, never across a syscall
/// that can block.
#[derive(Debug)]
pub struct PipePool {
    idle: Mutex<Vec<Pipe>>,
    open: AtomicUsize,
    max_open: usize,
    max_idle: usize,
    pipe_size: usize,
}

impl PipePool {
    pub fn new(max_open: usize, max_idle: usize, pipe_size: usize) -> PipePool {
        PipePool {
            idle: Mutex::new(Vec::new()),
            open: AtomicUsize::new(0),
            max_open,
            max_idle,
            pipe_size,
        }
    }

    /// Pipes that exist right now, in use or idle.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// An empty pipe, or `None` when the pool is at its bound or the kernel refuses one
    /// (for example EMFILE): the caller then copies through a buffer instead. The pipe goes
    /// back to the pool when the returned guard is dropped, however its user ends (a
    /// connection task cancelled mid-transfer included).
    pub fn take(&self) -> Option<PooledPipe<'_>> {
        self.take_pipe().map(|pipe| PooledPipe {
            pipe: Some(pipe),
            pool: self,
        })
    }

    fn take_pipe(&self) -> Option<Pipe> {
        if let Some(pipe) = self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
            return Some(pipe);
        }
        let reserved = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < self.max_open).then_some(n + 1)
            })
            .is_ok();
        if !reserved {
            return None;
        }
        match Pipe::new(self.pipe_size) {
            Ok(pipe) => Some(pipe),
            Err(_) => {
                self.open.fetch_sub(1, Ordering::AcqRel);
                None
            }
        }
    }

    /// Returns a pipe. One that still holds bytes is closed, never reused: its bytes belong
    /// to a connection that is gone.
    fn give_back(&self, pipe: Pipe) {
        if pipe.held == 0
            && let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.max_idle
        {
            idle.push(pipe);
            return;
        }
        drop(pipe);
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A pipe on loan from a [`PipePool`]; dropping it gives the pipe back.
#[derive(Debug)]
pub struct PooledPipe<'a> {
    pipe: Option<Pipe>,
    pool: &'a PipePool,
}

impl std::ops::Deref for PooledPipe<'_> {
    type Target = Pipe;
    fn deref(&self) -> &Pipe {
        // The Option is Some from construction until drop.
        self.pipe
            .as_ref()
            .unwrap_or_else(|| unreachable!("pooled pipe used after drop"))
    }
}

impl std::ops::DerefMut for PooledPipe<'_> {
    fn deref_mut(&mut self) -> &mut Pipe {
        self.pipe
            .as_mut()
            .unwrap_or_else(|| unreachable!("pooled pipe used after drop"))
    }
}

impl Drop for PooledPipe<'_> {
    fn drop(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            self.pool.give_back(pipe);
        }
    }
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

    #[test]
    fn pool_is_bounded_and_reuses_empty_pipes() {
        let pool = PipePool::new(2, 1, 65_536);
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        assert!(pool.take().is_none(), "a third pipe exceeds max_open");
        drop(a);
        drop(b);
        assert_eq!(pool.open(), 1, "only max_idle pipes are kept");
        assert!(pool.take().is_some());
    }

    #[test]
    fn a_pipe_that_still_holds_bytes_is_closed_not_reused() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        a.write_all(b"left behind").unwrap();
        let pool = PipePool::new(4, 4, 65_536);
        let mut pipe = pool.take().unwrap();
        while pipe.held() == 0 {
            let _ = pipe.fill_from(b.as_fd());
        }
        drop(pipe);
        assert_eq!(
            pool.open(),
            0,
            "the non-empty pipe was closed and uncounted"
        );
    }
}
