//! The start of a client's stream, looked at before anything is forwarded: the PROXY header
//! of a trusted balancer in front (peeked with `MSG_PEEK`, [`crate::sys::peek`], then exactly
//! it read: what follows stays queued for the forwarding, spliced or copied), and the TLS
//! ClientHello that SNI routing reads whole and hands to the backend first, as it came (one
//! read instead of a peek and a read: nginx's `ssl_preread` reads it too). While the bytes
//! so far are not enough, both wait for more to arrive rather than poll: an incomplete look
//! clears the socket's readiness, and the next arrival raises it again.

use std::io;
use std::os::fd::AsFd;

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::pump::{Read, read_once};
use crate::proxy_protocol::{self, Decoded, Header, MAX_HEADER_LEN};
use crate::sys::peek::peek;

/// Why a stream's start could not be read.
#[derive(Debug)]
pub enum PeekError<E> {
    /// The client closed (or reset) before enough had arrived.
    Closed,
    Io(io::Error),
    /// The bytes are not what was expected.
    Invalid(E),
}

impl<E: std::fmt::Display> std::fmt::Display for PeekError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeekError::Closed => f.write_str("the client closed before it was complete"),
            PeekError::Io(e) => write!(f, "reading from the client: {e}"),
            PeekError::Invalid(e) => e.fmt(f),
        }
    }
}

impl<E> From<io::Error> for PeekError<E> {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof => PeekError::Closed,
            _ => PeekError::Io(e),
        }
    }
}

/// Reads the PROXY header a connection starts with, and nothing after it.
pub async fn proxy_header(
    client: &TcpStream,
) -> Result<Header, PeekError<proxy_protocol::Invalid>> {
    let mut buf = vec![0u8; MAX_HEADER_LEN];
    let (header, len) = peek_until(client, &mut buf, |bytes| {
        match proxy_protocol::decode(bytes) {
            Ok(Decoded::Incomplete) => Ok(None),
            Ok(Decoded::Done { header, len }) => Ok(Some((header, len))),
            Err(e) => Err(e),
        }
    })
    .await?;
    // The header is queued whole (it was just peeked): take exactly it.
    let mut taken = 0;
    while taken < len {
        match client.try_read(&mut buf[taken..len]) {
            Ok(0) => return Err(PeekError::Closed),
            Ok(n) => taken += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => client.readable().await?,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(header)
}

/// Reads the start of the stream into `buf` until `decide` answers from the bytes read so
/// far (`Ok(None)`: not enough yet), taking them off the socket: `buf` holds them when this
/// returns, for the caller to forward. `buf` grows from `first` bytes to at most `max`, so a
/// client that sends a byte at a time holds a small buffer; `decide` must answer once it is
/// given `max` bytes.
pub async fn read_until<T, E>(
    client: &TcpStream,
    buf: &mut Vec<u8>,
    (first, max): (usize, usize),
    mut decide: impl FnMut(&[u8]) -> Result<Option<T>, E>,
) -> Result<T, PeekError<E>> {
    buf.clear();
    buf.resize(first.min(max), 0);
    let mut filled = 0;
    loop {
        // Through tokio's readiness, which an accepted socket starts with (its first bytes
        // are usually queued, and with `TCP_DEFER_ACCEPT` always): no wait before the first
        // read. A short read clears the readiness, so the forwarding that follows waits
        // for new bytes instead of reading to find none.
        match read_once(client, &mut buf[filled..])? {
            Read::Eof => return Err(PeekError::Closed),
            Read::Empty => {
                client.readable().await?;
                continue;
            }
            Read::Data { n, .. } => filled += n,
        }
        match decide(&buf[..filled]) {
            Ok(Some(t)) => {
                buf.truncate(filled);
                return Ok(t);
            }
            Err(e) => return Err(PeekError::Invalid(e)),
            Ok(None) if filled < buf.len() => {}
            Ok(None) if buf.len() < max => buf.resize(max, 0),
            Ok(None) => {
                return Err(PeekError::Io(io::Error::other(format!(
                    "no answer from the first {max} bytes"
                ))));
            }
        }
    }
}

/// Peeks into `buf` until `decide` answers from the bytes queued so far (`Ok(None)`: not
/// enough yet). The bytes stay queued.
pub async fn peek_until<T, E>(
    client: &TcpStream,
    buf: &mut [u8],
    mut decide: impl FnMut(&[u8]) -> Result<Option<T>, E>,
) -> Result<T, PeekError<E>> {
    // A first look without waiting: on a listener that accepts only once data has come
    // (`TCP_DEFER_ACCEPT`), or from a quick client, the bytes are there already, and
    // waiting for the reactor to say so would cost a turn of the event loop.
    match peek(client.as_fd(), buf) {
        Ok(0) => return Err(PeekError::Closed),
        Ok(n) => match decide(&buf[..n]) {
            Ok(Some(t)) => return Ok(t),
            Err(e) => return Err(PeekError::Invalid(e)),
            Ok(None) => {}
        },
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e.into()),
    }
    loop {
        let ready = client.ready(Interest::READABLE).await?;
        let mut answer = None;
        let looked = client.try_io(Interest::READABLE, || {
            let n = peek(client.as_fd(), buf)?;
            if n == 0 {
                answer = Some(Err(PeekError::Closed));
                return Ok(());
            }
            match decide(&buf[..n]) {
                // Not enough, and the client has shut its sending side: nothing more comes
                // (and the readiness of a closed side cannot be cleared to wait on).
                Ok(None) if ready.is_read_closed() => {
                    answer = Some(Err(PeekError::Closed));
                    Ok(())
                }
                // Not enough: clear the readiness, so the next wait is for new bytes.
                Ok(None) => Err(io::ErrorKind::WouldBlock.into()),
                Ok(Some(t)) => {
                    answer = Some(Ok(t));
                    Ok(())
                }
                Err(e) => {
                    answer = Some(Err(PeekError::Invalid(e)));
                    Ok(())
                }
            }
        });
        match (looked, answer) {
            (Ok(()), Some(answer)) => return answer,
            (Err(e), _) if e.kind() != io::ErrorKind::WouldBlock => return Err(e.into()),
            _ => {}
        }
    }
}
