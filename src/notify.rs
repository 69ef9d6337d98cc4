//! Telling the service manager how the process is doing (systemd's `sd_notify` protocol,
//! through the sd-notify crate): `READY=1` once every listener is bound and the first health
//! round is in, `RELOADING=1` (with `MONOTONIC_USEC`) then `READY=1` around each reload,
//! `STOPPING=1` when the drain starts, `MAINPID=` from a process that a binary upgrade
//! started, and `WATCHDOG=1` while every data-plane worker keeps turning its event loop.
//!
//! Without `NOTIFY_SOCKET` (not under systemd, or in tests that run servers in-process)
//! every call is a no-op. A failed send is logged at debug and otherwise ignored: the
//! service manager's view is never a reason to stop serving.
//!
//! The watchdog: each worker runs a [`Heartbeat`] task that stamps its slot every quarter of
//! the watchdog period; one thread sends `WATCHDOG=1` every half period, and only while
//! every slot is fresher than half a period. A worker stuck in a system call or a busy loop
//! stops stamping, the pings stop, and systemd kills and restarts the process
//! (`WatchdogSec=` in the unit).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tracing::{debug, warn};

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        debug!(error = %e, "cannot notify the service manager");
    }
}

/// Whether start-up was announced: a reload asked for before that (a SIGHUP during start-up)
/// must not announce it early with its own `READY=1`.
static STARTED: AtomicBool = AtomicBool::new(false);

/// Start-up is done: listeners bound, first health round in. `status` says what is up.
pub fn ready(status: &str) {
    STARTED.store(true, Ordering::Relaxed);
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload starts; [`reloaded`] follows however it ends.
pub fn reloading() {
    if !STARTED.load(Ordering::Relaxed) {
        return;
    }
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// A reload ended (applied or refused: either way the instance serves).
pub fn reloaded(status: &str) {
    if STARTED.load(Ordering::Relaxed) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }
}

/// This process is the service's main process (again: the new process of a binary upgrade
/// died before the handover settled), as systemd is to follow it.
pub fn main_pid() {
    main_pid_is(std::process::id());
}

/// The new process of a binary upgrade serves for good: systemd follows it as the service's
/// main process from now on (the unit's `NotifyAccess=all` lets this one say so). Said by
/// the old process once the handover has settled, not by the new one when it is ready: a
/// new process that dies before then leaves the old one serving, and systemd must not
/// take that death for the service's.
pub fn main_pid_is(pid: u32) {
    send(&[NotifyState::MainPid(pid)]);
}

/// The drain has begun.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// The watchdog period systemd asked for (`WATCHDOG_USEC`, for this process), if any.
pub fn watchdog_period() -> Option<Duration> {
    std::env::var_os("NOTIFY_SOCKET")?;
    sd_notify::watchdog_enabled()
}

/// The workers' heartbeats: one slot per worker, milliseconds since `origin` at its last
/// stamp.
pub struct Heartbeats {
    origin: Instant,
    slots: Vec<AtomicU64>,
    period: Duration,
}

impl Heartbeats {
    pub fn new(workers: usize, period: Duration) -> Arc<Heartbeats> {
        Arc::new(Heartbeats {
            origin: Instant::now(),
            slots: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            period,
        })
    }

    /// The watchdog period systemd asked for.
    pub fn period(&self) -> Duration {
        self.period
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Worker `id`'s task: stamps its slot every quarter period for as long as the worker's
    /// runtime turns (it ends with the runtime).
    pub async fn beat(self: Arc<Self>, id: usize) {
        let mut tick = tokio::time::interval(self.period / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Some(slot) = self.slots.get(id) {
                slot.store(self.now_ms(), Ordering::Relaxed);
            }
        }
    }

    /// The workers whose last stamp is older than half a period.
    fn stale(&self) -> Vec<usize> {
        let now = self.now_ms();
        let limit = u64::try_from((self.period / 2).as_millis()).unwrap_or(u64::MAX);
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| now.saturating_sub(s.load(Ordering::Relaxed)) > limit)
            .map(|(i, _)| i)
            .collect()
    }

    /// Starts the thread that pings the watchdog while every worker beats, until `draining`
    /// says the drain began (from then the workers wind
    /// down, and systemd's stop timeout covers the process).
    pub fn spawn_pinger(
        self: &Arc<Self>,
        draining: impl Fn() -> bool + Send + 'static,
    ) -> std::io::Result<()> {
        let beats = self.clone();
        std::thread::Builder::new()
            .name("tollgate-watchdog".into())
            .spawn(move || beats.ping_loop(draining))
            .map(drop)
    }

    fn ping_loop(&self, draining: impl Fn() -> bool) {
        // The workers stamp from their first turn; give them one beat's time before the
        // first verdict.
        std::thread::sleep(self.period / 4);
        let mut warned = false;
        while !draining() {
            let stale = self.stale();
            if stale.is_empty() {
                send(&[NotifyState::Watchdog]);
                warned = false;
            } else if !warned {
                warn!(workers = ?stale, period = ?self.period, "a worker has not turned its event loop for half the watchdog period; not pinging the watchdog");
                warned = true;
            }
            std::thread::sleep(self.period / 2);
        }
    }
}
