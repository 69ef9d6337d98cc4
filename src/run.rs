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
        }
    }
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

/// Reloads in a task of its own: logged and counted by `reload` itself, which serialises
/// reloads.
fn reload(control: &Handle) {
    let control = control.clone();
    drop(tokio::spawn(async move { control.reload().await }));
}
