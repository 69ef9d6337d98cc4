//! Descriptors held in reserve, so that a service that must keep answering (the admin API's
//! `/metrics` and `/readyz`) can still accept a connection when clients hold every
//! descriptor the process may open — the moment an operator most needs to see inside.
//! HAProxy and nginx keep a few back for the same reason.
//!
//! The reserve is a few descriptors open on `/dev/null`. When an accept fails for want of a
//! descriptor, the caller [`release`](FdReserve::release)s one and accepts again, which takes
//! the number just freed. When that connection ends, its descriptor is not closed but
//! [`recycle`](FdReserve::recycle)d: `dup3` turns it into a `/dev/null` descriptor in place,
//! atomically, so no other thread can take the number in between (the data plane's accept
//! loops, at the limit too, retry every few milliseconds and would). One extra descriptor,
//! the template that `dup3` copies, is never released.
//!
//! It knows nothing of sockets or of who uses it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Mutex, PoisonError};

/// A fixed number of spare descriptors, and the template they are made from.
#[derive(Debug)]
pub struct FdReserve {
    template: OwnedFd,
    spares: Mutex<Vec<OwnedFd>>,
    size: usize,
}

/// A close-on-exec descriptor on `/dev/null` (std opens every file with `O_CLOEXEC`).
fn dev_null() -> io::Result<OwnedFd> {
    std::fs::File::open("/dev/null").map(OwnedFd::from)
}

impl FdReserve {
    /// Opens `size` spares (and the template): `size + 1` descriptors.
    pub fn new(size: usize) -> io::Result<FdReserve> {
        let reserve = FdReserve {
            template: dev_null()?,
            spares: Mutex::new(Vec::with_capacity(size)),
            size,
        };
        for _ in 0..size {
            let fd = dev_null()?;
            reserve.lock().push(fd);
        }
        Ok(reserve)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<OwnedFd>> {
        self.spares.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spares held now.
    pub fn spares(&self) -> usize {
        self.lock().len()
    }

    /// Closes one spare, so that the caller's next call that needs a descriptor gets its
    /// number; false when none is left.
    pub fn release(&self) -> bool {
        self.lock().pop().is_some()
    }

    /// Reopens spares that were released and never came back, while descriptors can be had.
    pub fn refill(&self) {
        let mut spares = self.lock();
        while spares.len() < self.size {
            match dev_null() {
                Ok(fd) => spares.push(fd),
                Err(_) => return,
            }
        }
    }

    /// Takes back a descriptor the caller is done with (a connection that ended): when the
    /// reserve is short, the descriptor becomes a spare in place, its number never free;
    /// otherwise it is simply closed.
    pub fn recycle(&self, fd: OwnedFd) {
        let mut spares = self.lock();
        if spares.len() >= self.size {
            return;
        }
        // SAFETY: `template` and `fd` are open descriptors this process owns (both are
        // `OwnedFd`s held here). dup3 closes what `fd`'s number referred to (the caller gave
        // up that object with ownership of `fd`) and makes the number refer to /dev/null,
        // close-on-exec; `fd` still owns it afterwards. No memory is involved.
        let rc = unsafe { libc::dup3(self.template.as_raw_fd(), fd.as_raw_fd(), libc::O_CLOEXEC) };
        if rc >= 0 {
            spares.push(fd);
        }
        // On failure `fd` is dropped, which closes it: the reserve stays short until a
        // `refill` or the next `recycle`.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn target(fd: &OwnedFd) -> String {
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }

    #[test]
    fn releases_and_refills() {
        let reserve = FdReserve::new(3).unwrap();
        assert_eq!(reserve.spares(), 3);
        assert!(reserve.release() && reserve.release() && reserve.release());
        assert!(!reserve.release(), "the template is never released");
        reserve.refill();
        assert_eq!(reserve.spares(), 3);
    }

    #[test]
    fn a_recycled_descriptor_keeps_its_number_and_becomes_dev_null() {
        let reserve = FdReserve::new(1).unwrap();
        assert!(reserve.release());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (served, _) = listener.accept().unwrap();
        let fd = OwnedFd::from(served);
        let number = fd.as_raw_fd();
        assert!(target(&fd).starts_with("socket:"));
        reserve.recycle(fd);
        assert_eq!(reserve.spares(), 1);
        let spare = reserve.lock().pop().unwrap();
        assert_eq!(spare.as_raw_fd(), number, "the same number, never free");
        assert_eq!(target(&spare), "/dev/null");
        // The socket itself was closed: the client sees the end.
        let _ = client.write_all(b"x");
        let mut buf = [0u8; 1];
        let got = std::io::Read::read(&mut client, &mut buf);
        assert!(matches!(got, Ok(0) | Err(_)), "{got:?}");
    }

    #[test]
    fn a_full_reserve_just_closes() {
        let reserve = FdReserve::new(1).unwrap();
        reserve.recycle(dev_null().unwrap());
        assert_eq!(reserve.spares(), 1);
    }
}
