//! The decoder against the specification's cases and the advisories' (Envoy, go-proxyproto,
//! sozu): `LOCAL` with and without an address block, a v1 line without CRLF, a v2 length
//! past the data; every strict prefix of a header is `Incomplete`; encode and decode agree.
#![cfg(test)] // test code only: unwraps here fail a test, never a running tollgate

use std::net::SocketAddr;

use super::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn done(buf: &[u8]) -> (Header, usize) {
    match decode(buf) {
        Ok(Decoded::Done { header, len }) => (header, len),
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
    }
}

fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
    let mut b = v2::SIGNATURE.to_vec();
    b.extend_from_slice(&[ver_cmd, fam]);
    b.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    b.extend_from_slice(body);
    b
}

fn tcp(source: &str, destination: &str) -> Addresses {
    Addresses {
        source: sa(source),
        destination: sa(destination),
        transport: Transport::Stream,
    }
}

#[test]
fn v1_lines_and_what_follows_them() {
    let mut buf = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /".to_vec();
    let (h, len) = done(&buf);
    assert_eq!(len, buf.len() - 5);
    assert_eq!(
        h.addresses,
        Some(tcp("192.0.2.1:56324", "198.51.100.2:443"))
    );
    buf = b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n".to_vec();
    assert_eq!(
        done(&buf).0.addresses,
        Some(tcp("[2001:db8::1]:1", "[::1]:65535"))
    );
    for unknown in ["PROXY UNKNOWN\r\n", "PROXY UNKNOWN ffff::1 ::1 1 2\r\n"] {
        let (h, len) = done(unknown.as_bytes());
        assert_eq!((h.addresses, len), (None, unknown.len()));
    }
    // The longest legal line is 107 bytes with its CRLF; it fits.
    let longest = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    assert!(longest.len() <= MAX_V1_LEN);
    done(longest.as_bytes());
}

#[test]
fn v1_refusals() {
    let cases: &[(&str, Invalid)] = &[
        ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", Invalid::V1Unterminated),
        (
            "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            Invalid::V1Malformed("bad address"),
        ),
        (
            "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            Invalid::V1Malformed("bad port"),
        ),
        (
            "PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            Invalid::V1Malformed("bad port"),
        ),
        (
            "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            Invalid::V1Malformed("bad port"),
        ),
        (
            "PROXY TCP4 ::1 ::1 1 2\r\n",
            Invalid::V1Malformed("bad address"),
        ),
        (
            "PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            Invalid::V1Malformed("bad address"),
        ),
        (
            "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            Invalid::V1Malformed("missing field"),
        ),
        (
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            Invalid::V1Malformed("extra field"),
        ),
        (
            "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            Invalid::V1Malformed("unknown protocol"),
        ),
        ("PROXY \r\n", Invalid::V1Malformed("unknown protocol")),
        (
            "PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n",
            Invalid::V1Malformed("bad address"),
        ),
    ];
    for (line, want) in cases {
        assert_eq!(decode(line.as_bytes()), Err(*want), "{line:?}");
    }
    // No CRLF within 107 bytes: refused at 107, not before.
    let long = format!("PROXY TCP4 {}", "1".repeat(200));
    assert_eq!(decode(&long.as_bytes()[..106]), Ok(Decoded::Incomplete));
    assert_eq!(
        decode(&long.as_bytes()[..MAX_V1_LEN]),
        Err(Invalid::V1Unterminated)
    );
    assert_eq!(decode(long.as_bytes()), Err(Invalid::V1Unterminated));
}

#[test]
fn v2_addresses_tlvs_and_what_follows() {
    let mut body = vec![192, 0, 2, 1, 198, 51, 100, 2];
    body.extend_from_slice(&56324u16.to_be_bytes());
    body.extend_from_slice(&443u16.to_be_bytes());
    body.extend_from_slice(&[0x04, 0x00, 0x02, b'h', b'i']); // a NOOP TLV, opaque to us
    let mut buf = v2(0x21, 0x11, &body);
    let header_len = buf.len();
    buf.extend_from_slice(b"\x16\x03\x01");
    let (h, len) = done(&buf);
    assert_eq!(len, header_len);
    assert_eq!(
        h.addresses,
        Some(tcp("192.0.2.1:56324", "198.51.100.2:443"))
    );
    assert_eq!(h.tlvs, vec![0x04, 0x00, 0x02, b'h', b'i']);

    let mut body6 = vec![0x20, 0x01, 0x0d, 0xb8];
    body6.extend_from_slice(&[0; 12]);
    body6.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    body6.extend_from_slice(&[0, 7, 0, 53]);
    let (h, _) = done(&v2(0x21, 0x22, &body6));
    let a = h.addresses.unwrap();
    assert_eq!(
        (a.source, a.destination, a.transport),
        (sa("[2001:db8::]:7"), sa("[::1]:53"), Transport::Datagram)
    );
}

/// LOCAL means the connection's own addresses, with or without an address block; a forged
/// block after LOCAL is ignored, not believed. AF_UNSPEC and AF_UNIX carry no IP address:
/// the connection's own stand too.
#[test]
fn local_and_families_without_ip_addresses() {
    let forged = [10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2];
    for buf in [
        v2(0x20, 0x00, &[]),
        v2(0x20, 0x11, &forged),
        v2(0x20, 0x11, &[1, 2]),
    ] {
        let (h, len) = done(&buf);
        assert_eq!((h.addresses, len, h.tlvs.len()), (None, buf.len(), 0));
    }
    assert_eq!(done(&v2(0x21, 0x00, &[])).0.addresses, None);
    assert_eq!(done(&v2(0x21, 0x31, &[0; 216])).0.addresses, None);
}

#[test]
fn v2_refusals() {
    let four = [1u8; 12];
    let cases: &[(Vec<u8>, Invalid)] = &[
        (v2(0x11, 0x11, &four), Invalid::V2Version),
        (v2(0x31, 0x11, &four), Invalid::V2Version),
        (v2(0x22, 0x11, &four), Invalid::V2Command),
        (v2(0x21, 0x13, &four), Invalid::V2Family),
        (v2(0x21, 0x10, &four), Invalid::V2Family),
        (v2(0x21, 0x41, &four), Invalid::V2Family),
        (v2(0x21, 0x11, &[1, 2, 3, 4]), Invalid::V2ShortAddresses),
        (v2(0x21, 0x21, &four), Invalid::V2ShortAddresses),
        (v2(0x21, 0x31, &[0; 100]), Invalid::V2ShortAddresses),
    ];
    for (buf, want) in cases {
        assert_eq!(decode(buf), Err(*want), "{buf:?}");
    }
    // A length past the data waits for the data, up to the limit; past it, refused at once.
    let mut past = v2(0x21, 0x11, &four);
    past[14..16].copy_from_slice(&100u16.to_be_bytes());
    assert_eq!(decode(&past), Ok(Decoded::Incomplete));
    past[14..16].copy_from_slice(&u16::try_from(MAX_V2_LEN + 1).unwrap().to_be_bytes());
    assert_eq!(decode(&past), Err(Invalid::V2TooLong));
    past[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    assert_eq!(decode(&past[..16]), Err(Invalid::V2TooLong));
}

#[test]
fn anything_else_is_no_header_and_prefixes_are_incomplete() {
    for other in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"\x16\x03\x01\x02\x00",
        b"proxy tcp4",
        b"\r\n\r\n\0\r\nQUIT!",
    ] {
        assert_eq!(decode(other), Err(Invalid::NoSignature), "{other:?}");
    }
    let headers = [
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n".to_vec(),
        v2(0x21, 0x11, &[1; 17]),
        v2(0x20, 0x00, &[]),
    ];
    for h in headers {
        for n in 0..h.len() {
            assert_eq!(decode(&h[..n]), Ok(Decoded::Incomplete), "{n} of {h:?}");
        }
        assert_eq!(done(&h).1, h.len());
    }
}

#[test]
fn what_is_encoded_decodes_to_the_same() {
    let cases = [
        Some(tcp("192.0.2.1:56324", "198.51.100.2:443")),
        Some(tcp("[2001:db8::1]:1", "[::1]:65535")),
        Some(Addresses {
            transport: Transport::Datagram,
            ..tcp("10.0.0.1:53", "10.0.0.2:5353")
        }),
        None,
    ];
    for version in [Version::V1, Version::V2] {
        for a in cases {
            if version == Version::V1 && a.is_some_and(|a| a.transport == Transport::Datagram) {
                continue; // v1 has no datagram family
            }
            let mut out = Vec::new();
            encode(version, a, b"\x04\x00\x01z", &mut out);
            let (h, len) = done(&out);
            assert_eq!((h.version, h.addresses, len), (version, a, out.len()));
        }
    }
    // A dual-stack socket's view of an IPv4 client is written as IPv4.
    let mapped = tcp("[::ffff:192.0.2.1]:5", "[::ffff:192.0.2.9]:80");
    let mut out = Vec::new();
    encode(Version::V1, Some(mapped), &[], &mut out);
    assert_eq!(out, b"PROXY TCP4 192.0.2.1 192.0.2.9 5 80\r\n");
    // Endpoints of two families cannot be written: the header says UNKNOWN / LOCAL.
    out.clear();
    encode(
        Version::V1,
        Some(tcp("192.0.2.1:5", "[2001:db8::1]:80")),
        &[],
        &mut out,
    );
    assert_eq!(out, b"PROXY UNKNOWN\r\n");
    out.clear();
    encode(
        Version::V2,
        Some(tcp("192.0.2.1:5", "[2001:db8::1]:80")),
        &[],
        &mut out,
    );
    assert_eq!(done(&out).0.addresses, None);
}
