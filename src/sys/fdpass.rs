//! Handing open descriptors to another process: messages with descriptors attached
//! (`SCM_RIGHTS`) over a `SOCK_SEQPACKET` Unix socket pair, and starting a process that
//! inherits one descriptor at a fixed number. The binary upgrade's transport
//! (`crate::upgrade`); nothing here knows what the messages say.
//!
//! A sequenced-packet socket keeps message boundaries, so one `sendmsg` is one message and
//! its descriptors arrive with it, never split across reads. Received descriptors are
//! close-on-exec (`MSG_CMSG_CLOEXEC`) and owned from the moment they arrive: a message that
//! is refused (too long, descriptors cut short) still closes every one it brought.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::Duration;

use socket2::{Domain, Socket, Type};

/// The most descriptors one message may carry (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS: usize = 253;

const FD_SIZE: usize = std::mem::size_of::<RawFd>();

/// A connected pair of close-on-exec `SOCK_SEQPACKET` Unix sockets.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (a, b) = Socket::pair(Domain::UNIX, Type::SEQPACKET, None)?;
    Ok((a.into(), b.into()))
}

/// Bounds every later send and receive on `socket` (`SO_SNDTIMEO` / `SO_RCVTIMEO`): one that
/// waits longer fails with `TimedOut`. `None`: they wait as long as it takes.
pub fn set_timeouts(socket: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<()> {
    let sock = socket2::SockRef::from(&socket);
    sock.set_read_timeout(timeout)?;
    sock.set_write_timeout(timeout)
}

/// The space a control message with `n` descriptors takes, in 8-byte words (aligned for
/// `cmsghdr`).
fn control_words(n: usize) -> usize {
    // SAFETY: CMSG_SPACE only computes a size from its argument.
    let bytes = unsafe { libc::CMSG_SPACE((n * FD_SIZE) as libc::c_uint) } as usize;
    bytes.div_ceil(8)
}

/// Sends `data` as one message with `fds` attached. A message is sent whole or not at all.
pub fn send(socket: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} descriptors in one message (at most {MAX_FDS})",
                fds.len()
            ),
        ));
    }
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    let mut control = vec![0u64; control_words(fds.len())];
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(control.as_slice()) as _;
        // SAFETY: msg_control points at a zeroed, 8-byte-aligned buffer of msg_controllen
        // bytes, large enough (CMSG_SPACE) for one header and fds.len() descriptors, so
        // CMSG_FIRSTHDR is non-null and the header and data written lie inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN((fds.len() * FD_SIZE) as libc::c_uint) as _;
            let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    loop {
        // SAFETY: msg points at the iovec and control buffer above, both alive for the call;
        // the descriptors named in it are borrowed, so open.
        let n = unsafe { libc::sendmsg(socket.as_raw_fd(), &raw const msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            // A sequenced-packet socket sends a message whole or fails (EMSGSIZE).
            return match usize::try_from(n) {
                Ok(n) if n == data.len() => Ok(()),
                _ => Err(io::Error::other("the message was sent short")),
            };
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => return Err(io::ErrorKind::TimedOut.into()),
            _ => return Err(e),
        }
    }
}

/// Receives one message into `buf`: its length and the descriptors that came with it.
/// `Ok((0, []))` when the peer has closed its end. A message longer than `buf`, or with more
/// descriptors than [`MAX_FDS`], is an error (and its descriptors are closed).
pub fn recv(socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = vec![0u64; control_words(MAX_FDS)];
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(control.as_slice()) as _;
    let n = loop {
        // SAFETY: msg points at the iovec (over buf) and the control buffer, both alive and
        // writable for the call, with their true lengths.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => return Err(io::ErrorKind::TimedOut.into()),
            _ => return Err(e),
        }
    };
    // Take ownership of every descriptor first, so that each is closed however this ends.
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control with msg_controllen bytes of well-formed control
    // messages; CMSG_FIRSTHDR / CMSG_NXTHDR walk them within that length, and an
    // SCM_RIGHTS message's data holds (cmsg_len - CMSG_LEN(0)) / 4 descriptors, each newly
    // installed in this process and owned by nobody else.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..bytes / FD_SIZE {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a message longer than {} bytes", buf.len()),
        ));
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a message's descriptors were cut short (too many, or this process is out of descriptors)",
        ));
    }
    Ok((n, fds))
}

/// Starts `cmd` with `fd` open in the child as descriptor number `at` (not close-on-exec);
/// every other descriptor of this process stays close-on-exec as it is.
pub fn spawn_inheriting(cmd: &mut Command, fd: BorrowedFd<'_>, at: RawFd) -> io::Result<Child> {
    let raw = fd.as_raw_fd();
    // SAFETY: the closure runs in the child between fork and exec, and calls only dup2 and
    // fcntl, which are async-signal-safe; it allocates nothing. `raw` is open in the child
    // (fork copies it, and `fd` is borrowed until spawn has returned, after the exec).
    unsafe {
        cmd.pre_exec(move || {
            if raw == at {
                // dup2 onto itself would leave close-on-exec set.
                let flags = libc::fcntl(at, libc::F_GETFD);
                if flags < 0 || libc::fcntl(at, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(raw, at) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // A binary just written (a package upgrade, a copy) may still be open for writing in a
    // process that forked meanwhile, until that one execs: the kernel then says ETXTBSY.
    // That lasts moments; wait them out rather than fail the upgrade.
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            spawned => return spawned,
        }
    }
}

/// Takes ownership of descriptor `fd`, inherited from the parent, after checking that it is
/// open and a Unix sequenced-packet socket; marks it close-on-exec.
pub fn adopt_inherited(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor's flags; it fails with EBADF when not open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open (checked above) and was given to this process to own;
    // nothing else in it has taken it (it is read from the environment once, at start-up).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let sock = socket2::SockRef::from(&owned);
    if sock.domain()? != Domain::UNIX || sock.r#type()? != Type::SEQPACKET {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {fd} is not a Unix sequenced-packet socket"),
        ));
    }
    sock.set_cloexec(true)?;
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn descriptors_travel_with_their_message_and_limits_hold() {
        let (a, b) = seqpacket_pair().unwrap();
        set_timeouts(b.as_fd(), Some(Duration::from_millis(200))).unwrap();
        let (p, q) = seqpacket_pair().unwrap();
        send(a.as_fd(), b"two", &[p.as_fd(), q.as_fd()]).unwrap();
        send(a.as_fd(), b"none", &[]).unwrap();
        let mut buf = [0u8; 16];
        let (n, fds) = recv(b.as_fd(), &mut buf).unwrap();
        assert_eq!((&buf[..n], fds.len()), (&b"two"[..], 2));
        // The received copies are live: a message sent on one arrives on the original peer.
        send(fds[0].as_fd(), b"via copy", &[]).unwrap();
        set_timeouts(q.as_fd(), Some(Duration::from_millis(200))).unwrap();
        let (n, _) = recv(q.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"via copy");
        let (n, fds) = recv(b.as_fd(), &mut buf).unwrap();
        assert_eq!((&buf[..n], fds.len()), (&b"none"[..], 0));
        // Nothing more: the timeout says so.
        let e = recv(b.as_fd(), &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        // Too long for the buffer: refused, not cut silently.
        send(a.as_fd(), &[7u8; 64], &[p.as_fd()]).unwrap();
        let e = recv(b.as_fd(), &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let many: Vec<_> = (0..=MAX_FDS).map(|_| p.as_fd()).collect();
        assert!(send(a.as_fd(), b"x", &many).is_err());
        drop(a);
        assert_eq!(
            recv(b.as_fd(), &mut buf).unwrap().0,
            0,
            "closed peer reads as 0"
        );
    }
}
