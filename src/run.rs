//! `tollgate run`: the foreground process from its first moment to its exit. Signal handlers
//! come first, so that start-up itself (reading the file, binding sockets) can be stopped
//! and a reload asked for meanwhile is done once it is up; then SIGHUP reloads, SIGUSR2 is
//! refused, and SIGTERM or SIGINT drains (a second one closes what is left at once).
//!
//! No stuck file read (a token file on a dead network mount; FIFOs and devices are refused
//! before they are opened) can keep the process from exiting: start-up and reload
//! preparation run on blocking threads that the exit does not wait for beyond a moment.

use std::path::PathBuf;
use std::time::Duration;

use tracing::{info, warn};

use crate::app::Server;
use crate::config::{self, ConfigErrors};
use crate::control::Handle;
use crate::signals::{Asked, Signals};

/// How long the exit waits for blocking work (a file read) still running.
const BLOCKING_GRACE: Duration = Duration::from_secs(1);
/// The longest start-up waits for the first health round before telling systemd it is ready.
const FIRST_ROUND_WAIT: Duration = Duration::from_secs(10);

/// Why `run` failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The file is invalid (exit 78).
    #[error("{0}")]
    Config(ConfigErrors),
    /// Anything else (exit 1).
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

/// Runs the config at `path` until a stop signal and a drain.
pub fn run(path: PathBuf) -> Result<(), RunError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Failed(anyhow::anyhow!("cannot build the signal runtime: {e}")))?;
    let result = rt.block_on(lifecycle(path));
    rt.shutdown_timeout(BLOCKING_GRACE);
    result
}

async fn lifecycle(path: PathBuf) -> Result<(), RunError> {
    let mut signals = Signals::new().map_err(RunError::Failed)?;
    let mut starting = tokio::task::spawn_blocking(move || {
        let cfg = config::load(&path).map_err(RunError::Config)?;
        Server::start_from(&cfg, Some(path)).map_err(RunError::Failed)
    });
    let mut reload_asked = false;
    let server = loop {
        tokio::select! {
            started = &mut starting => {
                break started.map_err(|e| RunError::Failed(anyhow::anyhow!("start-up failed: {e}")))??;
            }
            asked = signals.next() => match asked {
                Asked::Stop => {
                    info!("stop signal during start-up; exiting");
                    return Ok(());
                }
                Asked::Reload => reload_asked = true,
                Asked::Upgrade => crate::signals::upgrade_unsupported(),
            },
        }
    };
    let control = server.control().clone();
    if reload_asked {
        info!("a reload was asked for during start-up; reloading now");
        reload(&control);
    }
    let stop = server.stop_handle();
    // systemd hears READY=1 once the first health round is in (or after FIRST_ROUND_WAIT).
    let announce = first_round(control.clone());
    tokio::pin!(announce);
    let mut announced = false;
    loop {
        tokio::select! {
            asked = signals.next() => match asked {
                Asked::Stop => {
                    info!(timeout = ?control.view().written.drain_timeout, "stop signal received; draining");
                    break;
                }
                Asked::Reload => reload(&control),
                Asked::Upgrade => crate::signals::upgrade_unsupported(),
            },
            () = stop.draining() => break,
            status = &mut announce, if !announced => {
                announced = true;
                crate::notify::ready(&status);
            }
        }
    }
    crate::notify::stopping();
    server.begin_shutdown();
    let mut joined = tokio::task::spawn_blocking(move || server.wait());
    loop {
        tokio::select! {
            _ = &mut joined => break,
            asked = signals.next() => match asked {
                Asked::Stop => {
                    info!("second stop signal; closing every connection now");
                    stop.now();
                    let _ = joined.await;
                    break;
                }
                Asked::Reload => warn!("SIGHUP during the drain is ignored"),
                Asked::Upgrade => crate::signals::upgrade_unsupported(),
            },
        }
    }
    info!("stopped");
    match stop.failure() {
        Some(why) => Err(RunError::Failed(anyhow::anyhow!(why))),
        None => Ok(()),
    }
}

/// Waits until every backend has had its first health check answered (or the pool has no
/// checks), at most [`FIRST_ROUND_WAIT`], and says what serves: the status systemd shows
/// with `READY=1`. A backend that never answers does not hold the start back for longer:
/// its pool is then named in the status, and `/readyz` says the rest.
async fn first_round(control: Handle) -> String {
    let deadline = tokio::time::Instant::now() + FIRST_ROUND_WAIT;
    loop {
        let view = control.view();
        let (mut up, mut all, mut pending) = (0, 0, Vec::new());
        for pool in &view.effective.pools {
            for b in view.backends(&pool.name) {
                all += 1;
                up += usize::from(b.healthy);
                if b.health == "pending" && !pending.contains(&pool.name) {
                    pending.push(pool.name.clone());
                }
            }
        }
        let listeners = view.written.listeners.len();
        if pending.is_empty() {
            return format!("serving {listeners} listener(s); {up} of {all} backends up");
        }
        if tokio::time::Instant::now() >= deadline {
            return format!(
                "serving {listeners} listener(s); {up} of {all} backends up; still waiting for a first health check in pool(s) {}",
                pending.join(", ")
            );
        }
        drop(view);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reloads in a task of its own: logged and counted by `reload` itself, which serialises
/// reloads.
fn reload(control: &Handle) {
    let control = control.clone();
    drop(tokio::spawn(async move { control.reload().await }));
}
