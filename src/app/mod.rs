//! The supervisor: turns a validated [`Config`] into the first snapshot, binds every
//! listening socket (all before any worker starts, so a bad bind fails the start cleanly),
//! runs the data-plane workers and the control plane (its owner and the admin API), watches
//! both, and drains on shutdown.
//!
//! [`Server`] is the in-process handle that `main.rs`, the demo and the tests use alike.
//! `sockets.rs` binds the listening sockets, or takes them over from the process that
//! upgraded to this one; `worker.rs` runs one data-plane worker. The upgrade itself
//! (`crate::upgrade`) uses what [`Handover`] offers it: the sockets in service, pausing
//! them, the admin API, and the workers that resume connections.

mod handover;
mod sockets;
mod worker;

pub use handover::Handover;
pub use sockets::Inherited;
use sockets::warn_if_caps_exceed;
use worker::run_worker;

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use tokio::sync::{mpsc, watch};
use tracing::{error, info};

use crate::admin::AdminOff;
use crate::config::{Config, Forwarding};
use crate::control::{Channels, Handle, Owner};
use crate::proxy::handoff::Frozen;
use crate::proxy::listener::BindKey;
use crate::proxy::{DataPlane, ForwardMode};
use crate::state::{Published, Snapshot};
use crate::sys::PipePool;

/// Bytes each splice pipe asks the kernel for.
const PIPE_SIZE: usize = 128 * 1024;
/// Empty pipes each worker keeps for its next bursts (fewer if `max_pipes` is small): enough
/// that bulk bursts starting and ending on many connections reuse pipes instead of paying
/// `pipe2` + `fcntl` + `close` each time; few enough that idle pipes (two descriptors each,
/// and pages of an unprivileged user's pipe quota) stay a small share of the bound.
const PIPES_CACHED_PER_WORKER: usize = 256;
/// Passive-failure notices queued from the data plane (each is one backend crossing its
/// limit, so this is far more than a burst of them).
const PASSIVE_QUEUE: usize = 1024;

/// A running tollgate: its workers, the control plane, and the way to stop them.
pub struct Server {
    control: Handle,
    stop: StopHandle,
    workers: Vec<JoinHandle<()>>,
    control_thread: Option<JoinHandle<()>>,
    admin_addr: Option<SocketAddr>,
    /// A duplicate of the admin socket, for a binary upgrade to hand over.
    admin_socket: Option<OwnedFd>,
    /// Each worker's way in for connections to resume (handed over, or back from a
    /// handover that failed).
    adopters: Vec<mpsc::UnboundedSender<Box<Frozen>>>,
}

/// Stops a running [`Server`] from anywhere (a signal handler, another thread).
#[derive(Clone)]
pub struct StopHandle {
    /// true: stop accepting and drain.
    drain: Arc<watch::Sender<bool>>,
    /// true: close every connection now, without waiting for the drain timeout.
    now: Arc<watch::Sender<bool>>,
    /// Why the control plane failed, when it did; the process then drains and exits 1.
    failure: Arc<OnceLock<String>>,
    /// The admin API handed to a new process: stop accepting on it.
    admin_off: Arc<watch::Sender<AdminOff>>,
}

impl StopHandle {
    fn new() -> StopHandle {
        StopHandle {
            drain: Arc::new(watch::channel(false).0),
            now: Arc::new(watch::channel(false).0),
            failure: Arc::default(),
            admin_off: Arc::new(watch::channel(AdminOff::Serving).0),
        }
    }

    /// Stops accepting on every listener at once; open connections carry on until they end
    /// or the drain timeout passes.
    pub fn drain(&self) {
        self.drain.send_replace(true);
    }

    /// Ends the drain early: every open connection is closed now.
    pub fn now(&self) {
        self.drain();
        self.now.send_replace(true);
    }

    /// Resolves once a drain has begun, whoever began it.
    pub async fn draining(&self) {
        let mut rx = self.drain.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Why the control plane failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.get().cloned()
    }
}

impl Server {
    /// Starts `config` built in memory; reloads are refused (there is no file).
    pub fn start(config: &Config) -> Result<Server> {
        Server::start_from(config, None)
    }

    /// Binds every listener (and the admin API) and starts the workers and the control
    /// plane. `path` is the file that reloads re-read.
    pub fn start_from(config: &Config, path: Option<PathBuf>) -> Result<Server> {
        Server::start_run(config, path, Inherited::default(), None)
    }

    /// [`Server::start_from`] as `tollgate run` starts it: serving the sockets a binary
    /// upgrade handed over where the config still names them (and binding the rest), and
    /// passing binary upgrades asked for through the admin API to `upgrades` (taken before
    /// the admin API answers its first request).
    pub fn start_run(
        config: &Config,
        path: Option<PathBuf>,
        mut inherited: Inherited,
        upgrades: Option<mpsc::Sender<crate::control::UpgradeAsk>>,
    ) -> Result<Server> {
        let fd_limit = match crate::sys::raise_nofile_limit() {
            Ok(limit) => limit,
            Err(e) => {
                tracing::warn!(error = %e, "cannot raise the open-file limit; assuming 1024");
                crate::sys::rlimit::FdLimit {
                    soft: 1024,
                    hard: 1024,
                }
            }
        };
        let workers = config.workers.resolve();
        warn_if_caps_exceed(config, fd_limit.soft);
        let admin_inherited = inherited.take_admin(config.admin.as_ref().map(|a| a.bind));
        let mut inherited_control = inherited.control.take();
        let (bound, sockets) = sockets::bind_all(config, workers, inherited)?;
        let admin = match (&config.admin, admin_inherited) {
            (Some(_), Some(sock)) => Some(
                crate::admin::adopt(sock).context("admin: cannot take over the admin socket")?,
            ),
            (Some(a), None) => Some(crate::admin::bind(a.bind).map_err(|e| {
                let why = crate::privileged_ports::bind_failure(a.bind, &e);
                anyhow::anyhow!("admin: {why}")
            })?),
            (None, _) => None,
        };
        let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
        let admin_socket = match &admin {
            Some(a) => Some(
                a.duplicate()
                    .context("admin: cannot duplicate the admin socket")?,
            ),
            None => None,
        };
        // Pipes cost two descriptors each; keep them to a quarter of the limit so sockets
        // never starve (beyond it, bursts copy through a buffer instead). Each worker caches
        // at most its share of them.
        let max_pipes = usize::try_from(fd_limit.soft / 8).unwrap_or(1024).max(2);
        let cached = (max_pipes / workers.max(1)).clamp(1, PIPES_CACHED_PER_WORKER);
        let pipes = PipePool::new(max_pipes, cached, PIPE_SIZE);
        let mode = match config.forwarding {
            Forwarding::Splice => ForwardMode::Splice,
            Forwarding::Copy => ForwardMode::Copy,
        };
        let (passive_tx, passive) = mpsc::channel(PASSIVE_QUEUE);
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let channels = Channels {
            workers: senders,
            passive,
        };
        let carried = inherited_control.take();
        let (owner, control) =
            Owner::new(config, path, bound.clone(), channels, carried, |first| {
                let plane = DataPlane::new(Published::new(first), pipes, mode, passive_tx);
                let logging = config.logging;
                plane.access.configure(logging.access, logging.access_rate);
                plane
            });
        if let Some(upgrades) = upgrades {
            control.accept_upgrades(upgrades);
        }
        let stop = StopHandle::new();
        let drain_timeout = config.drain_timeout;
        // Under systemd's watchdog, each worker stamps a heartbeat and one thread pings
        // while all of them do.
        let heartbeats = crate::notify::watchdog_period()
            .map(|period| crate::notify::Heartbeats::new(workers, period));
        let mut handles = Vec::with_capacity(workers);
        let (adopters, adopting): (Vec<_>, Vec<_>) =
            (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        for (id, ((socks, rx), adopt)) in
            sockets.into_iter().zip(receivers).zip(adopting).enumerate()
        {
            let (plane, stop) = (control.plane().clone(), stop.clone());
            let beats = heartbeats.clone();
            let handle = std::thread::Builder::new()
                .name(format!("tollgate-w{id}"))
                .spawn(move || {
                    run_worker(id, (socks, rx, adopt), plane, drain_timeout, stop, beats)
                })
                .context("cannot start a worker thread")?;
            handles.push(handle);
        }
        if let Some(beats) = &heartbeats {
            let drain = stop.drain.clone();
            beats
                .spawn_pinger(move || *drain.borrow())
                .context("cannot start the watchdog thread")?;
            info!(period = ?beats.period(), "systemd watchdog on: pinging while every worker turns");
        }
        let control_thread = Some(spawn_control_plane(
            owner,
            admin,
            control.clone(),
            stop.clone(),
        )?);
        for l in &config.listeners {
            for want in &l.bind {
                if let Some(addr) = bound.get(&BindKey::new(&l.name, l.protocol.transport(), *want))
                {
                    info!(listener = %l.name, %addr, workers, "listener bound");
                }
            }
        }
        if let Some(addr) = admin_addr {
            info!(%addr, "admin API listening");
        }
        Ok(Server {
            control,
            stop,
            workers: handles,
            control_thread,
            admin_addr,
            admin_socket,
            adopters,
        })
    }

    /// The addresses a listener is bound to (with real ports for port-0 binds).
    pub fn addrs(&self, listener: &str) -> Vec<SocketAddr> {
        self.control.addrs(listener)
    }

    /// Where the admin API listens, when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn control(&self) -> &Handle {
        &self.control
    }

    /// The published snapshot, for inspection.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.control.snapshot()
    }

    /// Splice pipes that exist now (in use or pooled); 0 when nothing has been spliced.
    pub fn pipes_open(&self) -> usize {
        self.control.plane().pipes.open()
    }

    /// What a binary upgrade needs of this server, for the thread that carries it out.
    pub fn handover(&self) -> Handover {
        Handover {
            adopters: self.adopters.clone(),
            control: self.control.clone(),
            admin: self
                .admin_addr
                .zip(
                    self.admin_socket
                        .as_ref()
                        .and_then(|fd| fd.try_clone().ok()),
                )
                .map(|(addr, fd)| (addr, Arc::new(fd))),
        }
    }

    /// After a binary upgrade: the listeners stay paused, and the admin API stops
    /// accepting (the new process serves both), until the handover settles
    /// ([`Server::handover_settled`]). Returns once this process accepts nothing more on the
    /// admin socket (at most a second), so that whoever hears of the upgrade next reaches
    /// the new process. Open connections carry on; a drain ([`Server::begin_shutdown`])
    /// ends them.
    pub async fn handed_over(&self) {
        self.control.plane().listening.pause(true);
        self.stop.admin_off.send_replace(AdminOff::Asked);
        if self.admin_addr.is_some() {
            let mut off = self.stop.admin_off.subscribe();
            let stopped = off.wait_for(|o| *o == AdminOff::Stopped);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), stopped).await;
        }
    }

    /// The handover of a binary upgrade has settled. `serves`: the new process serves for
    /// good, and this one's admin API ends (its listeners stay paused until the drain).
    /// Otherwise the new process died first: this one accepts on its listeners and admin
    /// socket again.
    pub fn handover_settled(&self, serves: bool) {
        if serves {
            self.stop.admin_off.send_replace(AdminOff::Gone);
        } else {
            self.control.plane().listening.pause(false);
            self.stop.admin_off.send_replace(AdminOff::Serving);
        }
    }

    /// Stops accepting on every listener at once; open connections carry on until they end or
    /// the drain timeout passes. Returns immediately; [`Server::wait`] joins.
    pub fn begin_shutdown(&self) {
        self.control.set_draining();
        self.stop.drain();
    }

    /// A handle that can drain or stop this server from elsewhere.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Begins the drain (if not yet begun) and waits for everything to finish.
    pub fn shutdown(self) {
        self.begin_shutdown();
        self.wait();
    }

    /// Waits for the workers, then the control plane, to exit (only after a shutdown began).
    pub fn wait(self) {
        for w in self.workers {
            if w.join().is_err() {
                error!("a worker thread panicked");
            }
        }
        // The admin API answers (503 on /readyz) until the last connection is gone.
        self.stop.now();
        if let Some(t) = self.control_thread
            && t.join().is_err()
        {
            error!("the control-plane thread panicked");
        }
    }
}

/// The control plane's thread: the owner, and the admin API when configured, until the
/// server stops. If the owner dies (a bug), the failure is recorded and the process drains:
/// running on without health checks, DNS or reloads would be worse than a restart.
fn spawn_control_plane(
    owner: Owner,
    admin: Option<crate::admin::Socket>,
    control: Handle,
    stop: StopHandle,
) -> Result<JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the control-plane runtime")?;
    std::thread::Builder::new()
        .name("tollgate-ctl".into())
        .spawn(move || {
            rt.block_on(async move {
                let admin = admin.map(|socket| {
                    let off = stop.admin_off.clone();
                    tokio::spawn(crate::admin::serve(socket, control.clone(), off))
                });
                watch_owner(owner, &control, &stop).await;
                // Handed over to a new process: the requests this one accepted (the upgrade's
                // own) are answered before it exits (bounded by the admin API's grace).
                let handed_over = *stop.admin_off.borrow() != AdminOff::Serving;
                // Exiting: a handover still unsettled never will be.
                stop.admin_off.send_if_modified(|o| {
                    let open = matches!(o, AdminOff::Asked | AdminOff::Stopped);
                    if open {
                        *o = AdminOff::Gone;
                    }
                    open
                });
                if let Some(admin) = admin
                    && handed_over
                {
                    let _ = admin.await;
                }
            });
            // A reload still reading a stuck file (on a dead network mount) must not keep
            // the process from exiting.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
        })
        .context("cannot start the control-plane thread")
}

/// Resolves once `rx` holds true. Unlike a bare `wait_for` in a `select!` branch, it holds
/// no read guard on the value afterwards: a branch's `_` pattern keeps the returned `Ref`
/// alive through the handler, and a handler that then awaits a task reading the same watch
/// deadlocks as soon as a writer queues between them (a second stop signal did exactly
/// that).
async fn turned_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Runs the owner until the server stops. An owner that ends before that (a bug) is
/// recorded as the failure, and the server drains: `/readyz` says 503 at once, and the
/// admin API keeps answering through the drain.
async fn watch_owner(owner: Owner, control: &Handle, stop: &StopHandle) {
    let mut done = stop.now.subscribe();
    let mut owner = tokio::spawn(owner.run(stop.now.subscribe()));
    let ended = tokio::select! {
        ended = &mut owner => ended,
        () = turned_true(&mut done) => {
            // Stopping: the owner sees `now` too, and stops its tasks.
            let _ = owner.await;
            return;
        }
    };
    if *stop.now.borrow() {
        return;
    }
    let why = match ended {
        Ok(()) => "it returned".to_owned(),
        Err(e) => format!("it panicked: {e}"),
    };
    error!(
        why,
        "the control plane stopped unexpectedly; draining and exiting"
    );
    let _ = stop
        .failure
        .set(format!("the control plane stopped unexpectedly ({why})"));
    control.set_draining();
    stop.drain();
    let _ = done.wait_for(|n| *n).await;
}
