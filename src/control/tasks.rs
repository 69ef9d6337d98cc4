//! The owner's background tasks — health checkers, DNS entries, passive recoveries — and
//! their supervision. Each task only probes or resolves and sends its result to the owner;
//! this file starts, stops and restarts them to match the config, and notices a task that
//! ended on its own (a panic, a bug): it is logged and started again, so health checks and
//! DNS never stop silently.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::{AbortHandle, Id, JoinSet};

use super::registry::BackendKey;
use crate::config::{Config, HealthCheck};
use crate::discovery::{self, Answer, Dns};
use crate::health::{Report, checker};

/// What a task does, to restart it like for like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Check(BackendKey),
    Dns(discovery::Key),
    Recovery(BackendKey),
}

/// How long a task that died waits before it runs again: one that dies at once every time
/// (a bug that one answer triggers) then costs a log line a second, not a spinning core.
const RESTART_AFTER: Duration = Duration::from_secs(1);

pub struct Tasks {
    set: JoinSet<()>,
    /// Tasks started now wait this long first (`RESTART_AFTER` while restarting one).
    delay: Duration,
    /// Tasks that run on purpose; one that ends while listed here ended unexpectedly.
    running: HashMap<Id, Kind>,
    checks: HashMap<BackendKey, (HealthCheck, AbortHandle)>,
    dns: HashMap<discovery::Key, AbortHandle>,
    recoveries: HashMap<BackendKey, AbortHandle>,
    reports: mpsc::Sender<Report>,
    answers: mpsc::Sender<Answer>,
    /// The DNS client the entries' tasks use.
    client: Option<Dns>,
}

impl Tasks {
    pub fn new(reports: mpsc::Sender<Report>, answers: mpsc::Sender<Answer>) -> Tasks {
        Tasks {
            set: JoinSet::new(),
            delay: Duration::ZERO,
            running: HashMap::new(),
            checks: HashMap::new(),
            dns: HashMap::new(),
            recoveries: HashMap::new(),
            reports,
            answers,
            client: None,
        }
    }

    fn spawn(
        &mut self,
        kind: Kind,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> AbortHandle {
        let delay = self.delay;
        let handle = self.set.spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            task.await;
        });
        self.running.insert(handle.id(), kind);
        handle
    }

    fn stop(&mut self, handle: &AbortHandle) {
        self.running.remove(&handle.id());
        handle.abort();
    }

    /// Makes the checkers match `effective`'s checks. Returns the backends whose check
    /// stopped for good (their health is forgotten by the caller). A backend that now has
    /// a check loses its passive recovery: its check decides.
    pub fn sync_checks(&mut self, effective: &Config) -> Vec<BackendKey> {
        let mut wanted: HashMap<BackendKey, &HealthCheck> = HashMap::new();
        for p in &effective.pools {
            if let Some(hc) = &p.health_check {
                for b in &p.backends {
                    wanted.insert((p.name.clone(), b.address), hc);
                }
            }
        }
        let mut stopped = Vec::new();
        let old: Vec<BackendKey> = self.checks.keys().cloned().collect();
        for key in old {
            let keep = matches!((wanted.get(&key), self.checks.get(&key)), (Some(w), Some((c, _))) if *w == c);
            if !keep && let Some((_, handle)) = self.checks.remove(&key) {
                self.stop(&handle);
                if !wanted.contains_key(&key) {
                    stopped.push(key);
                }
            }
        }
        for (key, check) in wanted {
            if !self.checks.contains_key(&key) {
                self.start_check(key, check.clone());
            }
        }
        let gone: Vec<BackendKey> = self
            .recoveries
            .keys()
            .filter(|k| {
                self.checks.contains_key(*k)
                    || effective
                        .pool(&k.0)
                        .is_none_or(|p| p.backends.iter().all(|b| b.address != k.1))
            })
            .cloned()
            .collect();
        for key in gone {
            self.end_recovery(&key);
        }
        stopped
    }

    fn start_check(&mut self, key: BackendKey, check: HealthCheck) {
        let task = checker::run(
            Arc::from(key.0.as_str()),
            key.1,
            check.clone(),
            self.reports.clone(),
        );
        let handle = self.spawn(Kind::Check(key.clone()), task);
        self.checks.insert(key, (check, handle));
    }

    /// Starts probing a backend that passive checks took down, unless already probing.
    pub fn recover(&mut self, key: &BackendKey) {
        if self.recoveries.contains_key(key) {
            return;
        }
        let task = checker::recover(Arc::from(key.0.as_str()), key.1, self.reports.clone());
        let handle = self.spawn(Kind::Recovery(key.clone()), task);
        self.recoveries.insert(key.clone(), handle);
    }

    /// The recovery of `key` reported (its task ends by itself) or is no longer wanted.
    pub fn end_recovery(&mut self, key: &BackendKey) {
        if let Some(handle) = self.recoveries.remove(key) {
            self.stop(&handle);
        }
    }

    /// Stops every DNS task; from now on they run on `client` (none run without one).
    pub fn set_dns_client(&mut self, client: Option<Dns>) {
        let all: Vec<AbortHandle> = self.dns.drain().map(|(_, h)| h).collect();
        for h in all {
            self.stop(&h);
        }
        self.client = client;
    }

    /// Makes the DNS tasks match `written`'s entries. `held` gives an entry's SRV targets
    /// in force, for a task that starts.
    pub fn sync_dns(&mut self, written: &Config, held: impl Fn(&discovery::Key) -> Vec<String>) {
        let wanted = discovery::entries(written);
        let old: Vec<discovery::Key> = self.dns.keys().cloned().collect();
        for key in old {
            if !wanted.contains(&key)
                && let Some(h) = self.dns.remove(&key)
            {
                self.stop(&h);
            }
        }
        for key in wanted {
            if !self.dns.contains_key(&key) {
                self.start_dns(key.clone(), held(&key));
            }
        }
    }

    fn start_dns(&mut self, key: discovery::Key, held: Vec<String>) {
        let Some(dns) = self.client.clone() else {
            return; // no client yet: sync_dns starts the tasks once there is one
        };
        let task = discovery::run(dns, key.clone(), held, self.answers.clone());
        let handle = self.spawn(Kind::Dns(key.clone()), task);
        self.dns.insert(key, handle);
    }

    /// Whether `key`'s DNS task is meant to run (an answer from another is dropped).
    pub fn runs_dns(&self, key: &discovery::Key) -> bool {
        self.dns.contains_key(key)
    }

    /// Waits for a task to end and returns what it was when it ended unexpectedly (after
    /// forgetting it, so the caller can restart it); `None` for one stopped on purpose.
    /// Pending forever while no task runs.
    pub async fn ended(&mut self) -> Option<(Kind, String)> {
        let Some(joined) = self.set.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let (id, why) = match joined {
            Ok((id, ())) => (id, "it returned".to_owned()),
            Err(e) if e.is_cancelled() => (e.id(), String::new()),
            Err(e) => (e.id(), format!("it panicked: {e}")),
        };
        let kind = self.running.remove(&id)?;
        if let (Kind::Recovery(k), true) = (&kind, why == "it returned") {
            // A recovery ends by itself once it has reported a pass.
            self.recoveries.remove(k);
            return None;
        }
        match &kind {
            Kind::Check(k) => drop(self.checks.remove(k)),
            Kind::Dns(k) => drop(self.dns.remove(k)),
            Kind::Recovery(k) => drop(self.recoveries.remove(k)),
        }
        Some((kind, why))
    }

    /// Restarts a task that ended unexpectedly, if the config still wants it, after
    /// [`RESTART_AFTER`].
    pub fn restart(&mut self, kind: Kind, effective: &Config, held: Vec<String>) {
        self.delay = RESTART_AFTER;
        self.start(kind, effective, held);
        self.delay = Duration::ZERO;
    }

    fn start(&mut self, kind: Kind, effective: &Config, held: Vec<String>) {
        match kind {
            Kind::Check(key) => {
                let check = effective
                    .pool(&key.0)
                    .filter(|p| p.backends.iter().any(|b| b.address == key.1))
                    .and_then(|p| p.health_check.clone());
                if let Some(check) = check {
                    self.start_check(key, check);
                }
            }
            Kind::Dns(key) => self.start_dns(key, held),
            Kind::Recovery(key) => self.recover(&key),
        }
    }

    /// Stops every task (shutdown).
    pub fn stop_all(&mut self) {
        self.running.clear();
        self.set.abort_all();
        self.checks.clear();
        self.dns.clear();
        self.recoveries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(check: bool, backend: std::net::SocketAddr) -> Config {
        let hc = if check {
            "    health_check: { type: tcp, interval: 50ms }\n"
        } else {
            ""
        };
        let yaml = format!(
            "listeners:\n  web: {{ bind: \"127.0.0.1:0\", pool: p }}\npools:\n  p:\n{hc}    backends:\n      - address: \"{backend}\"\n"
        );
        crate::config::load_str(&yaml, "t").unwrap()
    }

    /// A task that dies (here a checker standing in for a probe with a bug) is reported with
    /// why, and restarted like for like; one stopped on purpose is not reported.
    #[tokio::test]
    async fn a_task_that_dies_is_reported_and_restarted() {
        let backend: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        let (reports_tx, mut reports) = mpsc::channel(8);
        let (answers_tx, _answers) = mpsc::channel(8);
        let mut tasks = Tasks::new(reports_tx, answers_tx);
        let key = ("p".to_owned(), backend);
        let handle = tasks.spawn(Kind::Check(key.clone()), async { panic!("a probe bug") });
        tasks.checks.insert(
            key.clone(),
            (
                config(true, backend).pools[0].health_check.clone().unwrap(),
                handle,
            ),
        );
        let (kind, why) = tokio::time::timeout(Duration::from_secs(5), tasks.ended())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kind, Kind::Check(key.clone()));
        assert!(why.contains("panicked"), "{why}");
        assert!(
            !tasks.checks.contains_key(&key),
            "forgotten, to be restarted"
        );
        tasks.restart(kind, &config(true, backend), Vec::new());
        let report = tokio::time::timeout(Duration::from_secs(5), reports.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(report.backend, backend, "the restarted checker probes");
        assert!(
            tasks.sync_checks(&config(false, backend)).contains(&key),
            "stopped"
        );
        let on_purpose = tokio::time::timeout(Duration::from_secs(5), tasks.ended())
            .await
            .unwrap();
        assert_eq!(on_purpose, None, "a task stopped on purpose is not a death");
    }
}
