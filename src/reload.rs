//! Reload, all or nothing: the new file is loaded and validated in full; new listening
//! sockets are bound (for every worker) before anything changes; then the next snapshot is
//! published in one swap. Listeners whose (name, bind) did not change keep their sockets, so
//! no queued connection is lost; removed ones stop accepting as soon as they see the new
//! snapshot while their open connections finish. Backends, overrides and counters carry over
//! by identity (`live.rs`). On any error nothing changes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::{info, warn};

use crate::config::{self, Config, ConfigErrors};
use crate::control::Control;
use crate::proxy::ForwardMode;
use crate::proxy::listener::{self, BoundSocket};

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the new config is invalid:\n{0}")]
    Config(ConfigErrors),
    #[error("this instance was started without a config file, so there is nothing to reload")]
    NoFile,
    #[error(
        "`workers` cannot change by a reload (running {running}, the file asks for {wanted}): restart to apply it"
    )]
    Workers { running: usize, wanted: usize },
    #[error(
        "the admin API cannot move, appear or disappear by a reload (running {running}, the file asks for {wanted}): restart to apply it"
    )]
    Admin { running: String, wanted: String },
    #[error("tollgate is draining for shutdown; reloads are refused")]
    Draining,
    #[error("listener {listener}: cannot bind {addr}: {source}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds `addr` once per worker (`SO_REUSEPORT`). A port-0 address is bound by the first and
/// joined by the others, so all share the port the kernel chose. `probe` first refuses an
/// address another process holds.
pub(crate) fn bind_group(
    addr: SocketAddr,
    workers: usize,
    probe: bool,
) -> std::io::Result<(SocketAddr, Vec<std::net::TcpListener>)> {
    if probe {
        listener::ensure_unclaimed(addr)?;
    }
    let mut actual = addr;
    let mut sockets = Vec::with_capacity(workers);
    for _ in 0..workers {
        let sock = listener::bind(actual)?;
        actual = sock.local_addr()?;
        sockets.push(sock);
    }
    Ok((actual, sockets))
}

/// A (listener, configured address) bound by a reload: its real address and one socket per
/// worker.
type FreshGroup = (String, SocketAddr, SocketAddr, Vec<std::net::TcpListener>);

impl Control {
    /// Reloads the config file this instance was started with (SIGHUP, `POST /api/v1/reload`).
    /// Logs the outcome once and counts it.
    pub fn reload(&self) -> Result<u64, ReloadError> {
        let result = match &self.config_path {
            None => Err(ReloadError::NoFile),
            Some(path) => config::load(path)
                .map_err(ReloadError::Config)
                .and_then(|c| self.apply(c)),
        };
        match &result {
            Ok(generation) => {
                self.reloads_succeeded.fetch_add(1, Ordering::Relaxed);
                info!(generation, "config reloaded");
            }
            Err(e) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                warn!("reload refused; the running config stays: {e}");
            }
        }
        result
    }

    /// Makes `next` the running config. Returns the new generation.
    pub fn apply(&self, next: Config) -> Result<u64, ReloadError> {
        let _serial = self
            .changes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.draining.load(Ordering::Acquire) {
            return Err(ReloadError::Draining);
        }
        let current = self.config();
        let (running, wanted) = (self.workers.len(), next.workers.resolve());
        if running != wanted {
            return Err(ReloadError::Workers { running, wanted });
        }
        // The admin socket is bound once at start: a reload that moved or removed it would
        // leave the old socket serving under the new (perhaps token-less) rules.
        let admin_bind = |c: &Config| {
            c.admin
                .as_ref()
                .map_or("no admin API".to_owned(), |a| a.bind.to_string())
        };
        if admin_bind(&current) != admin_bind(&next) {
            return Err(ReloadError::Admin {
                running: admin_bind(&current),
                wanted: admin_bind(&next),
            });
        }
        let fresh = self.bind_new(&next)?;
        let generation = self.bump_generation();
        self.plane.set_mode(match next.forwarding {
            config::Forwarding::Splice => ForwardMode::Splice,
            config::Forwarding::Copy => ForwardMode::Copy,
        });
        let next = Arc::new(next);
        self.set_written(next.clone());
        self.discovery.adopt(&next);
        let added = self.install(self.discovery.expand(&next), generation);
        let mut bound = self.bound();
        for (name, configured, actual, sockets) in fresh {
            for (worker, socket) in self.workers.iter().zip(sockets) {
                let _ = worker.send(BoundSocket {
                    name: name.as_str().into(),
                    configured,
                    socket,
                });
            }
            info!(listener = %name, addr = %actual, "listener bound");
            bound.insert((name, configured), actual);
        }
        bound.retain(|(name, addr), _| {
            next.listeners
                .iter()
                .any(|l| &l.name == name && l.bind.contains(addr))
        });
        drop(bound);
        let removed = current
            .listeners
            .iter()
            .filter(|l| !next.listeners.iter().any(|n| n.name == l.name));
        for l in removed {
            info!(listener = %l.name, "listener removed; its open connections drain");
        }
        // Under `changes`, so two reloads cannot leave the tasks matching the older file.
        self.sync_discovery_serialised();
        drop(_serial);
        self.sync_checks(&added);
        Ok(generation)
    }

    /// Binds every (listener, address) of `next` that is not bound yet. All or nothing: on
    /// an error the sockets bound so far are closed.
    fn bind_new(&self, next: &Config) -> Result<Vec<FreshGroup>, ReloadError> {
        let bound = self.bound().clone();
        let mut fresh = Vec::new();
        for l in &next.listeners {
            for addr in &l.bind {
                if bound.contains_key(&(l.name.clone(), *addr)) {
                    continue;
                }
                // An address that overlaps one we already hold (another listener name, or the
                // same port narrowed or widened) would collide with our own probe.
                let ours = bound
                    .keys()
                    .any(|(_, a)| a == addr || crate::config::overlaps(*a, *addr));
                let (actual, sockets) =
                    bind_group(*addr, self.workers.len(), !ours).map_err(|source| {
                        ReloadError::Bind {
                            listener: l.name.clone(),
                            addr: *addr,
                            source,
                        }
                    })?;
                fresh.push((l.name.clone(), *addr, actual, sockets));
            }
        }
        Ok(fresh)
    }
}
