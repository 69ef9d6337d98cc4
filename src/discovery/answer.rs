//! The DNS policy of DESIGN §4, pure (replies and the clock are passed in): what one
//! resolution round of a `host:` or `srv:` entry leaves in force, and when to ask again.
//!
//! Every question (A, AAAA, SRV, and A/AAAA of each SRV target) keeps its last records.
//! Records replace them; a failure (timeout, SERVFAIL, REFUSED) keeps them; NXDOMAIN or an
//! empty answer removes them only once it has lasted `negative_hold`. The next round comes
//! after the smallest TTL in force, clamped to `[min_ttl, max_ttl]`, or after a back-off
//! (doubling from `min_ttl`, at most 30 s) while questions fail or stay negative — never
//! later than that TTL while some question still answers, nor than the moment a negative
//! hold runs out. Which addresses the records make is `addresses.rs`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// The tuning an entry's state obeys (from `config::Resolver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub negative_hold: Duration,
}

/// Why a question got no records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Timeout,
    ServFail,
    Refused,
    /// Anything else (no nameserver, a malformed reply, an I/O error), with what it was.
    Other(String),
}

/// What one question got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<T> {
    /// Records and their smallest TTL (seconds).
    Records(u32, Vec<T>),
    NxDomain,
    /// The name exists with no record of this type.
    NoData,
    Failed(Failure),
}

impl<T> Reply<T> {
    pub(super) fn failure(&self) -> Option<&Failure> {
        match self {
            Reply::Failed(f) => Some(f),
            _ => None,
        }
    }
}

/// One SRV record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Lower case, no trailing dot; `.` (empty here) means "no service".
    pub target: String,
}

/// The replies of one round: A and AAAA of every name asked, and the SRV question if any.
#[derive(Debug, Clone, Default)]
pub struct Round {
    pub srv: Option<Reply<Srv>>,
    pub addresses: Vec<(String, Reply<IpAddr>, Reply<IpAddr>)>,
}

/// One question's records in force.
#[derive(Debug, Clone)]
pub(super) struct Held<T> {
    pub(super) records: Vec<T>,
    pub(super) ttl: u32,
    /// When the records in force were received.
    pub(super) received_at: Option<Instant>,
    /// Since when it has been NXDOMAIN or empty while records were still held.
    pub(super) negative_since: Option<Instant>,
}

impl<T> Default for Held<T> {
    fn default() -> Self {
        Held {
            records: Vec::new(),
            ttl: 0,
            received_at: None,
            negative_since: None,
        }
    }
}

/// What a reply did to a question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Records,
    Negative,
    Failed,
}

impl<T> Held<T> {
    fn merge(&mut self, reply: Reply<T>, now: Instant, hold: Duration) -> Effect {
        match reply {
            Reply::Records(ttl, data) if !data.is_empty() => {
                self.records = data;
                self.ttl = ttl;
                self.received_at = Some(now);
                self.negative_since = None;
                Effect::Records
            }
            Reply::Records(..) | Reply::NxDomain | Reply::NoData => {
                if !self.records.is_empty() {
                    let since = *self.negative_since.get_or_insert(now);
                    if now.saturating_duration_since(since) >= hold {
                        *self = Held::default();
                    }
                }
                Effect::Negative
            }
            Reply::Failed(_) => Effect::Failed,
        }
    }

    /// When the negative hold of this question runs out, if one is running.
    fn hold_ends(&self, hold: Duration) -> Option<Instant> {
        self.negative_since.map(|s| s + hold)
    }

    /// (TTL, received) of the records in force, if any.
    fn in_force(&self) -> Option<(u32, Option<Instant>)> {
        (!self.records.is_empty()).then_some((self.ttl, self.received_at))
    }
}

/// One resolved backend address of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub address: SocketAddr,
    /// For SRV, from the record (see `addresses::srv_weight`); `None`: the entry's weight.
    pub weight: Option<u32>,
    /// SRV priority rank: 0 for the lowest priority in the answer, 1 for the next...
    pub rank: u32,
}

/// Everything an entry knows: the records in force per question, and the round's outcome.
#[derive(Debug, Clone, Default)]
pub struct NameState {
    pub(super) srv: Held<Srv>,
    pub(super) a: HashMap<String, Held<IpAddr>>,
    pub(super) aaaa: HashMap<String, Held<IpAddr>>,
    /// The `result` label of the last round: success, nxdomain, empty, timeout, servfail,
    /// refused, error.
    pub last_result: &'static str,
    /// What the last failure was, for operators.
    pub last_error: Option<String>,
    /// Rounds in a row with a failed or negative question, for the back-off.
    pub(super) streak: u32,
    /// Whether any round has brought records (before that, the pool waits on DNS).
    pub(super) answered: bool,
    /// When the oldest records in force were received: the age of the answer in use.
    pub answered_at: Option<Instant>,
    /// The smallest TTL (seconds, as served) among the records in force.
    pub ttl: Option<u32>,
    pub next_refresh: Option<Instant>,
    /// The addresses in force, in order.
    pub resolved: Vec<Resolved>,
}

impl NameState {
    /// Whether any round has produced records yet (a pool waits for this to be ready).
    pub fn has_answer(&self) -> bool {
        self.answered
    }

    /// The SRV targets in force, lowest priority first: whose addresses the next round asks
    /// for when the SRV question brings no records.
    pub fn srv_targets(&self) -> Vec<String> {
        super::addresses::targets(&self.srv.records)
    }

    /// This state for the same name on another port (a reload changed a `host:` port).
    pub fn with_port(&self, port: u16) -> NameState {
        let mut s = self.clone();
        s.resolved = s.host_addresses(port);
        s
    }

    /// Applies one round at `now`; returns the delay until the next one. `resolved` then
    /// holds the addresses in force (`port` for A/AAAA of a `host:` entry).
    pub fn apply(&mut self, round: Round, port: u16, now: Instant, t: Timing) -> Duration {
        let hold = t.negative_hold;
        let mut effects = Vec::new();
        let mut failure: Option<Failure> = None;
        let mut nxdomain = false;
        let mut note = |failed: Option<&Failure>, nx: bool| {
            if let Some(f) = failed {
                failure.get_or_insert_with(|| f.clone());
            }
            nxdomain |= nx;
        };
        let is_srv = round.srv.is_some();
        let before = self.srv.clone();
        let mut srv = None;
        if let Some(reply) = round.srv {
            let nx = matches!(reply, Reply::NxDomain);
            note(reply.failure(), nx);
            let effect = self.srv.merge(reply, now, hold);
            effects.push(effect);
            srv = Some((effect, nx));
        }
        let mut asked = Vec::new();
        for (name, a, aaaa) in round.addresses {
            for (reply, family) in [(a, &mut self.a), (aaaa, &mut self.aaaa)] {
                note(reply.failure(), matches!(reply, Reply::NxDomain));
                effects.push(
                    family
                        .entry(name.clone())
                        .or_default()
                        .merge(reply, now, hold),
                );
            }
            asked.push(name);
        }
        self.resolved = self.addresses(is_srv, port);
        if is_srv && self.resolved.is_empty() && failure.is_some() && !before.records.is_empty() {
            // New SRV records whose targets could not be resolved: a failure, so the old
            // records (and their targets' addresses) stay in force.
            self.srv = before;
            self.resolved = self.addresses(is_srv, port);
        }
        // Forget the addresses of names neither asked now nor named by the SRV records.
        let targets = self.srv_targets();
        let keep = |n: &String| asked.contains(n) || targets.contains(n);
        self.a.retain(|n, _| keep(n));
        self.aaaa.retain(|n, _| keep(n));
        self.answered |= effects.contains(&Effect::Records);
        let in_force = self.in_force();
        self.ttl = in_force.iter().map(|(ttl, _)| *ttl).min();
        self.answered_at = in_force.iter().filter_map(|(_, at)| *at).min();
        let all_negative = !effects.is_empty() && effects.iter().all(|e| *e == Effect::Negative);
        let srv_negative = matches!(srv, Some((Effect::Negative, _)));
        self.last_result = match &failure {
            Some(f) => failure_label(f),
            None if srv_negative && srv.is_some_and(|(_, nx)| nx) => "nxdomain",
            None if srv_negative => "empty",
            None if all_negative && nxdomain => "nxdomain",
            None if all_negative => "empty",
            None => "success",
        };
        self.last_error = failure.as_ref().map(describe);
        let ttl = Duration::from_secs(u64::from(self.ttl.unwrap_or(0))).clamp(t.min_ttl, t.max_ttl);
        let delay = if failure.is_some() || all_negative || srv_negative {
            self.streak = self.streak.saturating_add(1);
            let backoff = backoff(self.streak, t);
            // A question that keeps failing must not stop the others following their TTL.
            if effects.contains(&Effect::Records) {
                backoff.min(ttl)
            } else {
                backoff
            }
        } else {
            self.streak = 0;
            ttl
        };
        let delay = match self.hold_ends(hold) {
            // Ask again when the hold runs out, so removal is not late by a whole back-off.
            // A hold already over (the question has failed since) no longer counts.
            Some(end) if end > now => delay.min((end - now).max(t.min_ttl)),
            _ => delay,
        };
        self.next_refresh = Some(now + delay);
        delay
    }

    fn addresses(&self, is_srv: bool, port: u16) -> Vec<Resolved> {
        if is_srv {
            self.srv_addresses()
        } else {
            self.host_addresses(port)
        }
    }

    fn hold_ends(&self, hold: Duration) -> Option<Instant> {
        let addrs = self.a.values().chain(self.aaaa.values());
        addrs
            .filter_map(|h| h.hold_ends(hold))
            .chain(self.srv.hold_ends(hold))
            .min()
    }

    /// (TTL, received) of every question with records in force.
    fn in_force(&self) -> Vec<(u32, Option<Instant>)> {
        let addrs = self.a.values().chain(self.aaaa.values());
        addrs
            .filter_map(Held::in_force)
            .chain(self.srv.in_force())
            .collect()
    }
}

/// `min_ttl · 2^(streak-1)`, at most 30 s (or `min_ttl` when that is larger), and never
/// past `max_ttl`.
fn backoff(streak: u32, t: Timing) -> Duration {
    let doubled = t
        .min_ttl
        .saturating_mul(1u32 << streak.saturating_sub(1).min(20));
    let cap = Duration::from_secs(30).min(t.max_ttl).max(t.min_ttl);
    doubled.min(cap)
}

pub fn failure_label(f: &Failure) -> &'static str {
    match f {
        Failure::Timeout => "timeout",
        Failure::ServFail => "servfail",
        Failure::Refused => "refused",
        Failure::Other(_) => "error",
    }
}

fn describe(f: &Failure) -> String {
    match f {
        Failure::Timeout => "no answer within the timeout".to_owned(),
        Failure::ServFail => "SERVFAIL".to_owned(),
        Failure::Refused => "REFUSED".to_owned(),
        Failure::Other(e) => e.clone(),
    }
}
