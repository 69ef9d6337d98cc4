//! Binary upgrades as the control plane sees them: asked for through the admin API (`POST
//! /api/v1/upgrade`), carried out by whoever runs the process (`tollgate run` takes the
//! asks, see `crate::run`), and counted for `tollgate_upgrades_total`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::Handle;

/// The `result` labels of `tollgate_upgrades_total`, in order.
pub const RESULTS: [&str; 4] = ["success", "refused", "rejected", "failed"];

/// An upgrade asked for, and where its outcome goes: the new process's pid, or why not.
#[derive(Debug)]
pub struct UpgradeAsk {
    pub reply: oneshot::Sender<Result<u32, UpgradeFailure>>,
}

/// Why an asked-for upgrade did not happen; the instance keeps serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeFailure {
    /// `refused` (the new process refused the config), `rejected` (nothing was started:
    /// one is in progress, a drain, no way to upgrade) or `failed`.
    pub result: &'static str,
    pub reason: String,
}

/// Where asked-for upgrades go, and where they are taken from.
pub fn channel() -> (mpsc::Sender<UpgradeAsk>, mpsc::Receiver<UpgradeAsk>) {
    mpsc::channel(4)
}

#[derive(Debug, Default)]
pub(super) struct Upgrades {
    asks: OnceLock<mpsc::Sender<UpgradeAsk>>,
    counts: [AtomicU64; 4],
    handed_over: AtomicU64,
    sessions_handed_over: AtomicU64,
}

impl Handle {
    /// Passes upgrades asked for through the admin API to `to` (whoever runs the process,
    /// [`channel`]); false when something already takes them.
    pub fn accept_upgrades(&self, to: mpsc::Sender<UpgradeAsk>) -> bool {
        self.0.upgrades.asks.set(to).is_ok()
    }

    /// Asks for a binary upgrade and waits for its outcome.
    pub async fn upgrade(&self) -> Result<u32, UpgradeFailure> {
        let rejected = |reason: &str| UpgradeFailure {
            result: "rejected",
            reason: reason.to_owned(),
        };
        let Some(asks) = self.0.upgrades.asks.get() else {
            return Err(rejected(
                "this instance cannot upgrade: it was not started by `tollgate run`",
            ));
        };
        let (reply, answer) = oneshot::channel();
        asks.try_send(UpgradeAsk { reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => rejected("an upgrade is already in progress"),
            mpsc::error::TrySendError::Closed(_) => rejected("tollgate is stopping"),
        })?;
        answer
            .await
            .unwrap_or_else(|_| Err(rejected("tollgate is stopping")))
    }

    /// Counts one upgrade's outcome (a label of [`RESULTS`]).
    pub fn count_upgrade(&self, result: &str) {
        if let Some(i) = RESULTS.iter().position(|r| *r == result) {
            self.0.upgrades.counts[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one established connection taken over from the previous process.
    pub fn count_handed_over(&self) {
        self.0.upgrades.handed_over.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one UDP session taken over from the previous process.
    pub fn count_sessions_handed_over(&self) {
        self.0
            .upgrades
            .sessions_handed_over
            .fetch_add(1, Ordering::Relaxed);
    }

    /// UDP sessions taken over from previous processes.
    pub fn sessions_handed_over(&self) -> u64 {
        self.0.upgrades.sessions_handed_over.load(Ordering::Relaxed)
    }

    /// Established connections taken over from previous processes.
    pub fn handed_over(&self) -> u64 {
        self.0.upgrades.handed_over.load(Ordering::Relaxed)
    }

    /// Upgrades by result, as this process counted them.
    pub fn upgrades(&self) -> [(&'static str, u64); 4] {
        std::array::from_fn(|i| {
            (
                RESULTS[i],
                self.0.upgrades.counts[i].load(Ordering::Relaxed),
            )
        })
    }
}
