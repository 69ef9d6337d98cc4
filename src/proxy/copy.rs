//! Moving bytes both ways between the client and the backend until both directions end.
//!
//! Each direction is a pump (`pump.rs`): it moves what the source has to the destination
//! and on end of stream passes the FIN on (`shutdown(SHUT_WR)`) once every byte is
//! delivered, while the other direction keeps flowing. Both pumps and the idle clock run in
//! the connection's one task; an error on either side ends the whole connection, and the
//! error says which side and which operation failed.

use std::future::Future;
use std::io;
use std::task::Poll;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::ForwardMode;
use super::pump::{Means, Pump};
use crate::sys::PipePool;

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

/// Forwards until both directions have ended, an error occurs, or nothing moved for `idle`.
/// The bytes moved land in `progress` however it ends, an error included.
///
/// Both directions and the idle clock live in this one future, polled together: the
/// directions take turns going first, so neither starves the other when the worker's
/// cooperative budget runs out. The idle timer is re-armed only when it fires, not on every
/// byte: on firing it checks when bytes last moved.
pub async fn forward(
    client: &TcpStream,
    backend: &TcpStream,
    idle: Duration,
    mode: ForwardMode,
    pipes: &PipePool,
    progress: &mut Transfer,
) -> Result<(), ForwardError> {
    let means = Means {
        pipes,
        may_splice: mode == ForwardMode::Splice,
    };
    let mut up = Pump::new(Side::Client, Side::Backend);
    let mut down = Pump::new(Side::Backend, Side::Client);
    let mut last_moved = Instant::now();
    let timer = tokio::time::sleep_until(last_moved + idle);
    tokio::pin!(timer);
    let mut up_first = true;
    let result = std::future::poll_fn(|cx| {
        up_first = !up_first;
        let (a, b) = if up_first {
            let a = up.poll(cx, client, backend, means, down.is_done());
            (a, down.poll(cx, backend, client, means, up.is_done()))
        } else {
            let b = down.poll(cx, backend, client, means, up.is_done());
            (up.poll(cx, client, backend, means, down.is_done()), b)
        };
        for r in [a, b] {
            if let Poll::Ready(Err(e)) = r {
                return Poll::Ready(Err(e));
            }
        }
        if up.is_done() && down.is_done() {
            return Poll::Ready(Ok(()));
        }
        if std::mem::take(&mut up.touched) | std::mem::take(&mut down.touched) {
            last_moved = Instant::now();
        }
        while timer.as_mut().poll(cx).is_ready() {
            let deadline = last_moved + idle;
            if Instant::now() >= deadline {
                return Poll::Ready(Err(ForwardError::Idle(idle)));
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    })
    .await;
    progress.to_backend = up.moved;
    progress.to_client = down.moved;
    result
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
