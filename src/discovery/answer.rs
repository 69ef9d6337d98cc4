//! The DNS policy of DESIGN §4, pure (replies and the clock are passed in): what one
//! resolution round of a `host:` or `srv:` entry leaves in force, and when to ask again.
//!
//! Every question (A, AAAA, SRV, and A/AAAA of each SRV target) keeps its last records.
//! Records replace them; a failure (timeout, SERVFAIL, REFUSED) keeps them; NXDOMAIN or an
//! empty answer removes them only once it has lasted `negative_hold`. The next round comes
//! after the smallest TTL in force, clamped to `[min_ttl, max_ttl]`, or after a back-off
//! (doubling from `min_ttl`, at most 30 s) while questions fail or stay negative, but never
//! later than the moment a negative hold runs out.

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
    fn failure(&self) -> Option<&Failure> {
        match self {
            Reply::Failed(f) => Some(f),
            _ => None,
        }
    }
}

/// One SRV record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
struct Held<T> {
    records: Vec<T>,
    ttl: u32,
    /// Since when it has been NXDOMAIN or empty while records were still held.
    negative_since: Option<Instant>,
}

impl<T> Default for Held<T> {
    fn default() -> Self {
        Held {
            records: Vec::new(),
            ttl: 0,
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

impl<T: PartialEq> Held<T> {
    fn merge(&mut self, reply: Reply<T>, now: Instant, hold: Duration) -> Effect {
        match reply {
            Reply::Records(ttl, data) if !data.is_empty() => {
                self.records = data;
                self.ttl = ttl;
                self.negative_since = None;
                Effect::Records
            }
            Reply::Records(..) | Reply::NxDomain | Reply::NoData => {
                if !self.records.is_empty() {
                    let since = *self.negative_since.get_or_insert(now);
                    if now.saturating_duration_since(since) >= hold {
                        self.records.clear();
                        self.negative_since = None;
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
}

/// One resolved backend address of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub address: SocketAddr,
    /// 1..=1000 for SRV (from the record); `None`: the entry's configured weight.
    pub weight: Option<u32>,
    /// SRV priority rank: 0 for the lowest priority in the answer, 1 for the next...
    pub rank: u32,
}

/// Everything an entry knows: the records in force per question, and the round's outcome.
#[derive(Debug, Clone, Default)]
pub struct NameState {
    srv: Held<Srv>,
    a: HashMap<String, Held<IpAddr>>,
    aaaa: HashMap<String, Held<IpAddr>>,
    /// The `result` label of the last round: success, nxdomain, empty, timeout, servfail,
    /// refused, error.
    pub last_result: &'static str,
    /// What the last failure was, for operators.
    pub last_error: Option<String>,
    /// Rounds in a row with a failed or negative question, for the back-off.
    streak: u32,
    /// When records were last received (the age of the answer in use counts from here).
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
        self.answered_at.is_some()
    }

    /// The SRV targets whose addresses the next round must ask for.
    pub fn srv_targets(&self) -> Vec<String> {
        let mut t: Vec<String> = self
            .srv
            .records
            .iter()
            .filter(|r| !r.target.is_empty())
            .map(|r| r.target.clone())
            .collect();
        t.sort();
        t.dedup();
        t
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
        if let Some(reply) = round.srv {
            note(reply.failure(), matches!(reply, Reply::NxDomain));
            effects.push(self.srv.merge(reply, now, hold));
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
        // Targets the SRV records in force no longer name are forgotten.
        self.a.retain(|n, _| asked.contains(n));
        self.aaaa.retain(|n, _| asked.contains(n));
        if effects.contains(&Effect::Records) {
            self.answered_at = Some(now);
        }
        self.resolved = if is_srv {
            self.srv_addresses()
        } else {
            self.host_addresses(port)
        };
        self.ttl = self.min_ttl();
        let all_negative = !effects.is_empty() && effects.iter().all(|e| *e == Effect::Negative);
        self.last_result = match &failure {
            Some(f) => failure_label(f),
            None if all_negative && nxdomain => "nxdomain",
            None if all_negative => "empty",
            None => "success",
        };
        let delay = if failure.is_some() || all_negative {
            self.streak = self.streak.saturating_add(1);
            backoff(self.streak, t)
        } else {
            self.streak = 0;
            let ttl = Duration::from_secs(u64::from(self.ttl.unwrap_or(0)));
            ttl.clamp(t.min_ttl, t.max_ttl)
        };
        self.last_error = failure.map(|f| describe(&f));
        let delay = match self.hold_ends(hold) {
            // Ask again when the hold runs out, so removal is not late by a whole back-off.
            Some(end) => delay.min(end.saturating_duration_since(now).max(t.min_ttl)),
            None => delay,
        };
        self.next_refresh = Some(now + delay);
        delay
    }

    fn hold_ends(&self, hold: Duration) -> Option<Instant> {
        let addrs = self.a.values().chain(self.aaaa.values());
        addrs
            .filter_map(|h| h.hold_ends(hold))
            .chain(self.srv.hold_ends(hold))
            .min()
    }

    fn min_ttl(&self) -> Option<u32> {
        let addrs = self.a.values().chain(self.aaaa.values());
        let srv = (!self.srv.records.is_empty()).then_some(self.srv.ttl);
        addrs
            .filter(|h| !h.records.is_empty())
            .map(|h| h.ttl)
            .chain(srv)
            .min()
    }

    fn addresses_of(&self, name: &str) -> impl Iterator<Item = IpAddr> + '_ {
        let of = |m: &HashMap<String, Held<IpAddr>>| {
            m.get(name).map(|h| h.records.clone()).unwrap_or_default()
        };
        of(&self.a).into_iter().chain(of(&self.aaaa))
    }

    fn host_addresses(&self, port: u16) -> Vec<Resolved> {
        let mut out: Vec<Resolved> = Vec::new();
        for name in self.a.keys().chain(self.aaaa.keys()) {
            for ip in self.addresses_of(name) {
                push_unique(
                    &mut out,
                    Resolved {
                        address: SocketAddr::new(ip, port),
                        weight: None,
                        rank: 0,
                    },
                );
            }
        }
        out.sort_by_key(|r| r.address);
        out
    }

    fn srv_addresses(&self) -> Vec<Resolved> {
        let mut records = self.srv.records.clone();
        records
            .sort_by(|x, y| (x.priority, &x.target, x.port).cmp(&(y.priority, &y.target, y.port)));
        let mut priorities: Vec<u16> = records.iter().map(|r| r.priority).collect();
        priorities.dedup();
        let max_weight = records.iter().map(|r| r.weight).max().unwrap_or(0);
        let mut out = Vec::new();
        for r in records.iter().filter(|r| !r.target.is_empty()) {
            let rank = priorities
                .iter()
                .position(|p| *p == r.priority)
                .unwrap_or(0);
            let weight = srv_weight(r.weight, max_weight);
            for ip in self.addresses_of(&r.target) {
                let address = SocketAddr::new(ip, r.port);
                push_unique(
                    &mut out,
                    Resolved {
                        address,
                        weight: Some(weight),
                        rank: rank as u32,
                    },
                );
            }
        }
        out
    }
}

/// The first of two records for one address wins (the lower priority, as SRV orders them).
fn push_unique(out: &mut Vec<Resolved>, r: Resolved) {
    if !out.iter().any(|o| o.address == r.address) {
        out.push(r);
    }
}

/// An SRV weight (0-65535) as a backend weight (1-1000): as is up to 1000, scaled down
/// proportionally when the answer has larger ones. Weight 0 counts as 1: RFC 2782 gives it
/// "a very small chance", and a backend weight of 0 would mean none.
pub fn srv_weight(weight: u16, max_in_answer: u16) -> u32 {
    let w = u32::from(weight);
    let max = u32::from(max_in_answer);
    if max <= 1000 {
        w.max(1)
    } else {
        ((w * 1000 + max / 2) / max).max(1)
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
