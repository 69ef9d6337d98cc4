//! The owner of all control state: one task that applies events one at a time, in the order
//! it takes them — admin commands, prepared reloads, probe reports, DNS answers,
//! passive-failure notices, finished limiter moves, its timers (slow-start ramps, retrying a
//! resolver) and tasks that ended — and after each, publishes what changed. Nothing else
//! mutates control state, so there is no lock to hold, and nothing slow runs here: reloads
//! arrive prepared, limiter reshapes run on a blocking thread.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tracing::{error, info};

use super::Command;
use super::build::Reshape;
use super::handle::{Handle, Shared};
use super::registry::BackendKey;
use super::reloaded::{self, Changes, Reloaded};
use super::served::{ReportEffect, Served};
use super::tasks::{Kind, Tasks};
use super::view::{DnsView, Reloads, View};
use crate::admission::{Carried, Shape, SourceTable};
use crate::config::{self, Config};
use crate::discovery::{self, Answer, Client, Names};
use crate::health::Report;
use crate::proxy::listener::{BindKey, BoundSocket};
use crate::proxy::throttle::LogThrottle;
use crate::proxy::{DataPlane, ForwardMode, PassiveDown};
use crate::reload::{BoundMap, Prepared, ReloadError};

/// Queued commands (admin requests, reloads) before senders wait.
const COMMAND_QUEUE: usize = 64;
/// Queued probe reports and DNS answers before their tasks wait.
const REPORT_QUEUE: usize = 1024;

static TASK_LOG: LogThrottle = LogThrottle::new();

/// A limiter table moved into a new shape, off the owner's loop.
struct Moved {
    listener: String,
    from: Arc<SourceTable>,
    shape: Shape,
    to: Option<(Arc<SourceTable>, Carried)>,
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
    served: Served,
    names: Names,
    tasks: Tasks,
    /// The config in force as written (`host:`/`srv:` entries unresolved).
    written: Arc<Config>,
    bound: Arc<BoundMap>,
    workers: Vec<mpsc::UnboundedSender<BoundSocket>>,
    commands: mpsc::Receiver<Command>,
    passive: mpsc::Receiver<PassiveDown>,
    reports: mpsc::Receiver<Report>,
    answers: mpsc::Receiver<Answer>,
    moved: (mpsc::Sender<Moved>, mpsc::Receiver<Moved>),
    /// Limiter moves running, and the reloads that answer once none is.
    moving: usize,
    waiting: Vec<(super::Reply<Result<Reloaded, ReloadError>>, Reloaded)>,
    resolver_retry: Option<Instant>,
    dirty: Dirty,
    view_health: Arc<std::collections::HashMap<BackendKey, crate::health::HealthState>>,
    view_dns: Arc<DnsView>,
    reloads: Reloads,
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
        carried: Option<super::Carried>,
        plane: impl FnOnce(crate::state::Snapshot) -> DataPlane,
    ) -> (Owner, Handle) {
        // The DNS answers the previous process had (a binary upgrade) are in force from the
        // first snapshot: its pools of names are not empty until the first round.
        let mut names = Names::default();
        let carried = carried.map(|mut c| {
            names.seed(std::mem::take(&mut c.names));
            c
        });
        let served = Served::new(&names.expand(config), carried, plane);
        let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let (reports_tx, reports) = mpsc::channel(REPORT_QUEUE);
        let (answers_tx, answers) = mpsc::channel(REPORT_QUEUE);
        let (written, effective) = (Arc::new(config.clone()), served.effective().clone());
        let bound = Arc::new(bound);
        let started_at = SystemTime::now();
        let view = View {
            generation: 1,
            written: written.clone(),
            effective,
            snapshot: served.plane().snapshot.load_full(),
            health: Arc::default(),
            overrides: Arc::default(),
            dns: Arc::default(),
            bound: bound.clone(),
            workers: channels.workers.len(),
            reloads: Reloads::started(started_at),
            pid: std::process::id(),
            started_at,
        };
        let shared = Arc::new(Shared {
            view: ArcSwap::from_pointee(view),
            draining: false.into(),
            commands: commands_tx,
            reload_lock: tokio::sync::Mutex::new(()),
            config_path: path,
            plane: served.plane().clone(),
            upgrades: Default::default(),
        });
        let owner = Owner {
            shared: shared.clone(),
            served,
            names,
            tasks: Tasks::new(reports_tx, answers_tx),
            written,
            bound,
            workers: channels.workers,
            commands,
            passive: channels.passive,
            reports,
            answers,
            moved: mpsc::channel(16),
            moving: 0,
            waiting: Vec::new(),
            resolver_retry: None,
            dirty: Dirty::default(),
            view_health: Arc::default(),
            view_dns: Arc::default(),
            reloads: Reloads::started(started_at),
            started_at,
        };
        (owner, Handle(shared))
    }

    /// Applies events until `stop` turns true, then stops every task it started.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        self.sync_dns();
        self.sync_checks();
        self.after_event();
        loop {
            let timer = self.next_timer();
            tokio::select! {
                Some(cmd) = self.commands.recv() => self.on_command(cmd),
                Some(report) = self.reports.recv() => self.on_report(report),
                Some(answer) = self.answers.recv() => self.on_answer(answer),
                Some(notice) = self.passive.recv() => self.on_passive(&notice),
                Some(moved) = self.moved.1.recv() => self.on_moved(moved),
                Some((kind, why)) = self.tasks.ended() => self.on_task_ended(kind, &why),
                () = sleep_until(timer), if timer.is_some() => self.on_timer(),
                _ = stop.wait_for(|s| *s) => break,
            }
            self.after_event();
        }
        self.tasks.stop_all();
    }

    /// After every event: publish the one snapshot it makes (if workers see a change),
    /// start the limiter moves it asks for, publish the view.
    fn after_event(&mut self) {
        self.served.publish();
        for r in self.served.take_reshapes() {
            self.reshape(r);
        }
        if self.dirty.any {
            self.publish_view();
        }
    }

    fn on_command(&mut self, cmd: Command) {
        // Every command changes state an admin reader may look at at once: the view is
        // published before the answer goes back.
        self.dirty.any = true;
        self.dirty.health = true;
        match cmd {
            Command::Backend {
                pool,
                address,
                action,
                reply,
            } => {
                let result = self.served.backend_action(&pool, address, action);
                self.after_event();
                let _ = reply.send(result);
            }
            Command::Deny {
                listener,
                block,
                add,
                reply,
            } => {
                let result = self.served.deny(&listener, block, add);
                self.after_event();
                let _ = reply.send(result);
            }
            Command::Carry { reply } => {
                let mut carried = self.served.registry().carry();
                carried.names = self.names.carry();
                carried.limits = self.served.carry_limits();
                let _ = reply.send(Ok(carried));
            }
            Command::Reload { prepared, reply } => {
                let result = prepared.and_then(|p| self.apply_reload(*p));
                self.reloads.record(result.is_ok(), SystemTime::now());
                self.after_event();
                // A reload answers once all it changed is in force: a limiter it reshaped
                // too (the owner goes on serving other events meanwhile).
                match result {
                    Ok(reloaded) if self.moving > 0 => self.waiting.push((reply, reloaded)),
                    result => drop(reply.send(result)),
                }
            }
        }
    }

    /// Makes a prepared config the running one, in one step, and reports what changed.
    fn apply_reload(&mut self, prepared: Prepared) -> Result<Reloaded, ReloadError> {
        if self
            .shared
            .draining
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(ReloadError::Draining); // the prepared sockets close as they drop
        }
        let Prepared { config, fresh } = prepared;
        let generation = self.served.generation() + 1;
        self.served.plane().set_mode(match config.forwarding {
            config::Forwarding::Splice => ForwardMode::Splice,
            config::Forwarding::Copy => ForwardMode::Copy,
        });
        let logging = config.logging;
        let access = &self.served.plane().access;
        access.configure(logging.access, logging.access_rate);
        let before = std::mem::replace(&mut self.written, Arc::new(config));
        let effective_before = self.served.effective().clone();
        self.names.adopt(&self.written);
        self.names.retain(&self.written);
        self.served
            .install(self.names.expand(&self.written), generation);
        let reloaded = Reloaded {
            generation,
            changes: Changes::between(&before, &self.written),
            masked: reloaded::masked(
                self.served.registry().overrides(),
                &effective_before,
                self.served.effective(),
            ),
        };
        self.sync_dns();
        self.sync_checks();
        // Published before the new sockets reach the workers: their accept loops look their
        // listener up in it.
        self.served.publish();
        let mut bound = (*self.bound).clone();
        for group in fresh {
            for (worker, socket) in self.workers.iter().zip(group.sockets) {
                let key = group.key.clone();
                let _ = worker.send(BoundSocket { key, socket });
            }
            info!(listener = %group.listener, addr = %group.actual, "listener bound");
            bound.insert(group.key, group.actual);
        }
        bound.retain(|key, _| serves(&self.written, key).is_some());
        for (key, addr) in &bound {
            if let (Some(was), Some(now)) = (serves(&before, key), serves(&self.written, key))
                && was != now
            {
                info!(listener = now, was, %addr, "address carried over to another listener; its sockets and queued clients stay");
            }
        }
        self.bound = Arc::new(bound);
        for l in &before.listeners {
            if !self.written.listeners.iter().any(|n| n.name == l.name) {
                info!(listener = %l.name, "listener removed; its open connections drain");
            }
        }
        Ok(reloaded)
    }

    /// Moves a limiter table into its new shape on a blocking thread; the owner installs
    /// the result when it arrives.
    fn reshape(&mut self, r: Reshape) {
        self.moving += 1;
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
        if let Some((_, carried)) = &to {
            info!(
                listener,
                kept = carried.kept,
                split = carried.split,
                no_room = carried.no_room,
                took = ?carried.took,
                longest_hold = ?carried.longest_hold,
                "per-source limiter moved to a new table (prefix or max_tracked_sources changed)"
            );
        }
        self.served
            .moved(&listener, &from, shape, to.map(|(t, _)| t));
        self.moving -= 1;
        self.dirty.any = true;
        // Publish (and start any move the new table still needs) before answering.
        self.after_event();
        if self.moving == 0 {
            for (reply, reloaded) in self.waiting.drain(..) {
                let _ = reply.send(Ok(reloaded));
            }
        }
    }

    fn on_report(&mut self, report: Report) {
        if let ReportEffect::Recovered(key) = self.served.report(report) {
            self.tasks.end_recovery(&key);
        }
        self.dirty.any = true;
        self.dirty.health = true;
    }

    fn on_passive(&mut self, notice: &PassiveDown) {
        if let Some(key) = self.served.passive(notice) {
            self.tasks.recover(&key);
        }
        self.dirty.any = true;
        self.dirty.health = true;
    }

    fn on_answer(&mut self, answer: Answer) {
        if !self.tasks.runs_dns(&answer.key) {
            return; // dropping the reply ends that task
        }
        let written = self.written.clone();
        let Some(changed) = self.names.answer(answer, &written) else {
            return;
        };
        self.dirty.any = true;
        self.dirty.dns = true;
        if changed {
            let generation = self.served.generation();
            self.served.install(self.names.expand(&written), generation);
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
        self.tasks.restart(kind, self.served.effective(), held);
    }

    /// Makes the checkers match the effective config; backends that lost their check
    /// forget their health.
    fn sync_checks(&mut self) {
        let stopped = self.tasks.sync_checks(self.served.effective());
        self.served.forget_health(&stopped);
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

    fn next_timer(&self) -> Option<Instant> {
        [self.served.ramp_due(), self.resolver_retry]
            .into_iter()
            .flatten()
            .min()
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        self.served.ramp_step(now);
        if self.resolver_retry.is_some_and(|at| at <= now) {
            self.resolver_retry = None;
            self.sync_dns();
        }
        self.dirty.any = true;
    }

    /// Publishes the view of the current state; parts that did not change are shared with
    /// the last view.
    fn publish_view(&mut self) {
        if self.dirty.health {
            self.view_health = Arc::new(self.served.healths().clone());
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
            generation: self.served.generation(),
            written: self.written.clone(),
            effective: self.served.effective().clone(),
            snapshot: self.served.plane().snapshot.load_full(),
            health: self.view_health.clone(),
            overrides: Arc::new(self.served.registry().overrides().clone()),
            dns: self.view_dns.clone(),
            bound: self.bound.clone(),
            workers: self.workers.len(),
            reloads: self.reloads,
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

/// The listener of `config` that the socket group `key` serves, if any.
fn serves<'c>(config: &'c Config, key: &BindKey) -> Option<&'c str> {
    config
        .listeners
        .iter()
        .find(|l| {
            l.bind
                .iter()
                .any(|b| BindKey::new(&l.name, l.protocol.transport(), *b) == *key)
        })
        .map(|l| l.name.as_str())
}
