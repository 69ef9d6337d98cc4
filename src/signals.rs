//! The process signals tollgate acts on: SIGTERM and SIGINT stop it, SIGHUP reloads, SIGUSR2
//! asks for a binary upgrade. They are held (blocked) from before `main` (`sys/signals.rs`);
//! [`Signals::new`] installs a handler for every one of them and then lets them through on
//! the calling thread, so one that arrived meanwhile is delivered now, to its handler. None
//! of them is ever left to its default action (terminate).

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// SIGTERM or SIGINT.
    Stop,
    /// SIGHUP.
    Reload,
    /// SIGUSR2.
    Upgrade,
}

pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    /// Must run inside a tokio runtime, on the thread that is to receive the signals.
    pub fn new() -> Result<Signals> {
        let signals = Signals {
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            hup: signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?,
            usr2: signal(SignalKind::user_defined2()).context("cannot listen for SIGUSR2")?,
        };
        crate::sys::signals::release().context("cannot unblock the signals held at start")?;
        Ok(signals)
    }

    /// The next signal. Several of one kind that arrive together count once.
    pub async fn next(&mut self) -> Asked {
        tokio::select! {
            _ = self.term.recv() => Asked::Stop,
            _ = self.int.recv() => Asked::Stop,
            _ = self.hup.recv() => Asked::Reload,
            _ = self.usr2.recv() => Asked::Upgrade,
        }
    }
}
