//! What the data plane is served, as the owner keeps it: the effective config, the registry
//! of identity-kept facts (health, overrides, deny lists, counters), the builder that turns
//! them into snapshots, and the slow-start ramp. Changes mark the snapshot stale, and
//! [`Served::publish`] builds and publishes one snapshot for all the changes an event made
//! (none when nothing workers see changed). Owned by the owner only; the owner decides when
//! each method runs and starts what these ask for (limiter moves, recovery probes).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::build::{Builder, Reshape};
use super::registry::{AdminState, BackendKey, DenyListFull, Registry};
use super::{ActionError, BackendAction};
use crate::admission::{Cidr, Shape, SourceTable};
use crate::config::Config;
use crate::health::probe::Failure;
use crate::health::{CheckOutcome, Checked, HealthState, Report};
use crate::proxy::throttle::LogThrottle;
use crate::proxy::{DataPlane, PassiveDown};

static LOCAL_PROBE_LOG: LogThrottle = LogThrottle::new();

/// Slow start: republish in steps while a recovered backend's weight ramps up.
#[derive(Debug, Clone, Copy)]
struct Ramp {
    next: Instant,
    until: Instant,
    step: Duration,
}

/// What applying a probe report asks of the owner.
#[derive(Debug, PartialEq, Eq)]
pub enum ReportEffect {
    /// Nothing beyond what was applied.
    None,
    /// A passive recovery reported: its task ends.
    Recovered(BackendKey),
}

pub struct Served {
    plane: Arc<DataPlane>,
    registry: Registry,
    builder: Builder,
    /// The written config plus the addresses DNS resolved.
    effective: Arc<Config>,
    generation: u64,
    ramp: Option<Ramp>,
    /// Limiter moves the last builds asked for, for the owner to start.
    reshapes: Vec<Reshape>,
    /// Something workers see may have changed since the last publish.
    stale: bool,
}

impl Served {
    /// The first snapshot of `config` (with what a binary upgrade carried over, when one
    /// started this process), and the data plane `plane` makes to serve it.
    pub fn new(
        config: &Config,
        carried: Option<super::Carried>,
        plane: impl FnOnce(crate::state::Snapshot) -> DataPlane,
    ) -> Served {
        let mut registry = Registry::default();
        let mut limits = Vec::new();
        if let Some(mut carried) = carried {
            limits = std::mem::take(&mut carried.limits);
            registry.seed(carried);
        }
        let mut builder = Builder::default();
        let first = builder.build(config, &mut registry, 1);
        // In the tables the first build made, before any worker serves them.
        builder.seed_limits(limits);
        Served {
            plane: Arc::new(plane(first.snapshot)),
            registry,
            builder,
            effective: Arc::new(config.clone()),
            generation: 1,
            ramp: None,
            reshapes: first.reshapes,
            stale: false,
        }
    }

    pub fn plane(&self) -> &Arc<DataPlane> {
        &self.plane
    }

    pub fn effective(&self) -> &Arc<Config> {
        &self.effective
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// What the limited sources of every listener owe their rates, for a binary upgrade.
    pub fn carry_limits(&self) -> Vec<super::CarriedLimits> {
        self.builder.carry_limits()
    }

    /// The limiter moves asked for by the snapshots published since the last call.
    pub fn take_reshapes(&mut self) -> Vec<Reshape> {
        std::mem::take(&mut self.reshapes)
    }

    /// Something workers see may have changed: the next [`Served::publish`] builds.
    fn rebuild(&mut self) {
        self.stale = true;
    }

    /// Builds the next snapshot, if anything may have changed, and publishes it when it did.
    pub fn publish(&mut self) {
        if !std::mem::take(&mut self.stale) {
            return;
        }
        let built = self
            .builder
            .build(&self.effective, &mut self.registry, self.generation);
        self.reshapes.extend(built.reshapes);
        if built.changed {
            self.plane.snapshot.publish(built.snapshot);
        }
    }

    /// Makes `next` the effective config (of `generation`); the next publish serves it.
    /// Backends it adds to a pool with an active check are pending before that snapshot, so
    /// none takes a connection before its first passing check.
    pub fn install(&mut self, next: Config, generation: u64) {
        let known: std::collections::HashSet<(&str, SocketAddr)> = self
            .effective
            .pools
            .iter()
            .flat_map(|p| p.backends.iter().map(move |b| (p.name.as_str(), b.address)))
            .collect();
        let added: Vec<BackendKey> = next
            .pools
            .iter()
            .filter(|p| p.health_check.is_some())
            .flat_map(|p| p.backends.iter().map(move |b| (p.name.clone(), b.address)))
            .filter(|(pool, addr)| !known.contains(&(pool.as_str(), *addr)))
            .collect();
        self.registry.expect_pending(&added);
        self.effective = Arc::new(next);
        self.generation = generation;
        self.rebuild();
    }

    /// Backends whose check stopped for good forget their health (they are up again), and
    /// passive checks start afresh for them.
    pub fn forget_health(&mut self, keys: &[BackendKey]) {
        for key in keys {
            if let Some(stats) = self.registry.stats_of(key) {
                stats.reset_passive();
            }
        }
        if self.registry.reset_health(keys) {
            self.rebuild();
        }
    }

    /// A limiter move finished (`to`), or failed (`None`: the table stays as it is).
    pub fn moved(
        &mut self,
        listener: &str,
        from: &Arc<SourceTable>,
        shape: Shape,
        to: Option<Arc<SourceTable>>,
    ) {
        match to {
            Some(to) => self.builder.moved(listener, from, to),
            None => self.builder.unmoved(listener, from, shape),
        }
        self.rebuild();
    }

    pub fn backend_action(
        &mut self,
        pool: &str,
        address: SocketAddr,
        action: BackendAction,
    ) -> Result<(), ActionError> {
        let p = self
            .effective
            .pool(pool)
            .ok_or_else(|| ActionError::NoPool(pool.to_owned()))?;
        if !p.backends.iter().any(|b| b.address == address) {
            return Err(ActionError::NoBackend(pool.to_owned(), address));
        }
        let key = (pool.to_owned(), address);
        self.registry.set_override(&key, |o| match action {
            BackendAction::Drain => o.state = AdminState::Draining,
            BackendAction::Disable => o.state = AdminState::Disabled,
            BackendAction::Enable => o.state = AdminState::Active,
            BackendAction::Weight(w) => o.weight = Some(w),
            BackendAction::ClearWeight => o.weight = None,
        });
        info!(pool, backend = %address, ?action, "backend override applied");
        self.rebuild();
        Ok(())
    }

    pub fn deny(&mut self, listener: &str, block: Cidr, add: bool) -> Result<bool, ActionError> {
        if !self.effective.listeners.iter().any(|l| l.name == listener) {
            return Err(ActionError::NoListener(listener.to_owned()));
        }
        match self.registry.set_deny(listener, block, add) {
            Ok(changed) => {
                if changed {
                    info!(listener, %block, add, "runtime deny list changed");
                    self.rebuild();
                }
                Ok(changed)
            }
            Err(DenyListFull) => Err(ActionError::DenyListFull(listener.to_owned())),
        }
    }

    /// Applies one probe result: counted, kept as the last result, and run through the
    /// backend's rise/fall (a local failure moves nothing); a change of health republishes.
    pub fn report(&mut self, report: Report) -> ReportEffect {
        let key = (report.pool.to_string(), report.backend);
        let Some(pool) = self.effective.pool(&key.0) else {
            return ReportEffect::None;
        };
        if !pool.backends.iter().any(|b| b.address == key.1) {
            return ReportEffect::None; // removed while the probe ran
        }
        let (rise, fall, effect) = match (&pool.health_check, report.recovery) {
            (Some(hc), false) => (hc.rise, hc.fall, ReportEffect::None),
            (None, true) => (1, 1, ReportEffect::Recovered(key.clone())),
            _ => return ReportEffect::None, // the pool's checks changed while it ran
        };
        let slow_start = pool.slow_start;
        let (result, detail) = match report.outcome {
            Ok(detail) => (Checked::Passed, detail),
            Err(Failure::Backend(detail)) => (Checked::Failed, detail),
            Err(Failure::Local(detail)) => (Checked::LocalError, detail),
        };
        let stats = self.registry.stats_of(&key).cloned();
        if let Some(stats) = &stats {
            let counter = match result {
                Checked::Passed => &stats.health_ok,
                Checked::Failed => &stats.health_failed,
                Checked::LocalError => &stats.health_local_errors,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        if result == Checked::LocalError
            && let Some(suppressed) = LOCAL_PROBE_LOG.allow()
        {
            warn!(pool = %key.0, backend = %key.1, %detail, suppressed, "health probe could not be made for a local reason; the backend's health stays as it was");
        }
        let outcome = CheckOutcome {
            result,
            detail: detail.clone(),
            at: report.at,
        };
        match self.registry.record(&key, outcome, rise, fall) {
            None => {}
            Some(true) => {
                if let Some(stats) = &stats {
                    // A fresh start for passive checks: the streak that took it down is history.
                    stats.reset_passive();
                }
                info!(pool = %key.0, backend = %key.1, %detail, "backend is up");
                self.rebuild();
                if !slow_start.is_zero() {
                    self.start_ramp(slow_start);
                }
            }
            Some(false) => {
                warn!(pool = %key.0, backend = %key.1, %detail, "backend is down");
                self.rebuild();
            }
        }
        effect
    }

    /// Passive health: a backend failed its pool's limit of connects in a row; it is marked
    /// down. Returns the backend when a recovery probe must bring it back (its pool has no
    /// active check to do it).
    pub fn passive(&mut self, notice: &PassiveDown) -> Option<BackendKey> {
        let key = (notice.pool.to_string(), notice.backend);
        let pool = self.effective.pool(&key.0)?;
        let (limit, checked) = (pool.passive_failures, pool.health_check.is_some());
        let detail = format!("{limit} connect failures in a row");
        if !self.registry.force_down(&key, detail) {
            return None;
        }
        warn!(pool = %key.0, backend = %key.1, failures = limit, "backend is down (passive check)");
        self.rebuild();
        (!checked).then_some(key)
    }

    /// Health of every backend recorded, for the view.
    pub fn healths(&self) -> &std::collections::HashMap<BackendKey, HealthState> {
        self.registry.healths()
    }

    fn start_ramp(&mut self, over: Duration) {
        let now = Instant::now();
        let step = (over / 20).max(Duration::from_millis(50));
        let mut ramp = Ramp {
            next: now + step,
            until: now + over + step,
            step,
        };
        if let Some(r) = self.ramp {
            ramp.next = ramp.next.min(r.next);
            ramp.until = ramp.until.max(r.until);
            ramp.step = ramp.step.min(r.step);
        }
        self.ramp = Some(ramp);
    }

    /// When the ramp wants its next step, if one runs.
    pub fn ramp_due(&self) -> Option<Instant> {
        self.ramp.map(|r| r.next)
    }

    /// One step of the ramp, if due: the weights move on.
    pub fn ramp_step(&mut self, now: Instant) {
        let Some(r) = self.ramp.filter(|r| r.next <= now) else {
            return;
        };
        self.rebuild();
        self.ramp = (now < r.until).then_some(Ramp {
            next: now + r.step,
            ..r
        });
    }
}
