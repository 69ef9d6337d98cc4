//! PROXY protocol v1 and v2 (HAProxy's `proxy-protocol.txt`): the header tollgate writes to
//! a backend first, and the strict decoding of the header a trusted balancer in front of
//! tollgate starts its connections with. Pure: bytes in, a header or a reason out.
//!
//! Decoding is never a guess. [`decode`] answers [`Decoded::Incomplete`] while the bytes so
//! far could still become a valid header, and an error as soon as they cannot: a v1 line is
//! at most 107 bytes and ends in CRLF; a v2 header is at most [`MAX_V2_LEN`] bytes after its
//! fixed 16; its version, command and address family are checked against the
//! specification's table. `LOCAL` (v2) and `UNKNOWN` (v1) mean the connection is the
//! sender's own (a health check): whatever address block follows is ignored, and the
//! socket's addresses stand. A `PROXY` command with an address family that carries no IP
//! address (`AF_UNSPEC`, `AF_UNIX`) is accepted the same way, as the specification asks.
//! v2 TLVs are kept as opaque bytes, unparsed, so they can be passed on.

mod v1;
mod v2;

use std::net::SocketAddr;

pub use v2::MAX_V2_LEN;

/// The longest v1 header, CRLF included.
pub const MAX_V1_LEN: usize = 107;

/// The most bytes any accepted header can take: what a reader must be ready to hold.
pub const MAX_HEADER_LEN: usize = 16 + MAX_V2_LEN;

/// Which version to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// What the connection carried, for v2's transport nibble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Stream,
    Datagram,
}

/// What a header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    /// `None`: the connection's own addresses stand (`LOCAL`, `UNKNOWN`, or a family with
    /// no IP address).
    pub addresses: Option<Addresses>,
    /// v2 TLVs, unparsed; empty for v1.
    pub tlvs: Vec<u8>,
}

/// The proxied connection's endpoints, both of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub transport: Transport,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// Not enough bytes yet to tell; read more (within the deadline and the size limit).
    Incomplete,
    /// A header of `len` bytes; what follows it is the client's.
    Done { header: Header, len: usize },
}

/// Why bytes are not a PROXY header. Every one closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Neither signature: the connection does not start with a header.
    NoSignature,
    /// 107 bytes without CRLF, or a line ending in a bare LF.
    V1Unterminated,
    /// A v1 line that is not `PROXY TCP4|TCP6 src dst sport dport` or `PROXY UNKNOWN`.
    V1Malformed(&'static str),
    /// A version nibble other than 2.
    V2Version,
    /// A command other than LOCAL (0) or PROXY (1).
    V2Command,
    /// A family and transport byte outside the specification's table.
    V2Family,
    /// Longer than [`MAX_V2_LEN`].
    V2TooLong,
    /// An address block shorter than its family needs.
    V2ShortAddresses,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::NoSignature => f.write_str("no PROXY protocol signature"),
            Invalid::V1Unterminated => {
                write!(f, "v1 header without CRLF within {MAX_V1_LEN} bytes")
            }
            Invalid::V1Malformed(what) => write!(f, "malformed v1 header: {what}"),
            Invalid::V2Version => f.write_str("v2 header with a version other than 2"),
            Invalid::V2Command => f.write_str("v2 header with an unknown command"),
            Invalid::V2Family => f.write_str("v2 header with an unknown address family"),
            Invalid::V2TooLong => write!(f, "v2 header longer than {MAX_V2_LEN} bytes"),
            Invalid::V2ShortAddresses => {
                f.write_str("v2 address block shorter than its family needs")
            }
        }
    }
}

impl std::error::Error for Invalid {}

/// Decodes the header at the start of `buf`, the bytes received so far.
pub fn decode(buf: &[u8]) -> Result<Decoded, Invalid> {
    if starts(buf, &v2::SIGNATURE) {
        return v2::decode(buf);
    }
    if starts(buf, v1::SIGNATURE) {
        return v1::decode(buf);
    }
    Err(Invalid::NoSignature)
}

/// Whether `buf` and `signature` agree on their common length: `buf` may still become
/// (or already is) a header with that signature.
fn starts(buf: &[u8], signature: &[u8]) -> bool {
    let n = buf.len().min(signature.len());
    buf[..n] == signature[..n]
}

/// Appends the header for a connection from `source` to `destination` to `out`. With
/// `None`, or endpoints of two families (which no header can carry), it says the connection
/// is the sender's own (`UNKNOWN` / v2 `LOCAL`). `tlvs` (v2 only) are passed on as given,
/// as far as they fit.
pub fn encode(version: Version, addresses: Option<Addresses>, tlvs: &[u8], out: &mut Vec<u8>) {
    let addresses = addresses.and_then(Addresses::same_family);
    match version {
        Version::V1 => v1::encode(addresses, out),
        Version::V2 => v2::encode(addresses, tlvs, out),
    }
}

impl Addresses {
    /// Both endpoints in one family: IPv4-mapped IPv6 addresses (a dual-stack socket's view
    /// of an IPv4 client) become IPv4 when both are; `None` when the families still differ.
    pub fn same_family(self) -> Option<Addresses> {
        let plain = |a: SocketAddr| match a {
            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                Some(v4) => SocketAddr::from((v4, v6.port())),
                None => a,
            },
            v4 => v4,
        };
        let (s, d) = (plain(self.source), plain(self.destination));
        if s.is_ipv4() == d.is_ipv4() {
            return Some(Addresses {
                source: s,
                destination: d,
                ..self
            });
        }
        if self.source.is_ipv4() == self.destination.is_ipv4() {
            return Some(self);
        }
        None
    }
}

#[cfg(test)]
mod tests;

/// What the fuzz target (`fuzz/fuzz_targets/proxy_header.rs`) and the corpus replay check
/// on any input: no panic; a header never longer than the input or [`MAX_HEADER_LEN`];
/// the header alone decodes the same, and one byte less waits for more; what it says,
/// written again, reads back the same; an input only waits while it could still fit.
#[doc(hidden)]
pub fn check(data: &[u8]) -> Result<Decoded, Invalid> {
    let got = decode(data);
    match &got {
        Ok(Decoded::Done { header, len }) => {
            let len = *len;
            assert!(len <= data.len() && len <= MAX_HEADER_LEN, "{len} bytes");
            assert_eq!(decode(&data[..len]), got, "the header alone");
            assert_eq!(decode(&data[..len - 1]), Ok(Decoded::Incomplete));
            let mut out = Vec::new();
            encode(header.version, header.addresses, &header.tlvs, &mut out);
            match decode(&out) {
                Ok(Decoded::Done { header: again, len }) => {
                    assert_eq!(len, out.len());
                    let said = header.addresses.and_then(Addresses::same_family);
                    assert_eq!(again.addresses, said, "written again");
                }
                other => panic!("its own encoding does not decode: {other:?}"),
            }
        }
        Ok(Decoded::Incomplete) => assert!(data.len() < MAX_HEADER_LEN),
        Err(_) => {}
    }
    got
}
