//! Reading the server name from a TLS ClientHello without terminating TLS. The bytes are
//! the start of a connection, peeked and left in place for the backend; [`server_name`]
//! answers [`Peeked::Incomplete`] until the whole ClientHello is in, however it is split
//! into records and packets, then the name it asks for, or an error as soon as the bytes
//! cannot be a ClientHello. Bounded: a ClientHello longer than [`MAX_HELLO`] bytes, or
//! records taking more than [`MAX_PEEK`] bytes to carry it, is refused rather than waited
//! for. Pure: no I/O.

/// The longest ClientHello accepted (its handshake body). Browsers' are under 2 KiB, with
/// post-quantum key shares; 16 KiB is one full record and what HAProxy's default buffer
/// holds for `req.ssl_sni`.
pub const MAX_HELLO: usize = 16 * 1024;

/// The most bytes peeked to find it: the ClientHello plus its handshake header and room for
/// the record headers of a ClientHello split over a few records. Anything needing more is
/// refused.
pub const MAX_PEEK: usize = MAX_HELLO + 4 + 64 * RECORD_HEADER;

const RECORD_HEADER: usize = 5;
const MAX_RECORD: usize = 16 * 1024;
const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const SERVER_NAME: u16 = 0;
const HOST_NAME: u8 = 0;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peeked {
    /// Not all of the ClientHello yet: peek again when more has arrived.
    Incomplete,
    /// The server name it asks for (lowercased), or `None` when it names none.
    Done(Option<String>),
}

/// Why the bytes are not a ClientHello tollgate will route. Every one closes the
/// connection (`reason="sni"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// The first record is not a TLS handshake record (plain text, SSLv2, anything else).
    NotTls,
    /// A record before the ClientHello was complete was not a handshake record, or had a
    /// bad version or length.
    BadRecord,
    /// The first handshake message is not a ClientHello.
    NotClientHello,
    /// Longer than [`MAX_HELLO`], or spread over more than [`MAX_PEEK`] bytes.
    TooLong,
    /// A field runs past its container, or a length is impossible.
    Malformed(&'static str),
    /// The server name is not a DNS host name.
    BadName,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::NotTls => f.write_str("not a TLS handshake"),
            Invalid::BadRecord => f.write_str("a bad TLS record before the ClientHello ended"),
            Invalid::NotClientHello => {
                f.write_str("the first handshake message is not a ClientHello")
            }
            Invalid::TooLong => write!(f, "a ClientHello longer than {MAX_HELLO} bytes"),
            Invalid::Malformed(what) => write!(f, "malformed ClientHello: {what}"),
            Invalid::BadName => f.write_str("the server name is not a host name"),
        }
    }
}

impl std::error::Error for Invalid {}

/// The server name of the ClientHello at the start of `buf`, the bytes received so far.
pub fn server_name(buf: &[u8]) -> Result<Peeked, Invalid> {
    let Some(hello) = handshake(buf)? else {
        return if buf.len() >= MAX_PEEK {
            Err(Invalid::TooLong)
        } else {
            Ok(Peeked::Incomplete)
        };
    };
    parse_hello(&hello).map(Peeked::Done)
}

/// The ClientHello's body once the records so far carry all of it.
fn handshake(buf: &[u8]) -> Result<Option<Vec<u8>>, Invalid> {
    let mut message = Vec::new();
    let mut at = 0;
    let mut first = true;
    loop {
        let Some(header) = buf.get(at..at + RECORD_HEADER) else {
            if first && !buf.is_empty() && buf[0] != HANDSHAKE {
                return Err(Invalid::NotTls);
            }
            return Ok(None);
        };
        let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let record_ok = header[0] == HANDSHAKE && header[1] == 3 && header[2] <= 4;
        if !record_ok || length == 0 || length > MAX_RECORD {
            return Err(if first {
                Invalid::NotTls
            } else {
                Invalid::BadRecord
            });
        }
        first = false;
        let body_start = at + RECORD_HEADER;
        let available = &buf[body_start.min(buf.len())..(body_start + length).min(buf.len())];
        message.extend_from_slice(available);
        if message.len() >= 4 {
            if message[0] != CLIENT_HELLO {
                return Err(Invalid::NotClientHello);
            }
            let len = usize::from(message[1]) << 16
                | usize::from(message[2]) << 8
                | usize::from(message[3]);
            if len > MAX_HELLO {
                return Err(Invalid::TooLong);
            }
            if message.len() >= 4 + len {
                message.truncate(4 + len);
                message.drain(..4);
                return Ok(Some(message));
            }
        }
        if available.len() < length {
            return Ok(None); // the rest of this record is still on its way
        }
        at = body_start + length;
    }
}

/// Reads big-endian fields off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Invalid> {
        if self.0.len() < n {
            return Err(Invalid::Malformed(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<usize, Invalid> {
        Ok(usize::from(self.take(1, what)?[0]))
    }

    fn u16(&mut self, what: &'static str) -> Result<usize, Invalid> {
        let b = self.take(2, what)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    /// A vector with a `width`-byte length prefix.
    fn vector(&mut self, width: usize, what: &'static str) -> Result<Reader<'a>, Invalid> {
        let len = if width == 1 {
            self.u8(what)?
        } else {
            self.u16(what)?
        };
        Ok(Reader(self.take(len, what)?))
    }
}

fn parse_hello(body: &[u8]) -> Result<Option<String>, Invalid> {
    let mut r = Reader(body);
    let version = r.take(2, "version")?;
    if version[0] != 3 {
        return Err(Invalid::Malformed("version"));
    }
    r.take(32, "random")?;
    if r.vector(1, "session id")?.0.len() > 32 {
        return Err(Invalid::Malformed("session id"));
    }
    let suites = r.vector(2, "cipher suites")?.0;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(Invalid::Malformed("cipher suites"));
    }
    if r.vector(1, "compression methods")?.0.is_empty() {
        return Err(Invalid::Malformed("compression methods"));
    }
    if r.0.is_empty() {
        return Ok(None); // no extensions at all
    }
    let mut extensions = r.vector(2, "extensions")?;
    if !r.0.is_empty() {
        return Err(Invalid::Malformed("bytes after the extensions"));
    }
    let mut name = None;
    let mut seen_name = false;
    while !extensions.0.is_empty() {
        let kind = extensions.u16("extension type")?;
        let mut data = extensions.vector(2, "extension")?;
        if kind != usize::from(SERVER_NAME) {
            continue;
        }
        if seen_name {
            return Err(Invalid::Malformed("two server_name extensions"));
        }
        seen_name = true;
        let mut list = data.vector(2, "server name list")?;
        if !data.0.is_empty() || list.0.is_empty() {
            return Err(Invalid::Malformed("server name list"));
        }
        while !list.0.is_empty() {
            let kind = list.u8("name type")?;
            let value = list.vector(2, "server name")?.0;
            if kind == usize::from(HOST_NAME) {
                if name.is_some() {
                    return Err(Invalid::Malformed("two host names"));
                }
                name = Some(host_name(value)?);
            }
        }
    }
    Ok(name)
}

/// A DNS host name in ASCII, as RFC 6066 asks: letters, digits, hyphens and underscores in
/// dot-separated labels of 1 to 63 bytes, at most 253 bytes, no trailing dot. Lowercased.
pub fn host_name(bytes: &[u8]) -> Result<String, Invalid> {
    let valid_label = |l: &[u8]| {
        (1..=63).contains(&l.len())
            && l.iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if bytes.is_empty() || bytes.len() > 253 || !bytes.split(|&b| b == b'.').all(valid_label) {
        return Err(Invalid::BadName);
    }
    Ok(String::from_utf8_lossy(bytes).to_ascii_lowercase())
}
