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
use super::handoff::{FrozenDirection, Handoff, Registered};
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
    /// Frozen for a binary upgrade to hand over (`handoff.rs`): no failure; the connection
    /// goes on elsewhere from this state.
    #[error("handed over")]
    Frozen(Box<FrozenFlow>),
}

/// Both directions of a frozen connection, whose FIN came first, and how long it has been
/// idle.
#[derive(Debug)]
pub struct FrozenFlow {
    pub up: FrozenDirection,
    pub down: FrozenDirection,
    pub first_fin: Option<Side>,
    pub idle_for: Duration,
}

/// Where a forwarding starts: afresh, with `sent` bytes of the client's already at the
/// backend (the ClientHello SNI routing read), or from a frozen state.
pub enum Start {
    Fresh { sent: u64 },
    Thawed(Box<FrozenFlow>),
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
            ForwardError::Idle { .. } | ForwardError::Frozen(_) => None,
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
/// `start`: afresh, where the bytes of the client's that reached the backend before (the
/// ClientHello SNI routing read) count as moved to it; or from a connection frozen by a
/// handover. `tally`: the access log's, told the bytes and the first FIN when the forwarding
/// ends or is dropped. While `handoff` is freezing, the forwarding stops where it stands and
/// returns [`ForwardError::Frozen`] with its state (`None`: never; a connection the new
/// process could not take).
// Not an `async fn`: that would keep its arguments and the locals made of them side by
// side for the connection's whole life. The start is settled before the future exists, so
// neither it nor a frozen state it brings stays in every connection's task.
#[allow(clippy::manual_async_fn)]
pub fn forward<'a>(
    legs: (&'a TcpStream, &'a TcpStream),
    start: Start,
    idle: Duration,
    mode: ForwardMode,
    pipes: &'a PipePool,
    (stats, tally): (&'a BackendStats, Option<&'a Tally>),
    handoff: Option<&'a Handoff>,
) -> impl Future<Output = (Result<(), ForwardError>, Transfer)> + Send + 'a {
    let means = Means {
        pipes,
        may_splice: mode == ForwardMode::Splice,
    };
    let (mut flow, mut last_moved) = begin(start, pipes, stats, tally);
    async move {
        // The clock, the timer and the result end with this block, and the boxed future it
        // yields when a leg failed owns the result: kept across the await below, any of them
        // would add to every connection's task, for a path few connections take. (The legs are
        // still kept across it: 16 bytes.)
        let aborting = {
            let result = {
                // In this worker's registry while it forwards, so that a handover wakes it.
                let mut registered: Option<Registered> = None;
                // A flush is armed on the timer: bytes moved since the last one.
                let mut flush_due = false;
                let timer = tokio::time::sleep_until(last_moved + idle);
                tokio::pin!(timer);
                let mut up_first = true;
                std::future::poll_fn(|cx| {
                    if registered.is_none() && handoff.is_some() {
                        registered = Registered::enter(cx.waker());
                    }
                    let Flow {
                        up,
                        down,
                        first_fin: fin,
                        ..
                    } = &mut flow;
                    if handoff.is_some_and(Handoff::freezing)
                        && let Some(frozen) = freeze(up, down, *fin, last_moved)
                    {
                        return Poll::Ready(Err(ForwardError::Frozen(Box::new(frozen))));
                    }
                    up_first = !up_first;
                    // Which FIN came first is noted right after the poll that saw it: the other
                    // side's, seen later in the same turn, may be its answer to the one passed on.
                    let (a, b) = if up_first {
                        let a = up.poll(cx, legs.0, legs.1, means, down.is_done());
                        noted(fin, up, Side::Client);
                        let b = down.poll(cx, legs.1, legs.0, means, up.is_done());
                        noted(fin, down, Side::Backend);
                        (a, b)
                    } else {
                        let b = down.poll(cx, legs.1, legs.0, means, up.is_done());
                        noted(fin, down, Side::Backend);
                        let a = up.poll(cx, legs.0, legs.1, means, down.is_done());
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
                Err(ForwardError::Frozen(_)) => return (result, flow.moved()),
                Err(ForwardError::Idle { stranded }) => {
                    if *stranded > 0 {
                        abort::reset_on_close(legs.0);
                        abort::reset_on_close(legs.1);
                    }
                    return (result, flow.moved());
                }
                Ok(()) => return (result, flow.moved()),
            };
            // Boxed, for the same reason.
            Box::pin(after_failure(result, &mut flow, side, legs, idle))
        };
        aborting.await
    }
}

/// The flow a forwarding starts with, and when bytes last moved: afresh now, or from where
/// a frozen connection stood.
fn begin<'p, 's>(
    start: Start,
    pipes: &'p PipePool,
    stats: &'s BackendStats,
    tally: Option<&'s Tally>,
) -> (Flow<'p, 's>, Instant) {
    let mut flow = Flow {
        up: Pump::new(Side::Client, Side::Backend),
        down: Pump::new(Side::Backend, Side::Client),
        stats,
        counted: Transfer::default(),
        first_fin: None,
        tally,
    };
    let now = Instant::now();
    match start {
        Start::Fresh { sent } => {
            flow.up.moved = sent;
            (flow, now)
        }
        Start::Thawed(frozen) => {
            let FrozenFlow {
                up,
                down,
                first_fin,
                idle_for,
            } = *frozen;
            flow.up = Pump::thaw(Side::Client, Side::Backend, up, pipes);
            flow.down = Pump::thaw(Side::Backend, Side::Client, down, pipes);
            flow.first_fin = first_fin;
            // What moved before was counted where it moved.
            flow.counted = flow.moved();
            (flow, now.checked_sub(idle_for).unwrap_or(now))
        }
    }
}

/// Both directions as they stand, for a handover; `None` (and they forward on) when the
/// bytes a buffer holds cannot be put in a pipe (no descriptor left).
fn freeze(
    up: &mut Pump<'_>,
    down: &mut Pump<'_>,
    first_fin: Option<Side>,
    last_moved: Instant,
) -> Option<FrozenFlow> {
    match (up.buffered_pipe(), down.buffered_pipe()) {
        (Ok(a), Ok(b)) => Some(FrozenFlow {
            up: up.freeze(a),
            down: down.freeze(b),
            first_fin,
            idle_for: last_moved.elapsed(),
        }),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(error = %e, "cannot freeze a connection for the handover; it stays");
            None
        }
    }
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
#[path = "copy_tests.rs"]
mod tests;
