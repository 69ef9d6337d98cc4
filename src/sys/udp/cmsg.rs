//! Control messages (`cmsg(3)`), read and written over byte slices with every length
//! checked, instead of walking raw pointers with `CMSG_NXTHDR`: glibc's version reads the
//! next header's length from bytes a previous message may have left in a reused buffer.
//! The layout follows `CMSG_LEN` / `CMSG_SPACE`: a `cmsghdr`, then the data, each padded to
//! the alignment of `size_t`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Room for the control messages of one datagram: a `PKTINFO` (40 bytes for IPv6) and a GRO
/// or GSO segment size (24), with as much again to spare.
pub(super) const CONTROL_LEN: usize = 128;

/// One datagram's control buffer, aligned for `cmsghdr` as the kernel requires.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub(super) struct Control(pub [u8; CONTROL_LEN]);

impl Control {
    pub(super) const ZERO: Control = Control([0; CONTROL_LEN]);
}

const HEADER: usize = align(size_of::<libc::cmsghdr>());

const fn align(len: usize) -> usize {
    let to = size_of::<usize>();
    (len + to - 1) & !(to - 1)
}

/// What a received datagram's control messages said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Received {
    /// The destination address of the datagram (`IP_PKTINFO`'s `ipi_addr`, the address in
    /// the packet's header, or `IPV6_PKTINFO`'s `ipi6_addr`).
    pub local: Option<IpAddr>,
    /// The size of every segment but the last, when GRO coalesced a run (`UDP_GRO`).
    pub segment: Option<u16>,
}

/// Parses the control messages in `bytes` (the part the kernel filled). Unknown messages are
/// skipped; a malformed length ends the walk.
pub(super) fn parse(mut bytes: &[u8]) -> Received {
    let mut out = Received::default();
    while bytes.len() >= HEADER {
        // SAFETY: at least a whole cmsghdr is left in `bytes`; cmsghdr is plain integers,
        // valid for any bit pattern, and the read is unaligned-tolerant.
        let hdr = unsafe { bytes.as_ptr().cast::<libc::cmsghdr>().read_unaligned() };
        let len = super::as_len(hdr.cmsg_len);
        if len < HEADER || len > bytes.len() {
            break;
        }
        let data = &bytes[HEADER..len];
        match (hdr.cmsg_level, hdr.cmsg_type) {
            (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                if let Some(info) = read::<libc::in_pktinfo>(data) {
                    let ip = Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr));
                    out.local = Some(IpAddr::V4(ip));
                }
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                if let Some(info) = read::<libc::in6_pktinfo>(data) {
                    out.local = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
                }
            }
            (libc::SOL_UDP, libc::UDP_GRO) => {
                if let Some(size) = read::<libc::c_int>(data) {
                    out.segment = u16::try_from(size).ok().filter(|&s| s > 0);
                }
            }
            _ => {}
        }
        bytes = bytes.get(align(len)..).unwrap_or_default();
    }
    out
}

/// One value of a plain C type from the start of `data`, when `data` is long enough.
fn read<T: Copy>(data: &[u8]) -> Option<T> {
    if data.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: `data` holds at least size_of::<T>() bytes; every T read here (in_pktinfo,
    // in6_pktinfo, c_int) is plain integers, valid for any bit pattern; read_unaligned
    // tolerates the cmsg data's alignment.
    Some(unsafe { data.as_ptr().cast::<T>().read_unaligned() })
}

/// Writes control messages one after the other into a buffer.
pub(super) struct Writer<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Writer<'a> {
    pub(super) fn new(buf: &'a mut [u8]) -> Writer<'a> {
        Writer { buf, len: 0 }
    }

    /// Bytes written so far (`msg_controllen`).
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The source address of a datagram: `IP_PKTINFO` with `ipi_spec_dst` set, or
    /// `IPV6_PKTINFO` with `ipi6_addr` set (interface 0: the kernel routes as usual).
    pub(super) fn source(&mut self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => self.put(
                libc::IPPROTO_IP,
                libc::IP_PKTINFO,
                libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(v4).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                },
            ),
            IpAddr::V6(v6) => self.put(
                libc::IPPROTO_IPV6,
                libc::IPV6_PKTINFO,
                libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: v6.octets(),
                    },
                    ipi6_ifindex: 0,
                },
            ),
        }
    }

    /// `UDP_SEGMENT`: the kernel cuts the message into datagrams of `size` bytes (the last
    /// one shorter).
    pub(super) fn segment(&mut self, size: u16) -> bool {
        self.put(libc::SOL_UDP, libc::UDP_SEGMENT, size)
    }

    /// Appends one message; false (and nothing written) when it does not fit.
    fn put<T: Copy>(&mut self, level: libc::c_int, kind: libc::c_int, value: T) -> bool {
        let space = HEADER + align(size_of::<T>());
        let Some(out) = self.buf.get_mut(self.len..self.len + space) else {
            return false;
        };
        out.fill(0);
        // SAFETY: cmsghdr is plain C data; all-zero bytes are a valid value.
        let mut hdr: libc::cmsghdr = unsafe { std::mem::zeroed() };
        hdr.cmsg_len = (HEADER + size_of::<T>()) as _;
        hdr.cmsg_level = level;
        hdr.cmsg_type = kind;
        // SAFETY: `out` holds `space` bytes: a cmsghdr (HEADER >= its size) and then the
        // value at HEADER; both writes are unaligned-tolerant and stay inside `out`.
        unsafe {
            out.as_mut_ptr()
                .cast::<libc::cmsghdr>()
                .write_unaligned(hdr);
            out.as_mut_ptr()
                .add(HEADER)
                .cast::<T>()
                .write_unaligned(value);
        }
        self.len += space;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_messages_parse_back() {
        // IPv6 reads and writes the same field.
        let v6: IpAddr = "::1".parse().unwrap();
        let mut buf = Control::ZERO;
        let mut w = Writer::new(&mut buf.0);
        assert!(w.source(v6));
        assert!(w.segment(1400));
        let len = w.len();
        assert_eq!(parse(&buf.0[..len]).local, Some(v6));
        // IPv4 writes the source as ipi_spec_dst and reads the destination from ipi_addr.
        let mut buf = Control::ZERO;
        let mut w = Writer::new(&mut buf.0);
        let info = libc::in_pktinfo {
            ipi_ifindex: 1,
            ipi_spec_dst: libc::in_addr { s_addr: 0 },
            ipi_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::new(127, 0, 0, 2)).to_be(),
            },
        };
        assert!(w.put(libc::IPPROTO_IP, libc::IP_PKTINFO, info));
        let len = w.len();
        assert_eq!(
            parse(&buf.0[..len]).local,
            Some("127.0.0.2".parse().unwrap())
        );
    }

    #[test]
    fn a_gro_size_parses_and_garbage_stops_the_walk() {
        let mut buf = Control::ZERO;
        let mut w = Writer::new(&mut buf.0);
        assert!(w.put(libc::SOL_UDP, libc::UDP_GRO, 1200 as libc::c_int));
        let len = w.len();
        assert_eq!(parse(&buf.0[..len]).segment, Some(1200));
        // A header claiming more bytes than there are: ignored, no panic.
        let mut bad = buf;
        bad.0[0] = 0xff;
        assert_eq!(parse(&bad.0[..len]), Received::default());
        assert_eq!(parse(&buf.0[..HEADER - 1]), Received::default());
    }

    #[test]
    fn a_full_buffer_refuses_more() {
        let mut small = [0u8; 40];
        let mut w = Writer::new(&mut small);
        assert!(w.segment(1000));
        assert!(!w.source("::1".parse().unwrap()), "40 bytes left 16");
        assert_eq!(w.len(), HEADER + align(2));
    }
}
