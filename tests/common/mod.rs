//! Shared test harness: start tollgate in-process (or as the built binary), real backends on
//! loopback, deterministic payloads with SHA-256 digests, and waiting on conditions with a
//! deadline instead of sleeping.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tollgate::app::Server;

pub mod binary;
pub mod corpus;
pub mod dns;
pub mod http;
pub mod netns;
pub mod promtool;
pub mod proxy;
pub mod sources;
pub mod tls;
pub mod udp;
pub mod upgrade;

/// Starts tollgate in-process from YAML.
pub fn start(yaml: &str) -> Server {
    let config = tollgate::config::load_str(yaml, "test.yaml")
        .unwrap_or_else(|e| panic!("test config is invalid:\n{e}"));
    Server::start(&config).expect("server starts")
}

/// A one-listener (`front`) one-pool (`back`) config over `backends` (address, weight).
pub fn config(
    backends: &[(SocketAddr, u32)],
    listener_extra: &str,
    pool_extra: &str,
    top_extra: &str,
) -> String {
    let mut yaml = format!(
        "workers: 2\n{top_extra}\nlisteners:\n  front:\n    bind: \"127.0.0.1:0\"\n    pool: back\n"
    );
    for line in listener_extra.lines() {
        yaml.push_str(&format!("    {line}\n"));
    }
    yaml.push_str("pools:\n  back:\n");
    for line in pool_extra.lines() {
        yaml.push_str(&format!("    {line}\n"));
    }
    yaml.push_str("    backends:\n");
    for (addr, weight) in backends {
        yaml.push_str(&format!(
            "      - {{ address: \"{addr}\", weight: {weight} }}\n"
        ));
    }
    yaml
}

pub fn front(server: &Server) -> SocketAddr {
    server.addrs("front")[0]
}

/// A backend on 127.0.0.1:0 that runs `handler` on its own thread for each connection.
pub fn backend<F>(handler: F) -> SocketAddr
where
    F: Fn(TcpStream) + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let h = handler.clone();
            std::thread::spawn(move || h(stream));
        }
    });
    addr
}

/// A backend that echoes every byte until EOF, then closes.
pub fn echo_backend() -> SocketAddr {
    backend(|mut s| echo(&mut s))
}

/// Writes back whatever `s` sends until it closes (or either way fails).
pub fn echo(s: &mut TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// A backend that counts the connections it gets and closes each at once.
pub fn counting_backend() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = n.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            drop(s);
        }
    });
    (addr, n)
}

/// A backend that answers every connection with its one-byte id and closes.
pub fn named_backend(id: u8) -> SocketAddr {
    backend(move |mut s| {
        let _ = s.write_all(&[id]);
    })
}

/// The id of the `named_backend` that serves one new connection through `front`.
pub fn who_answers(front: SocketAddr) -> u8 {
    let mut s = TcpStream::connect(front).unwrap();
    let mut id = Vec::new();
    s.read_to_end(&mut id).unwrap();
    assert_eq!(id.len(), 1, "one byte per connection");
    id[0]
}

/// An address on which nothing listens: connects are refused at once.
pub fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Like [`refused_addr`], but the port stays reserved for the rest of the test process: the
/// socket is bound and never listens, so connects are refused and no other test's socket can
/// take the port meanwhile (a freed port can be handed to a parallel test's bind).
pub fn reserved_refused_addr() -> SocketAddr {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    std::mem::forget(socket);
    addr
}

/// Deterministic pseudo-random bytes (xorshift64) in chunks; `seed` picks the stream.
pub struct Pattern {
    state: u64,
    left: u64,
}

impl Pattern {
    pub fn new(seed: u64, len: u64) -> Pattern {
        Pattern {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            left: len,
        }
    }

    /// Fills `buf` with the next bytes; returns how many (0 at the end).
    pub fn fill(&mut self, buf: &mut [u8]) -> usize {
        let n = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        for chunk in buf[..n].chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            chunk.copy_from_slice(&self.state.to_le_bytes()[..chunk.len()]);
        }
        self.left -= n as u64;
        n
    }
}

pub fn digest_of(seed: u64, len: u64) -> [u8; 32] {
    let mut p = Pattern::new(seed, len);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = p.fill(&mut buf);
        if n == 0 {
            return h.finalize().into();
        }
        h.update(&buf[..n]);
    }
}

/// Writes `len` pattern bytes from `seed`, then shuts down writing.
pub fn send_pattern(s: &mut TcpStream, seed: u64, len: u64) -> io::Result<()> {
    let mut p = Pattern::new(seed, len);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = p.fill(&mut buf);
        if n == 0 {
            break;
        }
        s.write_all(&buf[..n])?;
    }
    s.shutdown(Shutdown::Write)
}

/// Reads to EOF; returns (bytes, SHA-256).
pub fn read_digest(s: &mut TcpStream) -> io::Result<(u64, [u8; 32])> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok((total, h.finalize().into()));
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
}

/// Polls `cond` until it holds or `within` passes; panics with `what` on timeout.
pub fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `len` pattern bytes of `seed` on `s` (to an echo backend) from a second thread while
/// reading them back; panics unless every byte returns, in order.
pub fn echo_exact(s: &mut TcpStream, seed: u64, len: u64) {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut writer = s.try_clone().unwrap();
    let sending = std::thread::spawn(move || send_pattern(&mut writer, seed, len));
    let (got, digest) = read_digest(s).unwrap();
    sending.join().unwrap().unwrap();
    assert_eq!(
        (got, digest),
        (len, digest_of(seed, len)),
        "echoed byte-exact"
    );
}

/// Connects to `addr` and sends one byte `?` that is not answered within 300 ms: the proxy
/// holds the client without serving it (at a cap, say). Returns the connection.
pub fn not_served(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"?").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 1];
    let err = s.read_exact(&mut b).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
        "the client is not served: {err}"
    );
    s
}

/// Connects to `addr`, sends `msg` and reads back exactly as many bytes.
pub fn round_trip(addr: SocketAddr, msg: &[u8]) -> io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(msg)?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got)?;
    Ok(got)
}

/// Opens a connection through `addr` to an echo backend, checks one byte comes back, and
/// returns it still open.
pub fn held_echo(addr: SocketAddr, byte: u8) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[byte]).unwrap();
    let mut x = [0u8; 1];
    s.read_exact(&mut x).unwrap();
    assert_eq!(x[0], byte, "echoed");
    s
}

/// True when the peer has closed: a read returns EOF or a reset within `within`.
pub fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// Writes `yaml` to `path` and starts tollgate from that file, so reloads re-read it.
pub fn start_file(path: &std::path::Path, yaml: &str) -> Server {
    std::fs::write(path, yaml).unwrap();
    let config = tollgate::config::load(path).unwrap();
    Server::start_from(&config, Some(path.to_owned())).unwrap()
}

/// A port on 127.0.0.1 that was free a moment ago, for a peer program that must be told its
/// port (nginx, HAProxy).
pub fn free_port() -> u16 {
    let probe = TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

/// A child program stopped with SIGTERM when dropped (nginx and HAProxy pass it on to their
/// workers, which SIGKILL would leave running), and reaped.
pub struct Terminate(pub std::process::Child);

impl Drop for Terminate {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}
