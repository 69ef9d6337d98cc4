//! The process signals tollgate acts on: SIGTERM and SIGINT stop it, SIGHUP reloads. They
//! are held (blocked) from before `main` (`sys/signals.rs`); [`Signals::new`] installs the
//! handlers and then lets them through on the calling thread, so one that arrived during
//! start-up is acted on now instead of killing the process.

use anyhow::{Context, Result};
use tokio::signal::unix::{Signal, SignalKind, signal};

pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    pub fn new() -> Result<Signals> {
        let signals = Signals {
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            hup: signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?,
        };
        crate::sys::signals::release().context("cannot unblock the signals held at start")?;
        Ok(signals)
    }

    /// Resolves on SIGTERM or SIGINT, calling `on_hup` for each SIGHUP in the meantime.
    pub async fn next_stop(&mut self, mut on_hup: impl FnMut()) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => on_hup(),
            }
        }
    }
}
