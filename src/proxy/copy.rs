//! Moving bytes both ways between the client and the backend until both directions end.
//!
//! Each direction is a pump: it waits for the source to be readable, moves what is there to
//! the destination, and on end of stream passes the FIN on (`shutdown(SHUT_WR)`) once every
//! byte is delivered, while the other direction keeps flowing. Each burst of data uses
//! `splice(2)` through a pipe borrowed from the pool when the mode allows and one can be had,
//! and a bounded buffer otherwise; both go back as soon as the source would block.
//! Both pumps and an idle watchdog run in the connection's one task; an error on either side
//! ends the whole connection, and the error says which side and which operation failed.

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::ForwardMode;
use crate::sys::{Pipe, PipePool};

/// Size of the buffer a copying pump allocates (only once it has data to move).
const COPY_BUF: usize = 32 * 1024;

/// Which leg of a connection an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Backend => "backend",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("{side} {op} failed")]
    Io {
        side: Side,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("idle for {0:?}")]
    Idle(Duration),
}

/// Bytes moved in each direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    pub to_backend: u64,
    pub to_client: u64,
}

/// Milliseconds since `start` at which either direction last moved a byte.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// The two legs of one direction and how to name their failures.
struct Leg<'a> {
    src: &'a TcpStream,
    dst: &'a TcpStream,
    src_side: Side,
    dst_side: Side,
}

/// Forwards until both directions have ended, an error occurs, or nothing moved for `idle`.
/// Counts land in `progress` as they happen, so an error still reports the bytes moved.
pub async fn forward(
    client: &TcpStream,
    backend: &TcpStream,
    idle: Duration,
    mode: ForwardMode,
    pipes: &PipePool,
    progress: &mut Transfer,
) -> Result<(), ForwardError> {
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let up_count = AtomicU64::new(0);
    let down_count = AtomicU64::new(0);
    let up = Leg {
        src: client,
        dst: backend,
        src_side: Side::Client,
        dst_side: Side::Backend,
    };
    let down = Leg {
        src: backend,
        dst: client,
        src_side: Side::Backend,
        dst_side: Side::Client,
    };
    let both = async {
        tokio::try_join!(
            pump(up, mode, pipes, &activity, &up_count),
            pump(down, mode, pipes, &activity, &down_count)
        )
    };
    let result = tokio::select! {
        r = both => r.map(|_| ()),
        () = idle_watchdog(&activity, idle) => Err(ForwardError::Idle(idle)),
    };
    progress.to_backend = up_count.load(Ordering::Relaxed);
    progress.to_client = down_count.load(Ordering::Relaxed);
    result
}

async fn idle_watchdog(activity: &Activity, idle: Duration) {
    loop {
        let deadline = activity.last() + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// How a burst of forwarding ended.
enum Burst {
    /// The source has nothing more for now; everything read was delivered.
    Drained,
    /// The source sent its FIN; everything before it was delivered.
    Eof,
}

/// One direction, start to finish. Each burst of data (from readable until the source would
/// block) borrows a pipe — or, without one, a buffer — and gives it back once everything is
/// delivered, so an idle connection holds neither and the pool serves many more connections
/// than it has pipes.
async fn pump(
    leg: Leg<'_>,
    mode: ForwardMode,
    pipes: &PipePool,
    activity: &Activity,
    count: &AtomicU64,
) -> Result<(), ForwardError> {
    loop {
        leg.src
            .readable()
            .await
            .map_err(|e| io_err(leg.src_side, "read", e))?;
        let pipe = match mode {
            ForwardMode::Splice => pipes.take(),
            ForwardMode::Copy => None,
        };
        let burst = match pipe {
            Some(mut pipe) => splice_burst(&leg, &mut pipe, activity, count).await?,
            None => copy_burst(&leg, activity, count).await?,
        };
        if let Burst::Eof = burst {
            break;
        }
    }
    // Every byte is delivered: pass the FIN on. The peer may already be gone (ENOTCONN),
    // which is not this direction's failure.
    match socket2::SockRef::from(leg.dst).shutdown(std::net::Shutdown::Write) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        Err(e) => Err(io_err(leg.dst_side, "shutdown", e)),
    }
}

/// Splices source → pipe → destination until the source would block or ends. The pipe is
/// filled only when empty, so a `WouldBlock` from the fill always means the source has no
/// data (never a full pipe) and clearing the source's readiness is right.
async fn splice_burst(
    leg: &Leg<'_>,
    pipe: &mut Pipe,
    activity: &Activity,
    count: &AtomicU64,
) -> Result<Burst, ForwardError> {
    loop {
        // A busy transfer would otherwise never yield: readiness futures that are already
        // ready do not spend tokio's cooperative budget.
        tokio::task::coop::consume_budget().await;
        let n = match leg
            .src
            .try_io(Interest::READABLE, || pipe.fill_from(leg.src.as_fd()))
        {
            Ok(0) => return Ok(Burst::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Drained),
            Err(e) => return Err(io_err(leg.src_side, "read", e)),
        };
        activity.touch();
        let mut left = n;
        while left > 0 {
            leg.dst
                .writable()
                .await
                .map_err(|e| io_err(leg.dst_side, "write", e))?;
            match leg
                .dst
                .try_io(Interest::WRITABLE, || pipe.drain_into(leg.dst.as_fd()))
            {
                Ok(w) => {
                    left -= w.min(left);
                    count.fetch_add(w as u64, Ordering::Relaxed);
                    activity.touch();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(io_err(leg.dst_side, "write", e)),
            }
        }
    }
}

/// Copies through a buffer until the source would block or ends. The buffer lives only for
/// the burst, so idle connections cost no buffer memory.
async fn copy_burst(
    leg: &Leg<'_>,
    activity: &Activity,
    count: &AtomicU64,
) -> Result<Burst, ForwardError> {
    let mut buf = vec![0u8; COPY_BUF].into_boxed_slice();
    loop {
        tokio::task::coop::consume_budget().await;
        let n = match leg.src.try_read(&mut buf) {
            Ok(0) => return Ok(Burst::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Drained),
            Err(e) => return Err(io_err(leg.src_side, "read", e)),
        };
        activity.touch();
        let mut sent = 0;
        while sent < n {
            leg.dst
                .writable()
                .await
                .map_err(|e| io_err(leg.dst_side, "write", e))?;
            match leg.dst.try_write(&buf[sent..n]) {
                Ok(w) => {
                    sent += w;
                    count.fetch_add(w as u64, Ordering::Relaxed);
                    activity.touch();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(io_err(leg.dst_side, "write", e)),
            }
        }
    }
}

fn io_err(side: Side, op: &'static str, source: io::Error) -> ForwardError {
    ForwardError::Io { side, op, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair of loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// Splice mode with a pool that has no pipe to give must still move every byte, through
    /// the buffered copy.
    #[tokio::test]
    async fn splice_mode_falls_back_to_copy_when_no_pipe_can_be_had() {
        let (mut client_end, client) = pair().await;
        let (backend, mut backend_end) = pair().await;
        let empty_pool = PipePool::new(0, 0, 65_536);
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let expected = payload.clone();
        let peer = tokio::spawn(async move {
            client_end.write_all(&payload).await.unwrap();
            client_end.shutdown().await.unwrap();
            let mut back = Vec::new();
            client_end.read_to_end(&mut back).await.unwrap();
            back
        });
        let echo = tokio::spawn(async move {
            let mut got = Vec::new();
            backend_end.read_to_end(&mut got).await.unwrap();
            backend_end.write_all(&got[..1000]).await.unwrap();
            got
        });
        let mut moved = Transfer::default();
        let idle = Duration::from_secs(10);
        forward(
            &client,
            &backend,
            idle,
            ForwardMode::Splice,
            &empty_pool,
            &mut moved,
        )
        .await
        .unwrap();
        drop((client, backend));
        assert_eq!(echo.await.unwrap(), expected);
        assert_eq!(peer.await.unwrap(), expected[..1000]);
        assert_eq!(
            moved,
            Transfer {
                to_backend: 300_000,
                to_client: 1000
            }
        );
        assert_eq!(empty_pool.open(), 0, "no pipe was made");
    }
}
