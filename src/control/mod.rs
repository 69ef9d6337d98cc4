//! The control plane. One owner (`owner.rs`) holds every piece of control state — the
//! configs, the registry of identity-kept facts, health, overrides, deny lists, limiter
//! tables, DNS answers, the bound sockets — and applies every change as an event, one at a
//! time, in its own task: probe results, DNS answers, passive-failure notices, admin
//! commands, prepared reloads and its own timers. After each event that changes something it
//! publishes the data plane's [`Snapshot`](crate::state::Snapshot) (when that changed) and a
//! [`View`] for every reader.
//!
//! Everyone else holds a [`Handle`]: it loads the published view (one consistent view per
//! request) and sends commands, waiting for the owner's answer. Health and discovery tasks
//! never import this module: they send results on channels (`tasks.rs` runs them). A reload
//! is read, validated and bound off the owner (`crate::reload::prepare`), then applied by
//! the owner in one step, so a slow reload never delays health checks, DNS or `/readyz`.
//!
//! `served.rs` is what the data plane is served (the effective config, health, overrides),
//! kept by identity in `registry.rs` and built into snapshots by `build.rs` (reusing
//! unchanged pools); `tasks.rs` runs the probing and resolving tasks; `view.rs` is what
//! readers see, `handle.rs` is how they ask; `reloaded.rs` reports what a reload changed;
//! `upgrades.rs` passes asked-for binary upgrades on and counts them, `carried.rs` is the
//! state an upgrade carries to the new process.

mod build;
mod carried;
mod carried_limits;
mod handle;
mod owner;
pub mod registry;
mod reloaded;
mod served;
mod tasks;
#[cfg(test)]
mod tests;
mod upgrades;
pub mod view;

use std::net::SocketAddr;

pub use carried::{Carried, CarriedBackend, CarriedDeny};
pub use carried_limits::{CarriedLimits, MAX_DEBTS};
pub use handle::{Handle, Verdict};
pub use owner::{Channels, Owner};
pub use registry::{AdminState, BackendKey, MAX_RUNTIME_DENY, Override};
pub use reloaded::{Changes, Counts, Masked, MaskedBy, Reloaded};
pub use upgrades::{
    RESULTS as UPGRADE_RESULTS, UpgradeAsk, UpgradeFailure, channel as upgrade_channel,
};
pub use view::{BackendView, Reloads, View};

use crate::admission::Cidr;
use crate::reload::{Prepared, ReloadError};

/// What an operator can do to one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendAction {
    Drain,
    Disable,
    /// Drops a drain or disable: the backend takes new connections again.
    Enable,
    Weight(u32),
    /// Drops the weight override: the config's weight applies again.
    ClearWeight,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActionError {
    #[error("no pool named `{0}`")]
    NoPool(String),
    #[error("pool `{0}` has no backend {1}")]
    NoBackend(String, SocketAddr),
    #[error("no listener named `{0}`")]
    NoListener(String),
    #[error(
        "the runtime deny list of listener `{0}` is full ({MAX_RUNTIME_DENY} blocks): remove some, or list them in the config's access.deny"
    )]
    DenyListFull(String),
    #[error("the control plane has stopped")]
    Stopped,
}

pub(crate) type Reply<T> = tokio::sync::oneshot::Sender<T>;

/// A request to the owner, with where to send its answer.
#[derive(Debug)]
pub enum Command {
    Backend {
        pool: String,
        address: SocketAddr,
        action: BackendAction,
        reply: Reply<Result<(), ActionError>>,
    },
    Deny {
        listener: String,
        block: Cidr,
        add: bool,
        reply: Reply<Result<bool, ActionError>>,
    },
    /// What a binary upgrade carries to the new process (overrides, health, deny lists).
    Carry { reply: Reply<Result<Carried, ()>> },
    /// A reload prepared off the owner, or why it could not be: the owner applies the one
    /// and records the other, so every outcome shows in the view.
    Reload {
        prepared: Result<Box<Prepared>, ReloadError>,
        reply: Reply<Result<Reloaded, ReloadError>>,
    },
}

/// Snapshot building as the owner does it, for benchmarks and tests: a registry and a
/// builder that reuses what did not change between two builds.
#[derive(Debug, Default)]
pub struct Snapshots {
    registry: registry::Registry,
    builder: build::Builder,
}

impl Snapshots {
    /// The snapshot of `config` (an effective config) at `generation`; `None` when nothing
    /// changed since the last build (the owner then publishes nothing).
    pub fn build(
        &mut self,
        config: &crate::config::Config,
        generation: u64,
    ) -> Option<crate::state::Snapshot> {
        let built = self.builder.build(config, &mut self.registry, generation);
        built.changed.then_some(built.snapshot)
    }
}
