//! PROXY protocol v2: a 12-byte signature, a version and command byte, a family and
//! transport byte, a big-endian length, then that many bytes: the address block of the
//! family, then TLVs (kept opaque).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Addresses, Decoded, Header, Invalid, Transport, Version};

pub(super) const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The longest v2 header accepted after its fixed 16 bytes: room for an IPv6 address block
/// and the TLVs balancers send in practice (cloud load balancers' endpoint ids, TLS facts,
/// a CRC), while bounding what a connection can make tollgate hold before it is served.
pub const MAX_V2_LEN: usize = 4096;

const FIXED: usize = 16;
const LOCAL: u8 = 0x0;
const PROXY: u8 = 0x1;
const IPV4_BLOCK: usize = 12;
const IPV6_BLOCK: usize = 36;
const UNIX_BLOCK: usize = 216;

pub(super) fn decode(buf: &[u8]) -> Result<Decoded, Invalid> {
    // The signature agrees so far; the version, command and length come next.
    if buf.len() > 12 && buf[12] >> 4 != 2 {
        return Err(Invalid::V2Version);
    }
    if buf.len() > 12 && !matches!(buf[12] & 0x0f, LOCAL | PROXY) {
        return Err(Invalid::V2Command);
    }
    if buf.len() > 13 && family(buf[13]).is_none() {
        return Err(Invalid::V2Family);
    }
    if buf.len() < FIXED {
        return Ok(Decoded::Incomplete);
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > MAX_V2_LEN {
        return Err(Invalid::V2TooLong);
    }
    let command = buf[12] & 0x0f;
    let (block, transport) = family(buf[13]).unwrap_or((Block::None, Transport::Stream));
    let needed = match block {
        Block::None => 0,
        Block::Ipv4 => IPV4_BLOCK,
        Block::Ipv6 => IPV6_BLOCK,
        Block::Unix => UNIX_BLOCK,
    };
    // LOCAL ignores the address block, whatever it holds, so it needs none.
    if command == PROXY && len < needed {
        return Err(Invalid::V2ShortAddresses);
    }
    let Some(body) = buf.get(FIXED..FIXED + len) else {
        return Ok(Decoded::Incomplete);
    };
    let (addresses, tlvs) = if command == LOCAL {
        // TLVs after a LOCAL header's address block cannot be told from the block itself
        // (its size depends on a family LOCAL says to ignore): nothing is kept.
        (None, &[][..])
    } else {
        let addresses = match block {
            Block::Ipv4 => Some(ipv4(body, transport)),
            Block::Ipv6 => Some(ipv6(body, transport)),
            Block::None | Block::Unix => None,
        };
        (addresses, &body[needed..])
    };
    Ok(Decoded::Done {
        header: Header {
            version: Version::V2,
            addresses,
            tlvs: tlvs.to_vec(),
        },
        len: FIXED + len,
    })
}

#[derive(Clone, Copy)]
enum Block {
    None,
    Ipv4,
    Ipv6,
    Unix,
}

/// The specification's table of family and transport bytes; `None` for anything else.
fn family(byte: u8) -> Option<(Block, Transport)> {
    Some(match byte {
        0x00 => (Block::None, Transport::Stream),
        0x11 => (Block::Ipv4, Transport::Stream),
        0x12 => (Block::Ipv4, Transport::Datagram),
        0x21 => (Block::Ipv6, Transport::Stream),
        0x22 => (Block::Ipv6, Transport::Datagram),
        0x31 => (Block::Unix, Transport::Stream),
        0x32 => (Block::Unix, Transport::Datagram),
        _ => return None,
    })
}

fn ipv4(b: &[u8], transport: Transport) -> Addresses {
    let ip = |i: usize| Ipv4Addr::new(b[i], b[i + 1], b[i + 2], b[i + 3]);
    let port = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    Addresses {
        source: SocketAddr::from((ip(0), port(8))),
        destination: SocketAddr::from((ip(4), port(10))),
        transport,
    }
}

fn ipv6(b: &[u8], transport: Transport) -> Addresses {
    let ip = |i: usize| {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&b[i..i + 16]);
        Ipv6Addr::from(octets)
    };
    let port = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    Addresses {
        source: SocketAddr::from((ip(0), port(32))),
        destination: SocketAddr::from((ip(16), port(34))),
        transport,
    }
}

pub(super) fn encode(addresses: Option<Addresses>, tlvs: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&SIGNATURE);
    let Some(a) = addresses else {
        // LOCAL, no address block: the receiver uses the connection's own addresses.
        out.extend_from_slice(&[0x20, 0x00, 0, 0]);
        return;
    };
    let datagram = a.transport == Transport::Datagram;
    let (fam, block) = match (a.source, a.destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            let mut block = Vec::with_capacity(IPV4_BLOCK);
            block.extend_from_slice(&s.ip().octets());
            block.extend_from_slice(&d.ip().octets());
            block.extend_from_slice(&s.port().to_be_bytes());
            block.extend_from_slice(&d.port().to_be_bytes());
            (0x11 + u8::from(datagram), block)
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a {
                SocketAddr::V6(v6) => v6.ip().octets(),
                SocketAddr::V4(v4) => v4.ip().to_ipv6_mapped().octets(),
            };
            let mut block = Vec::with_capacity(IPV6_BLOCK);
            block.extend_from_slice(&v6(s));
            block.extend_from_slice(&v6(d));
            block.extend_from_slice(&s.port().to_be_bytes());
            block.extend_from_slice(&d.port().to_be_bytes());
            (0x21 + u8::from(datagram), block)
        }
    };
    // TLVs are passed on only whole and within the limit a receiver like this one accepts.
    let tlvs = if block.len() + tlvs.len() <= MAX_V2_LEN {
        tlvs
    } else {
        &[]
    };
    let len = u16::try_from(block.len() + tlvs.len()).unwrap_or(0);
    out.extend_from_slice(&[0x21, fam]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&block);
    out.extend_from_slice(tlvs);
}
