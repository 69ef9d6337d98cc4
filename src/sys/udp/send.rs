//! Batched send: a caller-owned [`SendBatch`] queues datagrams (payloads copied into one
//! buffer, each with its destination and optional source address) and [`send_batch`] hands
//! them to `sendmmsg(2)`, [`MAX_BATCH`] messages per call.
//!
//! A run of equal-sized datagrams to one destination ([`SendBatch::push_segments`], what GRO
//! hands over on receive) goes out as one message with `UDP_SEGMENT` when the socket may use
//! it, and the kernel cuts it. When the kernel refuses that for a reason that will not go
//! away (`EIO`: the route's device cannot checksum it; `EINVAL`, `ENOPROTOOPT`: the socket or
//! kernel cannot segment), the socket's [`OffloadState`] stops using it and the same bytes go
//! out one datagram per message; `EMSGSIZE` (segments too big for this route) splits only
//! that run. Either way the receiver sees the same datagrams.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};

use super::cmsg::{Control, Writer};
use super::{MAX_BATCH, MAX_GSO_SEGMENTS, MAX_UDP_PAYLOAD, OffloadState, RECV_SLOT, addr};

/// Where a datagram goes and where it comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Route {
    /// The destination; `None` on a connected socket.
    pub dst: Option<SocketAddr>,
    /// The source address (a `PKTINFO` message): the local address a client sent to, so the
    /// reply comes from it on a wildcard bind. `None`: whatever the kernel picks.
    pub src: Option<IpAddr>,
}

/// What one [`send_batch`] call handed to the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Datagrams, a segmented run counting each of its segments.
    pub datagrams: usize,
    pub bytes: usize,
}

/// Datagrams queued for one socket, sent in order.
pub struct SendBatch {
    buf: Vec<u8>,
    entries: Vec<Entry>,
    max_entries: usize,
    max_bytes: usize,
    /// The first entry not wholly sent, and how many of its bytes went already (only ever
    /// non-zero for a run going out one datagram per message).
    next: usize,
    offset: usize,
    names: Box<[libc::sockaddr_storage]>,
    controls: Box<[Control]>,
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("entries", &self.entries.len())
            .field("bytes", &self.buf.len())
            .field("next", &self.next)
            .finish()
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    start: usize,
    len: usize,
    /// 0: one datagram; else a run of `segment`-byte datagrams (the last one shorter).
    segment: usize,
    route: Route,
    /// Send this run one datagram per message even where the socket could segment it.
    split: bool,
}

/// One message of a `sendmmsg` call: bytes `from..to` of an entry.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    entry: usize,
    from: usize,
    to: usize,
    gso: bool,
}

impl SendBatch {
    /// Room for `messages` entries (at least 1) and `bytes` of payload (at least
    /// [`RECV_SLOT`], so any single datagram fits an empty batch). Allocated here, once.
    pub fn new(messages: usize, bytes: usize) -> SendBatch {
        let max_entries = messages.max(1);
        let max_bytes = bytes.max(RECV_SLOT);
        SendBatch {
            buf: Vec::with_capacity(max_bytes),
            entries: Vec::with_capacity(max_entries),
            max_entries,
            max_bytes,
            next: 0,
            offset: 0,
            names: (0..MAX_BATCH).map(|_| addr::empty()).collect(),
            controls: vec![Control::ZERO; MAX_BATCH].into_boxed_slice(),
        }
    }

    /// Queues one datagram; false when the batch has no room for it (send first). A datagram
    /// to the same place as the one before it, and no longer, joins it in one run (one
    /// `UDP_SEGMENT` message where the socket may use it): a session's replies read in one
    /// batch are usually that, and a run costs the kernel one trip down the stack instead of
    /// one per datagram.
    pub fn push(&mut self, payload: &[u8], route: Route) -> bool {
        self.extend_run(payload, route) || self.push_segments(payload, 0, route)
    }

    /// Appends `payload` to the last entry as one more segment, when that keeps it a valid
    /// run: same route, every segment so far full, this one no longer, within the limits of
    /// one message, and nothing of the entry sent yet.
    fn extend_run(&mut self, payload: &[u8], route: Route) -> bool {
        let index = self.entries.len().wrapping_sub(1);
        let fresh = index > self.next || (index == self.next && self.offset == 0);
        let Some(last) = self.entries.last_mut() else {
            return false;
        };
        let segment = if last.segment == 0 {
            last.len
        } else {
            last.segment
        };
        let fits = fresh
            && !payload.is_empty()
            && segment > 0
            && last.route == route
            && !last.split
            && payload.len() <= segment
            && last.len % segment == 0
            && last.len / segment < MAX_GSO_SEGMENTS
            && last.len + payload.len() <= MAX_UDP_PAYLOAD
            && last.start + last.len == self.buf.len()
            && self.buf.len() + payload.len() <= self.max_bytes;
        if !fits {
            return false;
        }
        last.len += payload.len();
        last.segment = segment;
        self.buf.extend_from_slice(payload);
        true
    }

    /// Queues `payload` as datagrams of `segment` bytes, the last one shorter (a run GRO
    /// coalesced; `segment` 0 means one datagram). A run longer than one `UDP_SEGMENT`
    /// message may carry is queued as several. All or nothing: false when it does not fit.
    pub fn push_segments(&mut self, payload: &[u8], segment: usize, route: Route) -> bool {
        let segment = if segment >= payload.len() { 0 } else { segment };
        let per_entry = match segment {
            0 => payload.len().max(1),
            s => (MAX_UDP_PAYLOAD / s).clamp(1, MAX_GSO_SEGMENTS) * s,
        };
        let needed = payload.len().div_ceil(per_entry).max(1);
        if self.entries.len() + needed > self.max_entries
            || self.buf.len() + payload.len() > self.max_bytes
        {
            return false;
        }
        let mut start = self.buf.len();
        self.buf.extend_from_slice(payload);
        for _ in 0..needed {
            let len = per_entry.min(self.buf.len() - start);
            self.entries.push(Entry {
                start,
                len,
                segment: if len > segment { segment } else { 0 },
                route,
                split: false,
            });
            start += len;
        }
        true
    }

    /// Entries (datagrams or runs) not wholly sent yet.
    pub fn pending(&self) -> usize {
        self.entries.len() - self.next
    }

    /// Datagrams not sent yet, each segment of a run counting as one.
    pub fn pending_datagrams(&self) -> usize {
        let mut offset = self.offset;
        let mut n = 0;
        for e in self.entries.iter().skip(self.next) {
            let left = e.len - offset.min(e.len);
            n += match e.segment {
                0 => 1,
                s => left.div_ceil(s).max(1),
            };
            offset = 0;
        }
        n
    }

    pub fn is_empty(&self) -> bool {
        self.pending() == 0
    }

    /// Forgets everything queued, sent or not.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.entries.clear();
        self.next = 0;
        self.offset = 0;
    }

    /// The messages of the next call, from the first unsent byte on.
    fn plan(&self, gso: bool, spans: &mut [Span; MAX_BATCH]) -> usize {
        let mut n = 0;
        let mut offset = self.offset;
        for (index, e) in self.entries.iter().enumerate().skip(self.next) {
            if e.segment > 0 && gso && !e.split && offset == 0 {
                spans[n] = Span {
                    entry: index,
                    from: 0,
                    to: e.len,
                    gso: true,
                };
                n += 1;
            } else {
                let step = if e.segment == 0 { e.len } else { e.segment };
                loop {
                    let to = (offset + step).min(e.len);
                    spans[n] = Span {
                        entry: index,
                        from: offset,
                        to,
                        gso: false,
                    };
                    n += 1;
                    offset = to;
                    if offset >= e.len || n == MAX_BATCH {
                        break;
                    }
                }
            }
            offset = 0;
            if n == MAX_BATCH {
                break;
            }
        }
        n
    }

    /// Marks `spans` (the first ones of the last plan) as gone; returns what they carried.
    fn advance(&mut self, spans: &[Span]) -> Sent {
        let mut sent = Sent::default();
        for span in spans {
            let e = self.entries[span.entry];
            sent.bytes += span.to - span.from;
            sent.datagrams += match (span.gso, e.segment) {
                (true, s) if s > 0 => (span.to - span.from).div_ceil(s),
                _ => 1,
            };
            (self.next, self.offset) = if span.to >= e.len {
                (span.entry + 1, 0)
            } else {
                (span.entry, span.to)
            };
        }
        if self.is_empty() {
            self.clear();
        }
        sent
    }
}

/// Sends the batch's queued datagrams in order until all are sent (the batch is then empty
/// and reusable) or the socket's buffer is full (`Ok` with what went, or `WouldBlock` when
/// nothing did; the rest stays queued).
///
/// A datagram the kernel refuses is dropped from the batch and its error returned (when
/// nothing went before it in this call; otherwise the call returns what went and the next one
/// reports it), so one unreachable client never holds the others back.
pub fn send_batch(
    socket: BorrowedFd<'_>,
    batch: &mut SendBatch,
    offload: &OffloadState,
) -> io::Result<Sent> {
    let mut total = Sent::default();
    let mut spans = [Span::default(); MAX_BATCH];
    while !batch.is_empty() {
        let n = batch.plan(offload.gso(), &mut spans);
        match sendmmsg(socket, batch, &spans[..n]) {
            // Never zero for a non-empty call; stop rather than spin if it were.
            Ok(0) => break,
            Ok(k) => {
                let sent = batch.advance(&spans[..k.min(n)]);
                total.datagrams += sent.datagrams;
                total.bytes += sent.bytes;
            }
            Err(e) => {
                let first = spans[0];
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT) if first.gso => {
                        offload.disable_gso();
                        continue;
                    }
                    Some(libc::EMSGSIZE) if first.gso => {
                        batch.entries[first.entry].split = true;
                        continue;
                    }
                    _ => {}
                }
                if total.datagrams > 0 {
                    return Ok(total);
                }
                if e.kind() != io::ErrorKind::WouldBlock {
                    batch.advance(&spans[..1]);
                }
                return Err(e);
            }
        }
    }
    Ok(total)
}

/// One `sendmmsg` call for `spans`; the number of messages the kernel took (at least one).
fn sendmmsg(socket: BorrowedFd<'_>, batch: &mut SendBatch, spans: &[Span]) -> io::Result<usize> {
    // SAFETY: iovec and mmsghdr are plain C data; all-zero (null pointers, zero lengths) is
    // a valid value, and every entry used is filled in below.
    let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
    let names = batch.names.iter_mut();
    let controls = batch.controls.iter_mut();
    for (i, ((span, name), control)) in spans.iter().zip(names).zip(controls).enumerate() {
        let e = batch.entries[span.entry];
        let bytes = &batch.buf[e.start + span.from..e.start + span.to];
        iovs[i] = libc::iovec {
            // The kernel only reads through it.
            iov_base: bytes.as_ptr().cast_mut().cast(),
            iov_len: bytes.len(),
        };
        let hdr = &mut hdrs[i].msg_hdr;
        hdr.msg_iov = &raw mut iovs[i];
        hdr.msg_iovlen = 1;
        if let Some(dst) = e.route.dst {
            hdr.msg_namelen = addr::write(dst, name);
            hdr.msg_name = (&raw mut *name).cast();
        }
        let mut w = Writer::new(&mut control.0);
        // Neither can fail: the control buffer holds both messages with room to spare.
        if let Some(src) = e.route.src {
            w.source(src);
        }
        if span.gso {
            w.segment(u16::try_from(e.segment).unwrap_or(u16::MAX));
        }
        if w.len() > 0 {
            hdr.msg_controllen = w.len() as _;
            hdr.msg_control = control.0.as_mut_ptr().cast();
        }
    }
    let vlen = libc::c_uint::try_from(spans.len()).unwrap_or(1);
    // SAFETY: the descriptor is open (borrowed). The first `spans.len()` headers point at
    // live buffers of the lengths they state — payload bytes, a sockaddr_storage and a
    // control buffer in `batch`, which is borrowed for the whole call — or at nothing (null,
    // zero length); the kernel only reads them.
    let rc = unsafe { libc::sendmmsg(socket.as_raw_fd(), hdrs.as_mut_ptr(), vlen, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(rc).unwrap_or(0).min(spans.len()))
}
