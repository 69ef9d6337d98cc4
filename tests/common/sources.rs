//! Clients with a chosen source address (any of 127/8 on loopback), and the one-byte probe
//! that tells an admitted connection (echoed) from a refused one (closed at once).

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use socket2::{Domain, Socket, Type};

/// Connects to `to` from `from` (port chosen by the kernel).
pub fn connect_from(from: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(from, 0).into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(5))?;
    Ok(socket.into())
}

/// Sends one byte on a fresh connection from `from`: `Some(stream)` (still open) when it
/// was echoed, `None` when the connection was closed without an answer.
pub fn probe_from(from: IpAddr, to: SocketAddr) -> Option<TcpStream> {
    let mut s = connect_from(from, to).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // A refused connection may be closed before the write: a reset is also "refused".
    if s.write_all(b"x").is_err() {
        return None;
    }
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(1) => Some(s),
        Ok(_) => None,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            panic!("no answer and no close within 5 s from {from}")
        }
        Err(_) => None,
    }
}

/// `127.0.a.b` for test source number `n`.
pub fn loopback(a: u8, b: u8) -> IpAddr {
    IpAddr::from([127, 0, a, b])
}
