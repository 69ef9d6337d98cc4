//! The supervisor: turns a validated [`Config`] into the first snapshot, binds every
//! listening socket (all before any worker starts, so a bad bind fails the start cleanly),
//! runs the data-plane workers and the control plane (admin API), and drains on shutdown.
//!
//! [`Server`] is the in-process handle that `main.rs`, the demo and the tests use alike.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use tokio::sync::{mpsc, watch};
use tracing::{error, info};

use crate::config::{Config, Forwarding};
use crate::control::{BoundMap, Control};
use crate::live::Live;
use crate::proxy::listener::{self, BoundSocket};
use crate::proxy::{DataPlane, ForwardMode, PassiveDown, Tracker};
use crate::reload::bind_group;
use crate::state::{Published, Snapshot};
use crate::sys::PipePool;

/// Bytes each splice pipe asks the kernel for.
const PIPE_SIZE: usize = 128 * 1024;
/// Passive-health notices waiting for the control plane. One per backend crossing its limit,
/// so this is plenty; when full, the data plane retries on the backend's next failure.
const PASSIVE_QUEUE: usize = 1024;

/// A running tollgate: its workers, the control plane, and the way to stop them.
pub struct Server {
    control: Arc<Control>,
    stop: StopHandle,
    workers: Vec<JoinHandle<()>>,
    control_thread: Option<JoinHandle<()>>,
    admin_addr: Option<SocketAddr>,
}

/// Stops a running [`Server`] from anywhere (a signal handler, another thread).
#[derive(Clone)]
pub struct StopHandle {
    /// true: stop accepting and drain.
    drain: Arc<watch::Sender<bool>>,
    /// true: close every connection now, without waiting for the drain timeout.
    now: Arc<watch::Sender<bool>>,
}

impl StopHandle {
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
}

impl Server {
    /// Starts `config` built in memory; reloads are refused (there is no file).
    pub fn start(config: &Config) -> Result<Server> {
        Server::start_from(config, None)
    }

    /// Binds every listener (and the admin API) and starts the workers and the control
    /// plane. `path` is the file that reloads re-read.
    pub fn start_from(config: &Config, path: Option<PathBuf>) -> Result<Server> {
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
        let (bound, sockets) = bind_all(config, workers)?;
        let admin = match &config.admin {
            Some(a) => Some(
                crate::admin::bind(a.bind)
                    .with_context(|| format!("admin: cannot bind {}", a.bind))?,
            ),
            None => None,
        };
        let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
        // Pipes cost two descriptors each; keep them to a quarter of the limit so sockets
        // never starve (beyond it, bursts copy through a buffer instead).
        let max_pipes = usize::try_from(fd_limit.soft / 8).unwrap_or(1024).max(2);
        let live = Live::default();
        let (failing_tx, failing_rx) = mpsc::channel(PASSIVE_QUEUE);
        let plane = Arc::new(DataPlane::new(
            Published::new(live.build(config, 1)),
            PipePool::new(max_pipes, 1024.min(max_pipes), PIPE_SIZE),
            match config.forwarding {
                Forwarding::Splice => ForwardMode::Splice,
                Forwarding::Copy => ForwardMode::Copy,
            },
            failing_tx,
        ));
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let control = Arc::new(Control::new(
            plane,
            live,
            Arc::new(config.clone()),
            path,
            senders,
            bound.clone(),
        ));
        let stop = StopHandle {
            drain: Arc::new(watch::channel(false).0),
            now: Arc::new(watch::channel(false).0),
        };
        let mut handles = Vec::with_capacity(workers);
        for (id, (socks, rx)) in sockets.into_iter().zip(receivers).enumerate() {
            let (control, stop) = (control.clone(), stop.clone());
            let handle = std::thread::Builder::new()
                .name(format!("tollgate-w{id}"))
                .spawn(move || run_worker(id, socks, rx, control, stop))
                .context("cannot start a worker thread")?;
            handles.push(handle);
        }
        let control_thread = Some(spawn_control_plane(
            admin,
            failing_rx,
            control.clone(),
            stop.clone(),
        )?);
        for ((name, _), addr) in &bound {
            info!(listener = %name, %addr, workers, "listener bound");
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

    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// The published snapshot, for inspection.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.control.plane.snapshot.load_full()
    }

    /// Splice pipes that exist now (in use or pooled); 0 when nothing has been spliced.
    pub fn pipes_open(&self) -> usize {
        self.control.plane.pipes.open()
    }

    /// Stops accepting on every listener at once; open connections carry on until they end or
    /// the drain timeout passes. Returns immediately; [`Server::wait`] joins.
    pub fn begin_shutdown(&self) {
        self.control
            .draining
            .store(true, std::sync::atomic::Ordering::Release);
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

type WorkerSockets = Vec<BoundSocket>;

/// Binds each (listener, address) once per worker.
fn bind_all(config: &Config, workers: usize) -> Result<(BoundMap, Vec<WorkerSockets>)> {
    let mut bound = BoundMap::new();
    let mut sockets: Vec<WorkerSockets> = (0..workers).map(|_| Vec::new()).collect();
    for l in &config.listeners {
        let name: Arc<str> = l.name.as_str().into();
        for want in &l.bind {
            let (actual, group) = bind_group(*want, workers, true).with_context(|| {
                format!(
                    "listener {}: cannot bind {want} (is another process using it?)",
                    l.name
                )
            })?;
            for (worker, socket) in sockets.iter_mut().zip(group) {
                worker.push(BoundSocket {
                    name: name.clone(),
                    configured: *want,
                    socket,
                });
            }
            bound.insert((l.name.clone(), *want), actual);
        }
    }
    Ok((bound, sockets))
}

/// The control plane's thread: health checks always, the admin API when configured.
fn spawn_control_plane(
    admin: Option<std::net::TcpListener>,
    mut failing: mpsc::Receiver<PassiveDown>,
    control: Arc<Control>,
    stop: StopHandle,
) -> Result<JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the control-plane runtime")?;
    let mut done = stop.now.subscribe();
    std::thread::Builder::new()
        .name("tollgate-ctl".into())
        .spawn(move || {
            rt.block_on(async move {
                control.attach(tokio::runtime::Handle::current());
                let api = async {
                    match admin {
                        Some(l) => crate::admin::serve(l, control.clone()).await,
                        None => std::future::pending().await,
                    }
                };
                let passive = async {
                    while let Some(PassiveDown { pool, backend }) = failing.recv().await {
                        control.passive_down(&pool, backend);
                    }
                };
                tokio::select! {
                    () = api => {}
                    () = passive => {}
                    _ = done.wait_for(|n| *n) => {}
                }
                control.checks.stop();
                control.discovery.stop();
            });
        })
        .context("cannot start the control-plane thread")
}

fn run_worker(
    id: usize,
    sockets: WorkerSockets,
    mut added: mpsc::UnboundedReceiver<BoundSocket>,
    control: Arc<Control>,
    stop: StopHandle,
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
    let plane = control.plane.clone();
    let (shutdown, mut now) = (stop.drain.subscribe(), stop.now.subscribe());
    rt.block_on(async move {
        let tracker = Tracker::default();
        let spawn = |b: BoundSocket| tokio::spawn(listener::accept_loop(b, plane.clone(), shutdown.clone(), tracker.clone()));
        let mut loops: Vec<_> = sockets.into_iter().map(spawn).collect();
        let mut stop_rx = shutdown.clone();
        loop {
            tokio::select! {
                _ = stop_rx.wait_for(|s| *s) => break,
                Some(b) = added.recv() => loops.push(spawn(b)),
            }
        }
        // Accept loops return on shutdown and drop their sockets: new connects are refused.
        for l in loops {
            let _ = l.await;
        }
        let open = tracker.open();
        if open > 0 {
            let drain = control.config().drain_timeout;
            info!(worker = id, open, timeout = ?drain, "draining connections");
            tokio::select! {
                r = tokio::time::timeout(drain, tracker.wait_idle()) => if r.is_err() {
                    info!(worker = id, open = tracker.open(), "drain timeout reached; closing the rest");
                },
                _ = now.wait_for(|n| *n) => {
                    info!(worker = id, open = tracker.open(), "stopping now; closing the rest");
                }
            }
        }
    });
    // Dropping the runtime cancels whatever is still open; their sockets close.
}

fn warn_if_caps_exceed(config: &Config, fd_soft: u64) {
    let total: u64 = config
        .listeners
        .iter()
        .map(|l| l.max_connections as u64)
        .sum();
    // Each proxied connection holds two sockets, and up to two pipes while moving data.
    if total.saturating_mul(2) > fd_soft {
        tracing::warn!(
            fd_limit = fd_soft,
            max_connections_total = total,
            "the open-file limit cannot fit every listener's max_connections; accepts will pause when it runs out"
        );
    }
}

/// Runs the config at `path` in the foreground until SIGTERM or SIGINT, then drains and
/// returns. SIGHUP reloads the file. A second SIGTERM or SIGINT during the drain closes the
/// remaining connections at once.
pub fn run(config: &Config, path: PathBuf) -> Result<()> {
    let server = Server::start_from(config, Some(path))?;
    let signals_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the signal runtime")?;
    signals_rt.block_on(async move {
        let mut signals = crate::signals::Signals::new()?;
        let control = server.control().clone();
        signals.next_stop(|| drop(control.reload())).await;
        info!(timeout = ?config.drain_timeout, "stop signal received; draining");
        server.begin_shutdown();
        let stop = server.stop_handle();
        let mut joined = tokio::task::spawn_blocking(move || server.wait());
        tokio::select! {
            _ = &mut joined => {}
            () = signals.next_stop(|| tracing::warn!("SIGHUP during the drain is ignored")) => {
                info!("second stop signal; closing every connection now");
                stop.now();
                let _ = joined.await;
            }
        }
        info!("stopped");
        Ok(())
    })
}
