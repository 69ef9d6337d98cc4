//! `tollgate run`: the foreground process from its first moment to its exit. Signal handlers
//! come first, so that start-up itself (reading the file, binding sockets) can be stopped
//! and a reload or upgrade asked for meanwhile is done once it is up; then SIGHUP reloads,
//! SIGUSR2 (or `POST /api/v1/upgrade`) upgrades the binary (`upgrades.rs`, `crate::upgrade`),
//! and SIGTERM or SIGINT drains (a second one closes what is left at once). After an upgrade
//! has handed everything over, the process drains what it still has and exits 0; if the new
//! process dies before the handover settles, this one serves on instead.
//!
//! No stuck file read (a token file on a dead network mount; FIFOs and devices are refused
//! before they are opened) can keep the process from exiting: start-up and reload
//! preparation run on blocking threads that the exit does not wait for beyond a moment.

use std::path::PathBuf;
use std::time::Duration;

use tracing::{info, warn};

use crate::app::{Inherited, Server};
use crate::config::{self, ConfigErrors};
use crate::control::Handle;
use crate::signals::{Asked, Signals};
use crate::upgrade::new::Incoming;
use crate::upgrade::old::{Moving, SETTLE_LIMIT, Settled};
use upgrades::Upgrades;

mod upgrades;

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
    // Started by a binary upgrade: the handover socket comes first, so that whatever
    // happens next (a refused config, a failed start) the old process hears of it.
    let incoming = crate::upgrade::new::incoming()
        .map_err(|e| RunError::Failed(anyhow::anyhow!("binary upgrade: {e}")))?;
    let upgraded = incoming.is_some();
    // Taken before the admin API answers anything, so that an upgrade asked for the moment
    // it does is not refused as impossible.
    let (upgrade_asks, asks) = crate::control::upgrade_channel();
    let mut asks = Some(asks);
    let mut starting = tokio::task::spawn_blocking(move || start(path, incoming, upgrade_asks));
    let (mut reload_asked, mut upgrade_asked) = (false, false);
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
                Asked::Upgrade => upgrade_asked = true,
            },
        }
    };
    let control = server.control().clone();
    if upgraded {
        // systemd hears of this process as the main one from the old process, once the
        // handover has settled (`crate::notify::main_pid_is`).
        control.count_upgrade("success");
    }
    if reload_asked {
        info!("a reload was asked for during start-up; reloading now");
        reload(&control);
    }
    let stop = server.stop_handle();
    let mut upgrades = Upgrades::new(&server);
    if upgrade_asked {
        info!("a binary upgrade was asked for during start-up; upgrading now");
        upgrades.begin(&control, None);
    }
    // systemd hears READY=1 once the first health round is in (or after FIRST_ROUND_WAIT).
    let announce = first_round(control.clone());
    tokio::pin!(announce);
    let mut announced = false;
    let handed_over = loop {
        tokio::select! {
            asked = signals.next() => match asked {
                Asked::Stop => {
                    info!(timeout = ?control.view().written.drain_timeout, "stop signal received; draining");
                    break None;
                }
                Asked::Reload => reload(&control),
                Asked::Upgrade => upgrades.begin(&control, None),
            },
            Some(ask) = upgrades::next_ask(&mut asks) => upgrades.begin(&control, Some(ask.reply)),
            done = upgrades.finished() => {
                if done.is_ok() {
                    // The new process serves: this one stops taking admin requests before
                    // anyone hears so, and the next request reaches the new one.
                    server.handed_over().await;
                }
                if let Some(rest) = upgrades.settle(&control, done) {
                    // Every established connection freezes and goes to the new process.
                    let mut moving = rest.move_connections();
                    // Listeners and workers stay until the handover settles (a moment
                    // after the last connection went across, at most SETTLE_LIMIT).
                    match settled(&mut moving, &mut signals).await {
                        Settled::Handed => {
                            server.handover_settled(true);
                            crate::notify::main_pid_is(moving.new_pid());
                            break Some(moving);
                        }
                        Settled::Died(status) => {
                            server.handover_settled(false);
                            upgrades::serve_again(&control, moving, &status);
                        }
                    }
                }
            }
            () = stop.draining() => break None,
            status = &mut announce, if !announced => {
                announced = true;
                crate::notify::ready(&status);
            }
        }
    };
    // After a handover the new process serves the listeners and the admin API, and is the
    // one systemd follows: this one only hands over or finishes its open connections.
    if handed_over.is_none() {
        crate::notify::stopping();
    }
    server.begin_shutdown();
    // Once this process's connections are handed over or done, the new one hears what the
    // ones finished here added to the counters.
    let mut joined = tokio::task::spawn_blocking(move || {
        server.wait();
        if let Some(moving) = handed_over {
            let moved = moving.finish(&control);
            info!(
                handed_over = moved.handed,
                kept = moved.kept,
                udp_sessions_handed_over = moved.sessions,
                udp_sessions_ended = moved.sessions_ended,
                "binary upgrade: this process's connections are handed over or finished"
            );
        }
    });
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
                Asked::Upgrade => warn!("SIGUSR2 during the drain is ignored"),
            },
        }
    }
    info!("stopped");
    match stop.failure() {
        Some(why) => Err(RunError::Failed(anyhow::anyhow!(why))),
        None => Ok(()),
    }
}

/// Loads the config and starts the server, taking over the old process's sockets when an
/// upgrade started this one (and telling it how that went).
fn start(
    path: PathBuf,
    incoming: Option<Incoming>,
    upgrades: tokio::sync::mpsc::Sender<crate::control::UpgradeAsk>,
) -> Result<Server, RunError> {
    let cfg = match config::load(&path) {
        Ok(cfg) => cfg,
        Err(errors) => {
            if let Some(incoming) = &incoming {
                incoming.refuse(&errors.to_string());
            }
            return Err(RunError::Config(errors));
        }
    };
    let Some(mut incoming) = incoming else {
        return Server::start_run(&cfg, Some(path), Inherited::default(), Some(upgrades))
            .map_err(RunError::Failed);
    };
    let failed = |e: anyhow::Error| RunError::Failed(e.context("binary upgrade"));
    let received = incoming.receive().map_err(|e| failed(e.into()))?;
    crate::metrics::carry_over(received.counters.into_iter().map(Into::into));
    let server = match Server::start_run(&cfg, Some(path), received.sockets, Some(upgrades)) {
        Ok(server) => server,
        Err(e) => {
            incoming.abort(&format!("{e:#}"));
            return Err(failed(e));
        }
    };
    if let Err(e) = incoming.ready() {
        // The old process has given up on this one and serves again: stop at once.
        server.begin_shutdown();
        server.stop_handle().now();
        server.wait();
        return Err(failed(e.into()));
    }
    info!(
        previous_pid = std::os::unix::process::parent_id(),
        "took over from the previous process"
    );
    incoming.follow(server.handover());
    Ok(server)
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

/// How the handover of a binary upgrade settles, at most [`SETTLE_LIMIT`] from now (past
/// it, the new process is taken to serve). A stop signal meanwhile settles it as handed:
/// this process drains then, as it would have a moment later. Reloads and upgrades asked
/// for meanwhile are refused: the new process takes them.
async fn settled(moving: &mut Moving, signals: &mut Signals) -> Settled {
    let deadline = tokio::time::sleep(SETTLE_LIMIT);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            settled = moving.settled() => return settled,
            () = &mut deadline => {
                warn!(limit = ?SETTLE_LIMIT, "binary upgrade: the handover has not settled in time; the new process is taken to serve");
                return Settled::Handed;
            }
            asked = signals.next() => match asked {
                Asked::Stop => {
                    info!("stop signal during a binary upgrade's handover; this process drains once its connections are handed over");
                    return Settled::Handed;
                }
                Asked::Reload => warn!("SIGHUP during a binary upgrade's handover is ignored: the new process serves"),
                Asked::Upgrade => warn!("SIGUSR2 during a binary upgrade's handover is ignored: the new process serves"),
            },
        }
    }
}

/// Reloads in a task of its own: logged and counted by `reload` itself, which serialises
/// reloads.
fn reload(control: &Handle) {
    let control = control.clone();
    drop(tokio::spawn(async move { control.reload().await }));
}
