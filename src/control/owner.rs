//! The owner of all control state: one task that applies events one at a time, in the order
//! it takes them — admin commands, prepared reloads, probe reports, DNS answers,
//! passive-failure notices, finished limiter moves, its timers (slow-start ramps, retrying a
//! resolver) and tasks that ended — and after each, publishes what changed. Nothing else
//! mutates control state, so there is no lock to hold, and nothing slow runs here: reloads
//! arrive prepared, limiter reshapes run on a blocking thread.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use super::build::{Builder, Reshape};
use super::handle::{Handle, Shared};
use super::registry::{AdminState, BackendKey, DenyListFull, Registry};
use super::tasks::{Kind, Tasks};
use super::view::{DnsView, View};
use super::{ActionError, BackendAction, Command};
use crate::admission::{Carried, SourceTable};
use crate::config::{self, Config, Lookup};
use crate::discovery::{self, Answer, Client, Names, Next, Timing};
use crate::health::probe::Failure;
use crate::health::{CheckOutcome, Checked, Report};
use crate::proxy::listener::BoundSocket;
use crate::proxy::throttle::LogThrottle;
use crate::proxy::{DataPlane, ForwardMode, PassiveDown};
use crate::reload::{BoundMap, Prepared, ReloadError};

/// Queued commands (admin requests, reloads) before senders wait.
const COMMAND_QUEUE: usize = 64;
/// Queued probe reports and DNS answers before their tasks wait.
const REPORT_QUEUE: usize = 1024;

static LOCAL_PROBE_LOG: LogThrottle = LogThrottle::new();
static TASK_LOG: LogThrottle = LogThrottle::new();

/// A limiter table moved into a new shape, off the owner's loop.
struct Moved {
    listener: String,
    from: Arc<SourceTable>,
    shape: crate::admission::Shape,
    to: Option<(Arc<SourceTable>, Carried)>,
}

/// Slow start: republish in steps while a recovered backend's weight ramps up.
#[derive(Clone, Copy)]
struct Ramp {
    next: Instant,
    until: Instant,
    step: Duration,
}

/// Which parts of the published view are stale.
#[derive(Default)]
struct Dirty {
    any: bool,
    health: bool,
    dns: bool,
}

/// What the supervisor hands the owner at start.
pub struct Channels {
    /// One per worker, for listening sockets bound by reloads.
    pub workers: Vec<mpsc::UnboundedSender<BoundSocket>>,
    /// Passive-failure notices from the data plane.
    pub passive: mpsc::Receiver<PassiveDown>,
}

pub struct Owner {
    shared: Arc<Shared>,
    registry: Registry,
    builder: Builder,
    names: Names,
    tasks: Tasks,
    written: Arc<Config>,
    effective: Arc<Config>,
    generation: u64,
    bound: Arc<BoundMap>,
    workers: Vec<mpsc::UnboundedSender<BoundSocket>>,
    commands: mpsc::Receiver<Command>,
    passive: mpsc::Receiver<PassiveDown>,
    reports: mpsc::Receiver<Report>,
    answers: mpsc::Receiver<Answer>,
    moved: (mpsc::Sender<Moved>, mpsc::Receiver<Moved>),
    ramp: Option<Ramp>,
    resolver_retry: Option<Instant>,
    dirty: Dirty,
    view_health: Arc<std::collections::HashMap<BackendKey, crate::health::HealthState>>,
    view_dns: Arc<DnsView>,
    started_at: SystemTime,
}

impl Owner {
    /// Builds the first snapshot of `config` and the data plane that serves it (`plane`
    /// makes it), and the owner that will keep both current once [`Owner::run`] runs.
    pub fn new(
        config: &Config,
        path: Option<std::path::PathBuf>,
        bound: BoundMap,
        channels: Channels,
        plane: impl FnOnce(crate::state::Snapshot) -> DataPlane,
    ) -> (Owner, Handle) {
        let mut registry = Registry::default();
        let mut builder = Builder::default();
        let first = builder.build(config, &mut registry, 1);
        let plane = Arc::new(plane(first.snapshot));
        let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let (reports_tx, reports) = mpsc::channel(REPORT_QUEUE);
        let (answers_tx, answers) = mpsc::channel(REPORT_QUEUE);
        let written = Arc::new(config.clone());
        let bound = Arc::new(bound);
        let started_at = SystemTime::now();
        let view = View {
            generation: 1,
            written: written.clone(),
            effective: written.clone(),
            snapshot: plane.snapshot.load_full(),
            health: Arc::default(),
            overrides: Arc::default(),
            dns: Arc::default(),
            bound: bound.clone(),
            workers: channels.workers.len(),
            pid: std::process::id(),
            started_at,
        };
        let shared = Arc::new(Shared {
            view: ArcSwap::from_pointee(view),
            draining: false.into(),
            commands: commands_tx,
            reload_lock: tokio::sync::Mutex::new(()),
            config_path: path,
            reloads_succeeded: 0.into(),
            reloads_failed: 0.into(),
            plane,
        });
        let owner = Owner {
            shared: shared.clone(),
            registry,
            builder,
            names: Names::default(),
            tasks: Tasks::new(reports_tx, answers_tx),
            effective: written.clone(),
            written,
            generation: 1,
            bound,
            workers: channels.workers,
            commands,
            passive: channels.passive,
            reports,
            answers,
            moved: mpsc::channel(16),
            ramp: None,
            resolver_retry: None,
            dirty: Dirty::default(),
            view_health: Arc::default(),
            view_dns: Arc::default(),
            started_at,
        };
        (owner, Handle(shared))
    }

    /// Applies events until `stop` turns true, then stops every task it started.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        self.sync_dns();
        self.sync_checks();
        self.publish_view();
        loop {
            let timer = self.next_timer();
            tokio::select! {
                Some(cmd) = self.commands.recv() => self.on_command(cmd),
                Some(report) = self.reports.recv() => self.on_report(report),
                Some(answer) = self.answers.recv() => self.on_answer(answer),
                Some(notice) = self.passive.recv() => self.on_passive(notice),
                Some(moved) = self.moved.1.recv() => self.on_moved(moved),
                Some((kind, why)) = self.tasks.ended() => self.on_task_ended(kind, &why),
                () = sleep_until(timer), if timer.is_some() => self.on_timer(),
                _ = stop.wait_for(|s| *s) => break,
            }
            if self.dirty.any {
                self.publish_view();
            }
        }
        self.tasks.stop_all();
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Backend {
                pool,
                address,
                action,
                reply,
            } => {
                let result = self.backend_action(&pool, address, action);
                self.publish_view();
                let _ = reply.send(result);
            }
            Command::Deny {
                listener,
                block,
                add,
                reply,
            } => {
                let result = if self.written.listeners.iter().any(|l| l.name == listener) {
                    match self.registry.set_deny(&listener, block, add) {
                        Ok(changed) => {
                            if changed {
                                info!(listener, %block, add, "runtime deny list changed");
                                self.rebuild();
                            }
                            Ok(changed)
                        }
                        Err(DenyListFull) => Err(ActionError::DenyListFull(listener)),
                    }
                } else {
                    Err(ActionError::NoListener(listener))
                };
                self.publish_view();
                let _ = reply.send(result);
            }
            Command::Reload { prepared, reply } => {
                let result = self.apply_reload(*prepared);
                self.publish_view();
                let _ = reply.send(result);
            }
        }
    }

    fn backend_action(
        &mut self,
        pool: &str,
        address: std::net::SocketAddr,
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
        });
        info!(pool, backend = %address, ?action, "backend override applied");
        self.rebuild();
        Ok(())
    }

    /// Makes a prepared config the running one, in one step.
    fn apply_reload(&mut self, prepared: Prepared) -> Result<u64, ReloadError> {
        if self
            .shared
            .draining
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(ReloadError::Draining); // the prepared sockets close as they drop
        }
        let Prepared { config, fresh } = prepared;
        self.generation += 1;
        self.shared.plane.set_mode(match config.forwarding {
            config::Forwarding::Splice => ForwardMode::Splice,
            config::Forwarding::Copy => ForwardMode::Copy,
        });
        let before = std::mem::replace(&mut self.written, Arc::new(config));
        self.names.adopt(&self.written);
        self.names.retain(&self.written);
        self.install(self.names.expand(&self.written));
        let mut bound = (*self.bound).clone();
        for group in fresh {
            for (worker, socket) in self.workers.iter().zip(group.sockets) {
                let _ = worker.send(BoundSocket {
                    name: group.listener.as_str().into(),
                    configured: group.configured,
                    socket,
                });
            }
            info!(listener = %group.listener, addr = %group.actual, "listener bound");
            bound.insert((group.listener, group.configured), group.actual);
        }
        let written = &self.written;
        bound.retain(|(name, addr), _| {
            written
                .listeners
                .iter()
                .any(|l| &l.name == name && l.bind.contains(addr))
        });
        self.bound = Arc::new(bound);
        for l in &before.listeners {
            if !self.written.listeners.iter().any(|n| n.name == l.name) {
                info!(listener = %l.name, "listener removed; its open connections drain");
            }
        }
        self.sync_dns();
        self.sync_checks();
        Ok(self.generation)
    }

    /// Makes `next` the effective config and publishes its snapshot. Backends it adds to a
    /// pool with an active check are pending before that snapshot, so none takes a
    /// connection before its first passing check.
    fn install(&mut self, next: Config) {
        let known: std::collections::HashSet<(&str, std::net::SocketAddr)> = self
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
        self.rebuild();
    }

    /// Builds the next snapshot and publishes it when it changed; starts the limiter moves
    /// it asks for.
    fn rebuild(&mut self) {
        let built = self
            .builder
            .build(&self.effective, &mut self.registry, self.generation);
        for r in built.reshapes {
            self.reshape(r);
        }
        if built.changed {
            self.shared.plane.snapshot.publish(built.snapshot);
        }
        self.dirty.any = true;
        self.dirty.health = true;
    }

    /// Moves a limiter table into its new shape on a blocking thread; the owner installs
    /// the result when it arrives.
    fn reshape(&self, r: Reshape) {
        let tx = self.moved.0.clone();
        let Reshape {
            listener,
            from,
            shape,
        } = r;
        tokio::spawn(async move {
            let table = from.clone();
            let done = tokio::task::spawn_blocking(move || table.reshape(shape, Instant::now()));
            let to = match done.await {
                Ok(result) => Some(result),
                Err(e) => {
                    error!(listener, error = %e, "moving the per-source limiter failed; the current table stays");
                    None
                }
            };
            let moved = Moved {
                listener,
                from,
                shape,
                to,
            };
            let _ = tx.send(moved).await;
        });
    }

    fn on_moved(&mut self, moved: Moved) {
        let Moved {
            listener,
            from,
            shape,
            to,
        } = moved;
        match to {
            Some((to, carried)) => {
                info!(
                    listener,
                    kept = carried.kept,
                    split = carried.split,
                    no_room = carried.no_room,
                    took = ?carried.took,
                    "per-source limiter moved to a new table (prefix or max_tracked_sources changed)"
                );
                self.builder.moved(&listener, &from, to);
            }
            None => self.builder.unmoved(&listener, &from, shape),
        }
        self.rebuild();
    }

    fn on_report(&mut self, report: Report) {
        let key = (report.pool.to_string(), report.backend);
        let Some(pool) = self.effective.pool(&key.0) else {
            return;
        };
        if !pool.backends.iter().any(|b| b.address == key.1) {
            return; // removed while the probe ran
        }
        let (rise, fall) = match (&pool.health_check, report.recovery) {
            (Some(hc), false) => (hc.rise, hc.fall),
            (None, true) => {
                self.tasks.end_recovery(&key);
                (1, 1)
            }
            _ => return, // the pool's checks changed while the probe ran
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
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        self.dirty.any = true;
        self.dirty.health = true;
        match self.registry.record(&key, outcome, rise, fall) {
            None => {}
            Some(true) => {
                if let Some(stats) = &stats {
                    // A fresh start for passive checks: the streak that took it down is history.
                    stats
                        .failing_streak
                        .store(0, std::sync::atomic::Ordering::Relaxed);
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
    }

    /// Passive health: a backend failed its pool's limit of connects in a row. It is marked
    /// down; an active check brings it back through `rise`, or else a recovery probe.
    fn on_passive(&mut self, notice: PassiveDown) {
        let key = (notice.pool.to_string(), notice.backend);
        let Some(pool) = self.effective.pool(&key.0) else {
            return;
        };
        let (limit, checked) = (pool.passive_failures, pool.health_check.is_some());
        let detail = format!("{limit} connect failures in a row");
        if !self.registry.force_down(&key, detail) {
            return;
        }
        warn!(pool = %key.0, backend = %key.1, failures = limit, "backend is down (passive check)");
        self.rebuild();
        if !checked {
            self.tasks.recover(&key);
        }
    }

    fn on_answer(&mut self, answer: Answer) {
        let Answer { key, round, next } = answer;
        if !self.tasks.runs_dns(&key) {
            return; // dropping `next` ends that task
        }
        let written = self.written.clone();
        let Some(entry) = written
            .pool(&key.0)
            .and_then(|p| p.named.iter().find(|n| n.lookup == key.1))
        else {
            return;
        };
        let port = match entry.lookup {
            Lookup::Host { port, .. } => port,
            Lookup::Srv { .. } => 0,
        };
        let r = &written.resolver;
        let timing = Timing {
            min_ttl: r.min_ttl,
            max_ttl: r.max_ttl,
            negative_hold: r.negative_hold,
        };
        let applied = self.names.apply(&key, round, port, timing);
        let _ = next.send(Next {
            delay: applied.delay,
            srv_targets: self.names.srv_targets(&key),
        });
        self.dirty.any = true;
        self.dirty.dns = true;
        let (pool, name) = (&key.0, key.1.name());
        if applied.result != applied.previous {
            match &applied.error {
                Some(error) if applied.previous.is_empty() || applied.previous == "success" => {
                    warn!(pool, name, result = applied.result, %error, retry_in = ?applied.delay, "DNS lookup failing; the last answer stays in force")
                }
                _ => info!(
                    pool,
                    name,
                    result = applied.result,
                    "DNS lookup result changed"
                ),
            }
        }
        if applied.changed {
            info!(pool, name, addresses = ?applied.addresses, "DNS answer in force changed");
            self.install(self.names.expand(&written));
            self.sync_checks();
        }
    }

    fn on_task_ended(&mut self, kind: Kind, why: &str) {
        if let Some(suppressed) = TASK_LOG.allow() {
            error!(task = ?kind, why, suppressed, "a control-plane task ended unexpectedly; restarting it");
        }
        let held = match &kind {
            Kind::Dns(key) => self.names.srv_targets(key),
            _ => Vec::new(),
        };
        self.tasks.restart(kind, &self.effective, held);
    }

    /// Makes the checkers match the effective config; backends that lost their check
    /// forget their health.
    fn sync_checks(&mut self) {
        let stopped = self.tasks.sync_checks(&self.effective);
        if self.registry.reset_health(&stopped) {
            self.rebuild();
        }
        self.dirty.any = true;
        self.dirty.health = true;
    }

    /// Makes the DNS tasks match the written config. A changed `resolver` section (or one
    /// whose client could not be built) gets a new client, on which every entry asks again
    /// at once; the answers in force are kept.
    fn sync_dns(&mut self) {
        self.names.retain(&self.written);
        self.dirty.any = true;
        self.dirty.dns = true;
        if !discovery::entries(&self.written).is_empty() {
            match self.names.client(&self.written.resolver) {
                Client::Same => {}
                Client::New(dns) => {
                    info!(servers = ?dns.servers, "DNS resolution started");
                    self.tasks.set_dns_client(Some(*dns));
                    self.resolver_retry = None;
                }
                Client::Failed { error, first } => {
                    if first {
                        error!(%error, retry_in = ?discovery::RETRY_CLIENT, "DNS-named backends cannot be resolved");
                    }
                    self.tasks.set_dns_client(None);
                    self.resolver_retry = Some(Instant::now() + discovery::RETRY_CLIENT);
                }
            }
        }
        let names = &self.names;
        self.tasks
            .sync_dns(&self.written, |key| names.srv_targets(key));
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

    fn next_timer(&self) -> Option<Instant> {
        [self.ramp.map(|r| r.next), self.resolver_retry]
            .into_iter()
            .flatten()
            .min()
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        if let Some(r) = self.ramp
            && r.next <= now
        {
            self.rebuild();
            self.ramp = (now < r.until).then_some(Ramp {
                next: now + r.step,
                ..r
            });
        }
        if self.resolver_retry.is_some_and(|at| at <= now) {
            self.resolver_retry = None;
            self.sync_dns();
        }
    }

    /// Publishes the view of the current state; parts that did not change are shared with
    /// the last view.
    fn publish_view(&mut self) {
        if self.dirty.health {
            self.view_health = Arc::new(self.registry.healths().clone());
        }
        if self.dirty.dns {
            self.view_dns = Arc::new(DnsView {
                states: self.names.states().clone(),
                client_error: self.names.client_error(),
                rounds: self.names.rounds(),
            });
        }
        self.dirty = Dirty::default();
        let view = View {
            generation: self.generation,
            written: self.written.clone(),
            effective: self.effective.clone(),
            snapshot: self.shared.plane.snapshot.load_full(),
            health: self.view_health.clone(),
            overrides: Arc::new(self.registry.overrides().clone()),
            dns: self.view_dns.clone(),
            bound: self.bound.clone(),
            workers: self.workers.len(),
            pid: std::process::id(),
            started_at: self.started_at,
        };
        self.shared.view.store(Arc::new(view));
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
