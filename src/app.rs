//! The supervisor: turns a validated [`Config`] into the first [`Snapshot`], binds every
//! listening socket (all before any worker starts, so a bad bind fails the start cleanly),
//! runs the data-plane workers, and drains them on shutdown.
//!
//! [`Server`] is the in-process handle that `main.rs`, the demo and the tests use alike.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use tokio::sync::watch;
use tracing::{error, info};

use crate::config::{Config, Forwarding};
use crate::proxy::{DataPlane, ForwardMode, Tracker, listener};
use crate::state::{Backend, BackendStats, ListenerLive, ListenerSpec, Pool, Snapshot};
use crate::sys::PipePool;

/// Bytes each splice pipe asks the kernel for.
const PIPE_SIZE: usize = 128 * 1024;

/// A running tollgate: its workers, their sockets, and the way to stop them.
pub struct Server {
    bound: HashMap<String, Vec<SocketAddr>>,
    plane: Arc<DataPlane>,
    stop: StopHandle,
    workers: Vec<JoinHandle<()>>,
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
    /// Binds every listener and starts the workers. Returns once all sockets are bound and
    /// accepting (a port-0 bind then has its real port in [`Server::addrs`]).
    pub fn start(config: &Config) -> Result<Server> {
        let fd_limit =
            crate::sys::raise_nofile_limit().context("cannot read or raise the open-file limit")?;
        let workers = config.workers.resolve();
        warn_if_caps_exceed(config, fd_limit.soft);
        let snapshot = build_snapshot(config, 1);
        let (bound, sockets) = bind_all(config, workers)?;
        // Pipes cost two descriptors each; keep them to a quarter of the limit so sockets
        // never starve (beyond it, bursts copy through a buffer instead).
        let max_pipes = usize::try_from(fd_limit.soft / 8).unwrap_or(1024).max(2);
        let plane = Arc::new(DataPlane {
            snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
            pipes: PipePool::new(max_pipes, 1024.min(max_pipes), PIPE_SIZE),
            mode: match config.forwarding {
                Forwarding::Splice => ForwardMode::Splice,
                Forwarding::Copy => ForwardMode::Copy,
            },
        });
        let stop = StopHandle {
            drain: Arc::new(watch::channel(false).0),
            now: Arc::new(watch::channel(false).0),
        };
        let drain = config.drain_timeout;
        let mut handles = Vec::with_capacity(workers);
        for (id, socks) in sockets.into_iter().enumerate() {
            let (plane, rx, now) = (plane.clone(), stop.drain.subscribe(), stop.now.subscribe());
            let handle = std::thread::Builder::new()
                .name(format!("tollgate-w{id}"))
                .spawn(move || run_worker(id, socks, plane, (rx, now), drain))
                .context("cannot start a worker thread")?;
            handles.push(handle);
        }
        for (name, addrs) in &bound {
            for addr in addrs {
                info!(listener = %name, %addr, workers, "listener bound");
            }
        }
        Ok(Server {
            bound,
            plane,
            stop,
            workers: handles,
        })
    }

    /// The addresses a listener is bound to (with real ports for port-0 binds).
    pub fn addrs(&self, listener: &str) -> &[SocketAddr] {
        self.bound.get(listener).map_or(&[], Vec::as_slice)
    }

    /// The published snapshot, for inspection.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.plane.snapshot.load_full()
    }

    /// Splice pipes that exist now (in use or pooled); 0 when nothing has been spliced.
    pub fn pipes_open(&self) -> usize {
        self.plane.pipes.open()
    }

    /// Stops accepting on every listener at once; open connections carry on until they end or
    /// the drain timeout passes. Returns immediately; [`Server::wait`] joins.
    pub fn begin_shutdown(&self) {
        self.stop.drain();
    }

    /// A handle that can drain or stop this server from elsewhere.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Begins the drain (if not yet begun) and waits for every worker to finish.
    pub fn shutdown(self) {
        self.begin_shutdown();
        self.wait();
    }

    /// Waits for the workers to exit (they exit only after a shutdown began).
    pub fn wait(self) {
        for w in self.workers {
            if w.join().is_err() {
                error!("a worker thread panicked");
            }
        }
    }
}

type WorkerSockets = Vec<(Arc<str>, std::net::TcpListener)>;
type BoundAddrs = HashMap<String, Vec<SocketAddr>>;

/// Binds each address once per worker. A port-0 address is bound by the first worker and the
/// others join the port the kernel chose, so every worker shares one real port.
fn bind_all(config: &Config, workers: usize) -> Result<(BoundAddrs, Vec<WorkerSockets>)> {
    let mut bound = HashMap::new();
    let mut sockets: Vec<WorkerSockets> = (0..workers).map(|_| Vec::new()).collect();
    for l in &config.listeners {
        let name: Arc<str> = l.name.as_str().into();
        let mut addrs = Vec::new();
        for want in &l.bind {
            let mut addr = *want;
            listener::ensure_unclaimed(addr).with_context(|| {
                format!(
                    "listener {}: cannot bind {addr} (is another process using it?)",
                    l.name
                )
            })?;
            for worker in sockets.iter_mut() {
                let sock = listener::bind(addr)
                    .with_context(|| format!("listener {}: cannot bind {addr}", l.name))?;
                addr = sock
                    .local_addr()
                    .with_context(|| format!("listener {}: bound socket has no address", l.name))?;
                worker.push((name.clone(), sock));
            }
            addrs.push(addr);
        }
        bound.insert(l.name.clone(), addrs);
    }
    Ok((bound, sockets))
}

/// The first snapshot of a configuration.
pub fn build_snapshot(config: &Config, generation: u64) -> Snapshot {
    let pools: HashMap<&str, Arc<Pool>> = config
        .pools
        .iter()
        .map(|p| {
            let backends = p
                .backends
                .iter()
                .map(|b| {
                    Arc::new(Backend {
                        address: b.address,
                        weight: b.weight,
                        stats: Arc::new(BackendStats::default()),
                    })
                })
                .collect();
            (
                p.name.as_str(),
                Arc::new(Pool::new(&p.name, backends, p.connect_retries)),
            )
        })
        .collect();
    let listeners = config
        .listeners
        .iter()
        .filter_map(|l| {
            let pool = pools.get(l.pool.as_str())?.clone();
            let spec = ListenerSpec {
                name: l.name.as_str().into(),
                pool,
                connect_timeout: l.connect_timeout,
                idle_timeout: l.idle_timeout,
                live: Arc::new(ListenerLive::new(l.max_connections)),
            };
            Some((spec.name.clone(), Arc::new(spec)))
        })
        .collect();
    Snapshot {
        generation,
        listeners,
    }
}

fn run_worker(
    id: usize,
    sockets: WorkerSockets,
    plane: Arc<DataPlane>,
    (shutdown, mut now): (watch::Receiver<bool>, watch::Receiver<bool>),
    drain: Duration,
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
    rt.block_on(async move {
        let tracker = Tracker::default();
        let mut loops = Vec::new();
        for (name, sock) in sockets {
            match tokio::net::TcpListener::from_std(sock) {
                Ok(l) => loops.push(tokio::spawn(listener::accept_loop(
                    l,
                    name,
                    plane.clone(),
                    shutdown.clone(),
                    tracker.clone(),
                ))),
                Err(e) => {
                    error!(worker = id, listener = %name, error = %e, "cannot register listener")
                }
            }
        }
        let mut stop = shutdown.clone();
        let _ = stop.wait_for(|s| *s).await;
        // Accept loops return on shutdown and drop their sockets: new connects are refused.
        for l in loops {
            let _ = l.await;
        }
        let open = tracker.open();
        if open > 0 {
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
    // Each proxied connection holds two sockets at least.
    if total.saturating_mul(2) > fd_soft {
        tracing::warn!(
            fd_limit = fd_soft,
            max_connections_total = total,
            "the open-file limit cannot fit every listener's max_connections; accepts will pause when it runs out"
        );
    }
}

/// Runs `config` in the foreground until SIGTERM or SIGINT, then drains and returns. A second
/// SIGTERM or SIGINT during the drain closes the remaining connections at once.
pub fn run(config: &Config) -> Result<()> {
    let server = Server::start(config)?;
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the control runtime")?;
    control.block_on(async move {
        let mut signals = Signals::new()?;
        signals.next_stop().await;
        info!(timeout = ?config.drain_timeout, "stop signal received; draining");
        let stop = server.stop_handle();
        stop.drain();
        let mut joined = tokio::task::spawn_blocking(move || server.wait());
        tokio::select! {
            _ = &mut joined => {}
            () = signals.next_stop() => {
                info!("second stop signal; closing every connection now");
                stop.now();
                let _ = joined.await;
            }
        }
        info!("stopped");
        Ok(())
    })
}

/// The process signals tollgate acts on.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            hup: signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?,
        })
    }

    /// Resolves on SIGTERM or SIGINT; SIGHUP in the meantime is answered with a warning.
    async fn next_stop(&mut self) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => tracing::warn!(
                    "SIGHUP received, but live reload is not available yet; restart to apply a new config"
                ),
            }
        }
    }
}
