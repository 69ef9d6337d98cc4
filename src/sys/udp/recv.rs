//! Batched receive: one `recvmmsg(2)` fills a caller-owned [`RecvBatch`] with up to
//! [`MAX_BATCH`] datagrams, each with its source, the address it was sent to (`PKTINFO`, on
//! sockets that ask for it) and, when GRO coalesced a run from one source, the size of its
//! segments, which [`Datagram::segments`] splits again.
//!
//! The batch's buffers are allocated once (a [`RECV_SLOT`] per message, so nothing is ever
//! truncated); the message headers that point into them are rebuilt on the stack for each
//! call, so the batch holds no pointers and may move between threads.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};

use super::cmsg::{self, CONTROL_LEN, Control};
use super::{MAX_BATCH, RECV_SLOT, addr};

/// Reusable storage for one `recvmmsg` call and what it received.
pub struct RecvBatch {
    /// `capacity` slots of `RECV_SLOT` bytes, back to back.
    bufs: Box<[u8]>,
    names: Box<[libc::sockaddr_storage]>,
    controls: Box<[Control]>,
    meta: Box<[Meta]>,
    filled: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("capacity", &self.capacity())
            .field("filled", &self.filled)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Meta {
    len: usize,
    source: Option<SocketAddr>,
    local: Option<IpAddr>,
    segment: Option<u16>,
    truncated: bool,
}

/// One received datagram, or one run of them that GRO coalesced.
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    /// The bytes, every segment of a coalesced run back to back.
    pub payload: &'a [u8],
    /// Who sent it.
    pub source: Option<SocketAddr>,
    /// The address it was sent to, on sockets bound with `PKTINFO` (wildcard binds).
    pub local: Option<IpAddr>,
    /// The size of every segment but the last when GRO coalesced a run.
    pub segment: Option<usize>,
    /// The datagram was longer than the slot and was cut; never set with [`RECV_SLOT`]
    /// slots, kept so a caller can count rather than forward a cut datagram if it happens.
    pub truncated: bool,
}

impl<'a> Datagram<'a> {
    /// The datagrams as the sender sent them: the run cut at every `segment` bytes, or the
    /// payload alone. An empty payload is one empty datagram.
    pub fn segments(&self) -> Segments<'a> {
        Segments {
            rest: self.payload,
            size: self.segment.unwrap_or(0),
            done: false,
        }
    }

    /// The address the datagram was sent to: what `PKTINFO` said, else the socket's own
    /// address (`bound`), which is the answer on a socket bound to one address.
    pub fn local_or(&self, bound: SocketAddr) -> SocketAddr {
        SocketAddr::new(self.local.unwrap_or(bound.ip()), bound.port())
    }
}

/// The datagrams of one receive, in order (see [`Datagram::segments`]).
#[derive(Debug, Clone)]
pub struct Segments<'a> {
    rest: &'a [u8],
    /// 0: not coalesced, the payload is one datagram.
    size: usize,
    done: bool,
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.done {
            return None;
        }
        if self.size == 0 || self.rest.len() <= self.size {
            self.done = true;
            return Some(self.rest);
        }
        let (head, tail) = self.rest.split_at(self.size);
        self.rest = tail;
        Some(head)
    }
}

impl RecvBatch {
    /// Storage for up to `messages` datagrams per call (clamped to 1..=[`MAX_BATCH`]):
    /// 64 KiB per message, allocated zeroed, so the kernel maps pages only as they are used.
    pub fn new(messages: usize) -> RecvBatch {
        let n = messages.clamp(1, MAX_BATCH);
        RecvBatch {
            bufs: vec![0; n * RECV_SLOT].into_boxed_slice(),
            names: (0..n).map(|_| addr::empty()).collect(),
            controls: vec![Control::ZERO; n].into_boxed_slice(),
            meta: vec![Meta::default(); n].into_boxed_slice(),
            filled: 0,
        }
    }

    /// Messages one call may receive.
    pub fn capacity(&self) -> usize {
        self.meta.len()
    }

    /// Messages the last call received.
    pub fn len(&self) -> usize {
        self.filled
    }

    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// The `i`th message of the last call.
    pub fn get(&self, i: usize) -> Option<Datagram<'_>> {
        let meta = self.meta.get(i).filter(|_| i < self.filled)?;
        let start = i * RECV_SLOT;
        Some(Datagram {
            payload: self.bufs.get(start..start + meta.len)?,
            source: meta.source,
            local: meta.local,
            segment: meta.segment.map(usize::from),
            truncated: meta.truncated,
        })
    }

    /// The messages of the last call, in the order they arrived.
    pub fn iter(&self) -> impl Iterator<Item = Datagram<'_>> + '_ {
        (0..self.filled).filter_map(|i| self.get(i))
    }
}

/// Receives what is queued on `socket`, up to the batch's capacity, replacing the batch's
/// previous contents; returns how many messages arrived. A non-blocking socket with nothing
/// queued answers `WouldBlock`; a blocking one waits for the first message only
/// (`MSG_WAITFORONE`). On a connected socket the kernel may report the peer's ICMP errors
/// here (`ConnectionRefused`).
pub fn recv_batch(socket: BorrowedFd<'_>, batch: &mut RecvBatch) -> io::Result<usize> {
    batch.filled = 0;
    let n = batch.capacity();
    // SAFETY: iovec and mmsghdr are plain C data; all-zero (null pointers, zero lengths) is
    // a valid value, and every entry used is filled in below.
    let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
    let slots = batch.bufs.chunks_exact_mut(RECV_SLOT);
    let names = batch.names.iter_mut();
    let controls = batch.controls.iter_mut();
    for (i, ((slot, name), control)) in slots.zip(names).zip(controls).enumerate() {
        iovs[i] = libc::iovec {
            iov_base: slot.as_mut_ptr().cast(),
            iov_len: slot.len(),
        };
        let hdr = &mut hdrs[i].msg_hdr;
        hdr.msg_name = (&raw mut *name).cast();
        hdr.msg_namelen = super::socklen_of::<libc::sockaddr_storage>();
        hdr.msg_iov = &raw mut iovs[i];
        hdr.msg_iovlen = 1;
        hdr.msg_control = control.0.as_mut_ptr().cast();
        hdr.msg_controllen = CONTROL_LEN as _;
    }
    let vlen = libc::c_uint::try_from(n).unwrap_or(1);
    let received = loop {
        // SAFETY: the descriptor is open (borrowed). The first `n` headers point at live,
        // writable buffers of the lengths they state — one slot, one sockaddr_storage and one
        // control buffer each, owned by `batch`, which is borrowed mutably for the whole
        // call — and nothing else touches them until the kernel returns. A null timeout is
        // allowed and means none.
        let rc = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                hdrs.as_mut_ptr(),
                vlen,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if rc >= 0 {
            break usize::try_from(rc).unwrap_or(0).min(n);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    for (i, mmsg) in hdrs.iter().take(received).enumerate() {
        let hdr = &mmsg.msg_hdr;
        let control_len = super::as_len(hdr.msg_controllen).min(CONTROL_LEN);
        let control = cmsg::parse(&batch.controls[i].0[..control_len]);
        batch.meta[i] = Meta {
            len: super::as_len(mmsg.msg_len).min(RECV_SLOT),
            source: addr::read(&batch.names[i], hdr.msg_namelen),
            local: control.local,
            segment: control.segment,
            truncated: hdr.msg_flags & libc::MSG_TRUNC != 0,
        };
    }
    batch.filled = received;
    Ok(received)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(payload: &[u8], segment: Option<usize>) -> Vec<&[u8]> {
        let d = Datagram {
            payload,
            source: None,
            local: None,
            segment,
            truncated: false,
        };
        d.segments().collect()
    }

    #[test]
    fn segments_cut_a_run_and_keep_a_short_last_one() {
        let run: Vec<u8> = (0..10).collect();
        assert_eq!(segments(&run, Some(4)), [&run[..4], &run[4..8], &run[8..]]);
        assert_eq!(segments(&run, Some(5)), [&run[..5], &run[5..]]);
        assert_eq!(segments(&run, Some(10)), [&run[..]]);
        assert_eq!(segments(&run, Some(64)), [&run[..]]);
        assert_eq!(segments(&run, None), [&run[..]]);
    }

    #[test]
    fn an_empty_datagram_is_one_empty_segment() {
        assert_eq!(segments(&[], None), [&[] as &[u8]]);
        assert_eq!(segments(&[], Some(100)), [&[] as &[u8]]);
    }

    #[test]
    fn local_or_falls_back_to_the_bound_address() {
        let bound: SocketAddr = "10.0.0.1:53".parse().unwrap();
        let mut d = Datagram {
            payload: &[],
            source: None,
            local: None,
            segment: None,
            truncated: false,
        };
        assert_eq!(d.local_or(bound), bound);
        d.local = Some("10.0.0.9".parse().unwrap());
        assert_eq!(d.local_or(bound), "10.0.0.9:53".parse().unwrap());
    }
}
