//! Ending a connection whose leg failed: the failure is passed on as a reset, never as an
//! orderly close.
//!
//! A FIN says "the stream ended here, complete". When one leg fails (the peer reset it, or
//! a read or write on it failed: ETIMEDOUT, EHOSTUNREACH, ...) the stream did not end, so the
//! other leg must not get a FIN: it is reset (`SO_LINGER` 0, then close), and so is the failed
//! leg, in case it is still up (a local error) and would otherwise see a clean end.
//!
//! Bytes in flight when the failure is noticed are delivered first, because that is what the
//! standing peer would have seen without tollgate in between: a socket that receives a reset
//! still lets its owner read everything that arrived before it. So, before resetting:
//!
//! 1. what tollgate holds from the failed leg (in the direction's pipe or buffer) and what
//!    the failed leg's socket still has queued (the kernel returns a reset socket's queued
//!    bytes before the error) is written to the standing leg ([`Pump::poll_salvage`]);
//! 2. tollgate waits until the standing leg's socket has sent all of it: a reset throws the
//!    send queue away, and with it bytes tollgate already counted as delivered. The kernel
//!    has no event for "send queue empty", so this polls `SIOCOUTQNSD` with back-off.
//!
//! Both steps give up when nothing moves for the idle timeout (a peer that stopped reading),
//! and the rest is dropped with the reset. What tollgate holds in the other direction, toward
//! the failed leg, is dropped at once: that leg cannot take it.

use std::future::Future;
use std::os::fd::AsFd;
use std::task::Poll;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::pump::Pump;

/// The first and the longest pause between two looks at a send queue.
const PAUSE_MIN: Duration = Duration::from_millis(1);
const PAUSE_MAX: Duration = Duration::from_millis(100);

/// Ends a connection whose leg `src` failed: both legs are set to reset when closed, then
/// `dst` (the standing leg) gets what `toward` holds from `src` and what `src` still has
/// queued, and its send queue goes out; see the module docs.
pub(super) async fn abort(toward: &mut Pump<'_>, src: &TcpStream, dst: &TcpStream, idle: Duration) {
    // First, so that a task cut while salvaging (at the drain deadline) resets too.
    reset_on_close(src);
    reset_on_close(dst);
    if deliver_rest(toward, src, dst, idle).await {
        sent(dst, idle).await;
    }
}

/// Step 1. True when everything was delivered; false when `dst` failed too, or took
/// nothing for `idle`.
async fn deliver_rest(
    toward: &mut Pump<'_>,
    src: &TcpStream,
    dst: &TcpStream,
    idle: Duration,
) -> bool {
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = toward.poll_salvage(cx, src, dst) {
            return Poll::Ready(r.is_ok());
        }
        if std::mem::take(&mut toward.touched) {
            timer.as_mut().reset(Instant::now() + idle);
        }
        timer.as_mut().poll(cx).map(|()| false)
    })
    .await
}

/// Step 2: waits until `dst` has nothing unsent, or its queue did not shrink for `idle`.
async fn sent(dst: &TcpStream, idle: Duration) {
    let unsent = || crate::sys::socket::unsent(dst.as_fd()).unwrap_or(0);
    let mut left = unsent();
    let mut progress = Instant::now();
    let mut pause = PAUSE_MIN;
    while left > 0 {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(PAUSE_MAX);
        let now = unsent();
        if now < left {
            progress = Instant::now();
        } else if progress.elapsed() >= idle {
            return;
        }
        left = now;
    }
}

/// Makes the coming close of `leg` a reset: `SO_LINGER` with a zero timeout. A socket that
/// refuses the option is already gone (the kernel closed it on the peer's reset).
pub(super) fn reset_on_close(leg: &TcpStream) {
    let _ = socket2::SockRef::from(leg).set_linger(Some(Duration::ZERO));
}
