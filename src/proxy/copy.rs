//! Moving bytes both ways between the client and the backend until both directions end.
//!
//! Each direction is a pump (`pump.rs`): it moves what the source has to the destination
//! and on end of stream passes the FIN on (`shutdown(SHUT_WR)`) once every byte is
//! delivered, while the other direction keeps flowing. Both pumps and the idle clock run in
//! the connection's one task. An error on either side ends the whole connection: the error
//! says which side and which operation failed, and both legs are reset, never closed with a
//! FIN, once the bytes in flight toward the standing leg are delivered (`abort.rs`).
//!
//! The idle timeout closes both legs with a FIN, as HAProxy's and nginx's do: nothing moved
//! either way for the whole timeout, so every byte either peer sent has been delivered and
//! an orderly close loses nothing. Unless tollgate still holds bytes it could not deliver
//! (a peer that stopped reading): the stream was then cut short, and both legs are reset.
//!
//! It also owns putting the bytes moved on the backend's counters while the connection lives
//! (at most [`FLUSH_EVERY`] late) and when it ends, however it ends: a connection cut at the
//! drain deadline has its task dropped mid-await, and its bytes still count.

use std::future::Future;
use std::io;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::access_log::Tally;
use super::pump::{Means, Pump};
use super::{ForwardMode, abort};
pub use crate::state::Side;
use crate::state::{BackendStats, Failure};
use crate::sys::PipePool;

/// How late, at most, the backend's byte counters are while bytes move: scrapes and `rate()`
/// see a long stream as it goes, not only when it ends.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("{side} {op} failed")]
    Io {
        side: Side,
        op: Op,
        #[source]
        source: io::Error,
    },
    /// Nothing moved either way for the idle timeout. `stranded`: bytes tollgate held and
    /// could not deliver (both legs are then reset, not closed).
    #[error("idle timeout")]
    Idle { stranded: u64 },
}

/// What failed on a leg. (Not a `&str`: the error is kept in every connection's task while
/// a failure is passed on, and one byte is cheaper than sixteen.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Shutdown,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Shutdown => "shutdown",
        })
    }
}

impl ForwardError {
    /// The leg whose failure ended the connection, and how it failed; `None` for the idle
    /// timeout, which is no failure of a leg.
    pub fn aborted(&self) -> Option<(Side, Failure)> {
        match self {
            ForwardError::Io { side, source, .. } => Some((*side, failure(source))),
            ForwardError::Idle { .. } => None,
        }
    }
}

/// A peer's reset shows as ECONNRESET on the first read or write after it, and as EPIPE on
/// writes after that (once the first error was reported).
fn failure(e: &io::Error) -> Failure {
    match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => Failure::Reset,
        _ => Failure::Error,
    }
}

/// Bytes moved in each direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    pub to_backend: u64,
    pub to_client: u64,
    /// The side whose direction ended first with a FIN, once one has.
    pub first_fin: Option<Side>,
}

/// Both directions of a connection and the backend counters their bytes go to. Dropping it
/// adds whatever was not counted yet, so every way a connection ends (done, error, idle, or
/// its task dropped at the drain deadline) counts every byte delivered, exactly once.
struct Flow<'p, 's> {
    up: Pump<'p>,
    down: Pump<'p>,
    stats: &'s BackendStats,
    /// What the counters have been given so far.
    counted: Transfer,
    first_fin: Option<Side>,
    /// The access log's record of the connection, when it is on: told the bytes and the
    /// first FIN when the flow ends, however it ends.
    tally: Option<&'s Tally>,
}

impl Flow<'_, '_> {
    fn moved(&self) -> Transfer {
        Transfer {
            to_backend: self.up.moved,
            to_client: self.down.moved,
            first_fin: self.first_fin,
        }
    }

    /// Adds the bytes moved since the last flush to the backend's counters.
    fn flush(&mut self) {
        let moved = self.moved();
        let up = moved.to_backend.saturating_sub(self.counted.to_backend);
        let down = moved.to_client.saturating_sub(self.counted.to_client);
        if up > 0 {
            self.stats.sent_bytes.fetch_add(up, Ordering::Relaxed);
        }
        if down > 0 {
            self.stats.received_bytes.fetch_add(down, Ordering::Relaxed);
        }
        self.counted = moved;
    }
}

impl Drop for Flow<'_, '_> {
    fn drop(&mut self) {
        self.flush();
        if let Some(tally) = self.tally {
            tally.report(self.up.moved, self.down.moved, self.first_fin);
        }
    }
}

/// Forwards until both directions have ended, an error occurs, or nothing moved for `idle`,
/// and returns how it ended with the bytes moved each way. The bytes also land on `stats`
/// (sent and received bytes) while it runs and however it ends, cancellation included. After
/// an error, or an idle timeout with bytes stranded, both sockets are set to reset when the
/// caller closes them.
///
/// Both directions and the idle clock live in this one future, polled together: the
/// directions take turns going first, so neither starves the other when the worker's
/// cooperative budget runs out. The one timer serves both the idle clock and the counters'
/// flush, and is never touched per byte or per wake-up: it is re-armed when it fires (it
/// then checks when bytes last moved), and pulled in to a flush at most once per
/// [`FLUSH_EVERY`], by the first bytes that move after the previous flush. An idle
/// connection has no flush due and costs no wake-up; a busy one costs one a second.
///
/// `sent`: bytes of the client's that reached the backend before (the ClientHello SNI
/// routing read); they count as moved to it. `tally`: the access log's, told the bytes
/// and the first FIN when the forwarding ends or is dropped.
pub async fn forward(
    (client, backend): (&TcpStream, &TcpStream),
    sent: u64,
    idle: Duration,
    mode: ForwardMode,
    pipes: &PipePool,
    (stats, tally): (&BackendStats, Option<&Tally>),
) -> (Result<(), ForwardError>, Transfer) {
    let means = Means {
        pipes,
        may_splice: mode == ForwardMode::Splice,
    };
    let mut flow = Flow {
        up: Pump::new(Side::Client, Side::Backend),
        down: Pump::new(Side::Backend, Side::Client),
        stats,
        counted: Transfer::default(),
        first_fin: None,
        tally,
    };
    flow.up.moved = sent;
    // The clock, the timer and the result end with this block, and the boxed future it
    // yields when a leg failed owns the result: kept across the await below, any of them
    // would add to every connection's task, for a path few connections take. (The legs are
    // still kept across it: 16 bytes.)
    let aborting = {
        let result = {
            let mut last_moved = Instant::now();
            // A flush is armed on the timer: bytes moved since the last one.
            let mut flush_due = false;
            let timer = tokio::time::sleep_until(last_moved + idle);
            tokio::pin!(timer);
            let mut up_first = true;
            std::future::poll_fn(|cx| {
                let Flow {
                    up,
                    down,
                    first_fin: fin,
                    ..
                } = &mut flow;
                up_first = !up_first;
                // Which FIN came first is noted right after the poll that saw it: the other
                // side's, seen later in the same turn, may be its answer to the one passed on.
                let (a, b) = if up_first {
                    let a = up.poll(cx, client, backend, means, down.is_done());
                    noted(fin, up, Side::Client);
                    let b = down.poll(cx, backend, client, means, up.is_done());
                    noted(fin, down, Side::Backend);
                    (a, b)
                } else {
                    let b = down.poll(cx, backend, client, means, up.is_done());
                    noted(fin, down, Side::Backend);
                    let a = up.poll(cx, client, backend, means, down.is_done());
                    noted(fin, up, Side::Client);
                    (a, b)
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
                    if !flush_due {
                        flush_due = true;
                        let at = last_moved + FLUSH_EVERY;
                        if at < timer.deadline() {
                            timer.as_mut().reset(at);
                        }
                    }
                }
                while timer.as_mut().poll(cx).is_ready() {
                    // The timer fires at the flush or at the idle deadline, whichever comes first;
                    // with an idle timeout under FLUSH_EVERY the flush just comes early.
                    if std::mem::take(&mut flush_due) {
                        flow.flush();
                    }
                    let idle_at = last_moved + idle;
                    if Instant::now() >= idle_at {
                        let stranded = flow.up.held() + flow.down.held();
                        return Poll::Ready(Err(ForwardError::Idle {
                            stranded: stranded as u64,
                        }));
                    }
                    timer.as_mut().reset(idle_at);
                }
                Poll::Pending
            })
            .await
        };
        let side = match &result {
            Err(ForwardError::Io { side, .. }) => *side,
            Err(ForwardError::Idle { stranded }) => {
                if *stranded > 0 {
                    abort::reset_on_close(client);
                    abort::reset_on_close(backend);
                }
                return (result, flow.moved());
            }
            Ok(()) => return (result, flow.moved()),
        };
        // Boxed, for the same reason.
        Box::pin(after_failure(
            result,
            &mut flow,
            side,
            (client, backend),
            idle,
        ))
    };
    aborting.await
}

/// Notes `side` as the first to end its direction if its pump has seen the end of stream
/// and no side was noted before.
fn noted(first: &mut Option<Side>, pump: &Pump<'_>, side: Side) {
    if first.is_none() && pump.saw_eof() {
        *first = Some(side);
    }
}

/// The end of [`forward`] after `side` failed: resets both legs once the standing one has
/// what was in flight toward it (`abort.rs`).
async fn after_failure(
    result: Result<(), ForwardError>,
    flow: &mut Flow<'_, '_>,
    side: Side,
    (client, backend): (&TcpStream, &TcpStream),
    idle: Duration,
) -> (Result<(), ForwardError>, Transfer) {
    let (toward, failed, standing) = match side {
        Side::Backend => (&mut flow.down, backend, client),
        Side::Client => (&mut flow.up, client, backend),
    };
    abort::abort(toward, failed, standing, idle).await;
    (result, flow.moved())
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
        let idle = Duration::from_secs(10);
        let stats = BackendStats::default();
        let (result, moved) = forward(
            (&client, &backend),
            0,
            idle,
            ForwardMode::Splice,
            &empty_pool,
            (&stats, None),
        )
        .await;
        result.unwrap();
        drop((client, backend));
        assert_eq!(echo.await.unwrap(), expected);
        assert_eq!(peer.await.unwrap(), expected[..1000]);
        assert_eq!(
            moved,
            Transfer {
                to_backend: 300_000,
                to_client: 1000,
                first_fin: Some(Side::Client),
            }
        );
        assert_eq!(empty_pool.open(), 0, "no pipe was made");
        assert_eq!(
            counted(&stats),
            (300_000, 1000),
            "the counters got every byte"
        );
    }

    /// (sent, received) bytes on the backend's counters.
    fn counted(stats: &BackendStats) -> (u64, u64) {
        (
            stats.sent_bytes.load(Ordering::Relaxed),
            stats.received_bytes.load(Ordering::Relaxed),
        )
    }

    /// The counters follow a connection that stays open (within about `FLUSH_EVERY`), and a
    /// connection whose future is dropped (a worker cut at the drain deadline) still counts
    /// the bytes it delivered since the last flush.
    #[tokio::test]
    async fn bytes_count_while_open_and_when_dropped() {
        let (mut client_end, client) = pair().await;
        let (backend, mut backend_end) = pair().await;
        let pipes = PipePool::new(0, 0, 65_536);
        let stats = BackendStats::default();
        let idle = Duration::from_secs(60);
        let mut forwarding = Box::pin(forward(
            (&client, &backend),
            0,
            idle,
            ForwardMode::Copy,
            &pipes,
            (&stats, None),
        ));
        let peers = async {
            let mut buf = [0u8; 1000];
            client_end.write_all(&[1; 1000]).await.unwrap();
            backend_end.read_exact(&mut buf).await.unwrap();
            backend_end.write_all(&[2; 300]).await.unwrap();
            client_end.read_exact(&mut buf[..300]).await.unwrap();
            let deadline = Instant::now() + FLUSH_EVERY * 5;
            while counted(&stats) != (1000, 300) {
                assert!(Instant::now() < deadline, "counted {:?}", counted(&stats));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Delivered after the flush above, and dropped well before the next one is due
            // (no assertion on that: it would be one on timing), so the drop counts these.
            client_end.write_all(&[3; 50]).await.unwrap();
            backend_end.read_exact(&mut buf[..50]).await.unwrap();
        };
        tokio::select! {
            r = &mut forwarding => panic!("forwarding ended while both peers were open: {r:?}"),
            () = peers => {}
        }
        drop(forwarding);
        assert_eq!(counted(&stats), (1050, 300));
    }
}
