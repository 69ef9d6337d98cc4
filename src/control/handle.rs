//! How everyone but the owner reaches the control plane: [`Handle`] loads the published
//! [`View`] and sends [`Command`]s to the owner, waiting for its answer. Reloads are
//! prepared here, on the caller's side (a blocking thread), and serialised among themselves,
//! so the owner only ever applies a reload that is already read, validated and bound.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::{ActionError, BackendAction, Command, Reloaded, View};
use crate::admission::Cidr;
use crate::health::HealthState;
use crate::proxy::DataPlane;
use crate::reload::{self, Prepared, ReloadError, Running};
use crate::state::Snapshot;

/// What the owner and every handle share.
pub(super) struct Shared {
    pub view: ArcSwap<View>,
    pub draining: AtomicBool,
    pub commands: mpsc::Sender<Command>,
    /// One reload at a time, from preparing to applying, so each builds on the last.
    pub reload_lock: tokio::sync::Mutex<()>,
    /// Where reloads read from; `None` for a config built in memory (tests, the demo).
    pub config_path: Option<PathBuf>,
    pub plane: Arc<DataPlane>,
    /// Binary upgrades: who carries them out, and their outcomes (`upgrades.rs`).
    pub upgrades: super::upgrades::Upgrades,
}

/// A cheap, cloneable way in to the control plane.
#[derive(Clone)]
pub struct Handle(pub(super) Arc<Shared>);

/// Why a source would be admitted or refused by a listener right now.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub explanation: crate::admission::Explanation,
    /// Connections open on the listener now, and its cap; for a UDP listener, sessions and
    /// `udp.max_sessions`.
    pub listener_active: u64,
    pub listener_max: usize,
    pub udp: bool,
}

impl Handle {
    /// The control state as of the last applied change.
    pub fn view(&self) -> Arc<View> {
        self.0.view.load_full()
    }

    /// The snapshot the data plane uses now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.0.plane.snapshot.load_full()
    }

    pub fn plane(&self) -> &Arc<DataPlane> {
        &self.0.plane
    }

    /// 1 at start, +1 per successful reload.
    pub fn generation(&self) -> u64 {
        self.view().generation
    }

    /// The real addresses of a listener's sockets, in configured order.
    pub fn addrs(&self, listener: &str) -> Vec<SocketAddr> {
        self.view().addrs(listener)
    }

    /// What the checks say of one backend (up and unchecked when nothing is recorded).
    pub fn health_of(&self, pool: &str, address: SocketAddr) -> HealthState {
        self.view().health_of(pool, address)
    }

    pub fn draining(&self) -> bool {
        self.0.draining.load(Ordering::Acquire)
    }

    /// From now on `/readyz` says not ready and reloads are refused.
    pub fn set_draining(&self) {
        self.0.draining.store(true, Ordering::Release);
    }

    /// Reloads the config file this instance was started with (SIGHUP, `POST
    /// /api/v1/reload`): read, validated and bound on a blocking thread, then applied by the
    /// owner, which counts the outcome (a refused file too); logs it once. The reload runs in
    /// a task of its own, so a caller that goes away (an admin connection cut) cannot leave it
    /// half counted.
    ///
    /// systemd hears `RELOADING=1` before and `READY=1` after, however it ends.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let this = self.clone();
        crate::notify::reloading();
        let result = tokio::spawn(async move { this.reload_now().await })
            .await
            .unwrap_or_else(|e| Err(ReloadError::Failed(e.to_string())));
        crate::notify::reloaded(match &result {
            Ok(_) => "serving; the last reload was applied",
            Err(_) => "serving; the last reload was refused (see the log)",
        });
        result
    }

    async fn reload_now(&self) -> Result<Reloaded, ReloadError> {
        let _one = self.0.reload_lock.lock().await;
        let this = self.clone();
        let prepared = tokio::task::spawn_blocking(move || this.prepare())
            .await
            .unwrap_or_else(|e| Err(ReloadError::Failed(e.to_string())));
        let (cmd, rx) = reload_command(prepared);
        let result = self.ask(cmd, rx, ReloadError::Stopped).await;
        log_outcome(&result);
        result
    }

    /// [`Handle::reload`] for a caller outside any async runtime (tests, tools): the new
    /// generation.
    pub fn reload_blocking(&self) -> Result<u64, ReloadError> {
        let _one = self.0.reload_lock.blocking_lock();
        let (cmd, rx) = reload_command(self.prepare());
        let result = self.ask_blocking(cmd, rx, ReloadError::Stopped);
        log_outcome(&result);
        result.map(|r| r.generation)
    }

    fn prepare(&self) -> Result<Prepared, ReloadError> {
        let path = self.0.config_path.as_ref().ok_or(ReloadError::NoFile)?;
        if self.draining() {
            return Err(ReloadError::Draining);
        }
        let view = self.view();
        let running = Running {
            workers: view.workers,
            admin: view.written.admin.as_ref().map(|a| a.bind),
            bound: &view.bound,
        };
        reload::prepare(path, &running)
    }

    /// Drains, disables, enables or re-weights one backend. The override lasts while the
    /// backend exists, across reloads.
    pub async fn backend_action(
        &self,
        pool: &str,
        address: SocketAddr,
        action: BackendAction,
    ) -> Result<(), ActionError> {
        let (cmd, rx) = backend_command(pool, address, action);
        self.ask(cmd, rx, ActionError::Stopped).await
    }

    /// [`Handle::backend_action`] for a caller outside any async runtime.
    pub fn backend_action_blocking(
        &self,
        pool: &str,
        address: SocketAddr,
        action: BackendAction,
    ) -> Result<(), ActionError> {
        let (cmd, rx) = backend_command(pool, address, action);
        self.ask_blocking(cmd, rx, ActionError::Stopped)
    }

    /// Adds `block` to (or removes it from) `listener`'s runtime deny list; true when the
    /// list changed. The list lasts while the listener exists, across reloads.
    pub async fn deny(&self, listener: &str, block: Cidr, add: bool) -> Result<bool, ActionError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Deny {
            listener: listener.to_owned(),
            block,
            add,
            reply,
        };
        self.ask(cmd, rx, ActionError::Stopped).await
    }

    /// Sends `cmd` to the owner and waits for its answer; `stopped` when the owner is gone.
    async fn ask<T, E>(&self, cmd: Command, rx: Answer<T, E>, stopped: E) -> Result<T, E> {
        if self.0.commands.send(cmd).await.is_err() {
            return Err(stopped);
        }
        rx.await.unwrap_or(Err(stopped))
    }

    /// [`Handle::ask`] for a caller outside any async runtime.
    fn ask_blocking<T, E>(&self, cmd: Command, rx: Answer<T, E>, stopped: E) -> Result<T, E> {
        if self.0.commands.blocking_send(cmd).is_err() {
            return Err(stopped);
        }
        rx.blocking_recv().unwrap_or(Err(stopped))
    }

    /// What a binary upgrade carries to the new process: overrides, health and runtime
    /// deny lists as the owner holds them now. For a caller outside any async runtime.
    pub fn carry_blocking(&self) -> Option<super::Carried> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.ask_blocking(Command::Carry { reply }, rx, ()).ok()
    }

    /// What `listener` would do with a new connection from `source` now.
    pub fn explain(&self, listener: &str, source: IpAddr) -> Result<Verdict, ActionError> {
        let snapshot = self.snapshot();
        let spec = snapshot
            .listener(listener)
            .ok_or_else(|| ActionError::NoListener(listener.to_owned()))?;
        Ok(Verdict {
            explanation: spec.admission.explain(source, std::time::Instant::now()),
            listener_active: match spec.udp {
                Some(_) => spec.live.udp.sessions_active.load(Ordering::Relaxed),
                None => spec.live.active.load(Ordering::Relaxed),
            },
            listener_max: spec
                .udp
                .map_or_else(|| spec.live.max_connections(), |u| u.max_sessions),
            udp: spec.udp.is_some(),
        })
    }

    /// The runtime deny list of a listener.
    pub fn deny_list(&self, listener: &str) -> Vec<Cidr> {
        self.snapshot()
            .listener(listener)
            .map(|l| l.admission.runtime_deny.blocks().to_vec())
            .unwrap_or_default()
    }
}

type Answer<T, E = ActionError> = oneshot::Receiver<Result<T, E>>;

fn backend_command(
    pool: &str,
    address: SocketAddr,
    action: BackendAction,
) -> (Command, Answer<()>) {
    let (reply, rx) = oneshot::channel();
    let cmd = Command::Backend {
        pool: pool.to_owned(),
        address,
        action,
        reply,
    };
    (cmd, rx)
}

fn reload_command(
    prepared: Result<Prepared, ReloadError>,
) -> (Command, Answer<Reloaded, ReloadError>) {
    let (reply, rx) = oneshot::channel();
    let cmd = Command::Reload {
        prepared: prepared.map(Box::new),
        reply,
    };
    (cmd, rx)
}

/// Logs a reload's one line: what changed, and (as a warning) the overrides that keep a
/// changed value from applying; or why the file was refused.
fn log_outcome(result: &Result<Reloaded, ReloadError>) {
    match result {
        Ok(r) => {
            let (generation, changes) = (r.generation, r.changes);
            if r.masked.is_empty() {
                info!(generation, changes = changes.to_string(), "config reloaded");
            } else {
                let masked: Vec<String> = r.masked.iter().map(ToString::to_string).collect();
                let masked = masked.join("; ");
                warn!(
                    generation,
                    changes = changes.to_string(),
                    masked_by_overrides = masked,
                    "config reloaded"
                );
            }
        }
        Err(e) => {
            warn!(error = %e, "reload refused; the running config stays");
        }
    }
}
