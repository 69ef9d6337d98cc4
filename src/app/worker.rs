//! One data-plane worker thread: its current-thread runtime, the accept loops and UDP
//! listeners of its sockets (and those a reload adds), the connections it resumes (handed
//! over by the previous process, or back from a handover that failed), and its drain.

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{error, info};

use super::StopHandle;
use super::sockets::WorkerSockets;
use crate::proxy::handoff::{self, Frozen};
use crate::proxy::listener::{self, BoundSocket, Listening};
use crate::proxy::{DataPlane, Tracker, resume};

pub(super) fn run_worker(
    id: usize,
    (sockets, mut added, mut adopt): (
        WorkerSockets,
        mpsc::UnboundedReceiver<BoundSocket>,
        mpsc::UnboundedReceiver<Box<Frozen>>,
    ),
    plane: Arc<DataPlane>,
    drain: std::time::Duration,
    stop: StopHandle,
    heartbeats: Option<Arc<crate::notify::Heartbeats>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(worker = id, error = %e, "cannot build the worker runtime");
            return;
        }
    };
    let (shutdown, mut now) = (stop.drain.subscribe(), stop.now.subscribe());
    rt.block_on(async move {
        if let Some(beats) = heartbeats {
            drop(tokio::spawn(beats.beat(id)));
        }
        drop(tokio::spawn(handoff::wake_all(plane.handoff.woken())));
        let tracker = Tracker::default();
        // A connection to resume here: handed over by the previous process, or back from a
        // handover that failed.
        let resume = |frozen: Box<Frozen>| {
            let guard = tracker.enter();
            drop(tokio::spawn(resume::resume(frozen, plane.clone(), Some(guard))));
        };
        // TCP accept loops return at shutdown and are awaited before the drain; a UDP socket
        // serves its open sessions through the drain, and each session holds the tracker.
        let spawn = |b: BoundSocket| match b.socket {
            Listening::Tcp(_) => Some(tokio::spawn(listener::accept_loop(b, plane.clone(), shutdown.clone(), tracker.clone()))),
            Listening::Udp(bound) => {
                drop(tokio::spawn(crate::proxy::udp::serve(b.key, bound, plane.clone(), shutdown.clone(), tracker.clone())));
                None
            }
        };
        let mut loops: Vec<_> = sockets.into_iter().filter_map(spawn).collect();
        let mut stop_rx = shutdown.clone();
        loop {
            tokio::select! {
                _ = stop_rx.wait_for(|s| *s) => break,
                Some(b) = added.recv() => loops.extend(spawn(b)),
                Some(frozen) = adopt.recv() => resume(frozen),
            }
        }
        // Accept loops return on shutdown and drop their sockets: new connects are refused.
        for l in loops {
            let _ = l.await;
        }
        let open = tracker.open();
        if open > 0 {
            if plane.handoff.freezing() {
                info!(worker = id, open, timeout = ?drain, "handing connections over to the new process (UDP sessions and what it cannot take finish here)");
            } else {
                info!(worker = id, open, timeout = ?drain, "draining connections and UDP sessions");
            }
        }
        let mut deadline = tokio::time::Instant::now() + drain;
        let mut progress = plane.handoff.progress();
        let mut closed = false;
        loop {
            tokio::select! {
                () = tracker.wait_idle() => {
                    // Nothing left here: this worker takes no more. A connection a handover
                    // sent back meanwhile (it brings the guard of the worker it came from,
                    // which may be another) is served here first.
                    if closed {
                        break;
                    }
                    adopt.close();
                    closed = true;
                    // (`recv`, not `try_recv`: it waits for a send caught halfway.)
                    while let Some(frozen) = adopt.recv().await {
                        resume(frozen);
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    // A binary upgrade still freezing connections is not cut short: the
                    // deadline counts from its last progress.
                    if plane.handoff.progress() != progress {
                        progress = plane.handoff.progress();
                        deadline = tokio::time::Instant::now() + drain;
                        continue;
                    }
                    info!(worker = id, open = tracker.open(), "drain timeout reached; closing the rest");
                    break;
                }
                _ = now.wait_for(|n| *n) => {
                    info!(worker = id, open = tracker.open(), "stopping now; closing the rest");
                    break;
                }
                // Back from a handover that failed: it is served here to its end.
                Some(frozen) = adopt.recv(), if !closed => resume(frozen),
            }
        }
    });
    // Dropping the runtime cancels whatever is still open; their sockets close.
}
