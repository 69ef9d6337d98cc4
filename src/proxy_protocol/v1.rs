//! PROXY protocol v1: one text line, `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n` or
//! `PROXY UNKNOWN ...\r\n`, at most 107 bytes. Parsed strictly: single spaces, addresses of
//! the named family in their canonical text form, decimal ports without sign or leading
//! zeros.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Addresses, Decoded, Header, Invalid, MAX_V1_LEN, Transport, Version};

pub(super) const SIGNATURE: &[u8] = b"PROXY ";

pub(super) fn decode(buf: &[u8]) -> Result<Decoded, Invalid> {
    let window = &buf[..buf.len().min(MAX_V1_LEN)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_V1_LEN {
            Err(Invalid::V1Unterminated)
        } else {
            Ok(Decoded::Incomplete)
        };
    };
    if lf == 0 || window[lf - 1] != b'\r' {
        return Err(Invalid::V1Unterminated);
    }
    let line = &window[SIGNATURE.len()..lf - 1];
    let header = Header {
        version: Version::V1,
        addresses: parse(line)?,
        tlvs: Vec::new(),
    };
    Ok(Decoded::Done {
        header,
        len: lf + 1,
    })
}

fn parse(line: &[u8]) -> Result<Option<Addresses>, Invalid> {
    let line = std::str::from_utf8(line).map_err(|_| Invalid::V1Malformed("not ASCII"))?;
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        // The rest is the sender's business: the connection's own addresses stand.
        return Ok(None);
    }
    let mut fields = line.split(' ');
    let family = fields.next().unwrap_or_default();
    let v6 = match family {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(Invalid::V1Malformed("unknown protocol")),
    };
    let mut next = || fields.next().ok_or(Invalid::V1Malformed("missing field"));
    let (src, dst) = (ip(next()?, v6)?, ip(next()?, v6)?);
    let (sport, dport) = (port(next()?)?, port(next()?)?);
    if fields.next().is_some() {
        return Err(Invalid::V1Malformed("extra field"));
    }
    Ok(Some(Addresses {
        source: SocketAddr::new(src, sport),
        destination: SocketAddr::new(dst, dport),
        transport: Transport::Stream,
    }))
}

fn ip(text: &str, v6: bool) -> Result<IpAddr, Invalid> {
    let parsed = if v6 {
        text.parse::<Ipv6Addr>().map(IpAddr::V6)
    } else {
        text.parse::<Ipv4Addr>().map(IpAddr::V4)
    };
    parsed.map_err(|_| Invalid::V1Malformed("bad address"))
}

fn port(text: &str) -> Result<u16, Invalid> {
    let digits = !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit());
    if !digits || (text.len() > 1 && text.starts_with('0')) {
        return Err(Invalid::V1Malformed("bad port"));
    }
    text.parse().map_err(|_| Invalid::V1Malformed("bad port"))
}

pub(super) fn encode(addresses: Option<Addresses>, out: &mut Vec<u8>) {
    use std::io::Write;
    match addresses {
        Some(a) => {
            let family = if a.source.is_ipv4() { "TCP4" } else { "TCP6" };
            // Writing to a Vec cannot fail.
            let _ = write!(
                out,
                "PROXY {family} {} {} {} {}\r\n",
                a.source.ip(),
                a.destination.ip(),
                a.source.port(),
                a.destination.port()
            );
        }
        None => out.extend_from_slice(b"PROXY UNKNOWN\r\n"),
    }
}
