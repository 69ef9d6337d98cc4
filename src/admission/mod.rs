//! Admission: who may open a connection, decided right after accept and before anything
//! else is spent on it. In order: the runtime deny list (admin API), the configured `deny`
//! and `allow` lists, `exempt` sources, then the per-source rate and concurrency limits.
//!
//! Pure: no I/O and no config types; the clock is passed in (`admit_at`, `explain`), so the
//! arithmetic is tested deterministically. The per-source table is the only shared mutable
//! state, sharded so workers do not queue on one lock.

mod carry;
pub mod cidr;
pub mod gcra;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod move_model_tests;
#[cfg(test)]
mod move_tests;
#[cfg(test)]
mod move_thread_tests;
pub mod prefix;
mod reshape;
mod shard;
pub mod sources;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use carry::{Debts, Seeded, rate_from_parts, rate_parts};
pub use cidr::Cidr;
pub use gcra::Rate;
pub use prefix::PrefixSet;
pub use reshape::Carried;
pub use shard::LOG_EVERY_SECS;
pub use sources::{Shape, SourceTable, Ticket};

use shard::Outcome;

/// Why a connection was refused; the `reason` label of
/// `tollgate_listener_connections_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A deny list matched, or an allow list did not.
    Acl,
    /// The source's `connection_rate` (with `burst`) is spent.
    RateLimit,
    /// The source has `max_connections` open already.
    SourceLimit,
    /// The tracked-sources table is full of sources that cannot be forgotten yet.
    SourceTableFull,
}

impl Reason {
    pub const ALL: [Reason; 4] = [
        Reason::Acl,
        Reason::RateLimit,
        Reason::SourceLimit,
        Reason::SourceTableFull,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reason::Acl => "acl",
            Reason::RateLimit => "rate_limit",
            Reason::SourceLimit => "source_limit",
            Reason::SourceTableFull => "source_table_full",
        }
    }
}

/// The rule that decided, for logs and the explain endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    RuntimeDeny(Cidr),
    Deny(Cidr),
    /// An allow list is set and no block of it holds the source.
    NotAllowed,
    Exempt(Cidr),
    ConnectionRate,
    MaxConnections,
    TableFull,
    /// Within its per-source limits.
    WithinLimits,
    /// No rule refuses it and no per-source limit applies.
    Open,
}

impl Rule {
    /// The `kind` the explain endpoint reports.
    pub fn kind(self) -> &'static str {
        match self {
            Rule::RuntimeDeny(_) => "runtime_deny",
            Rule::Deny(_) => "deny",
            Rule::NotAllowed => "not_in_allow",
            Rule::Exempt(_) => "exempt",
            Rule::ConnectionRate => "connection_rate",
            Rule::MaxConnections => "max_connections",
            Rule::TableFull => "max_tracked_sources",
            Rule::WithinLimits => "within_limits",
            Rule::Open => "open",
        }
    }

    /// The CIDR block of the rule, for the rules that have one.
    pub fn cidr(self) -> Option<Cidr> {
        match self {
            Rule::RuntimeDeny(c) | Rule::Deny(c) | Rule::Exempt(c) => Some(c),
            _ => None,
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.cidr() {
            Some(c) => write!(f, "{} {c}", self.kind()),
            None => f.write_str(self.kind()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub rule: Rule,
    /// True for the first refusal of this source in `LOG_EVERY_SECS` (always true for ACL
    /// refusals, which keep no per-source state: callers throttle those globally).
    pub log: bool,
}

/// Per-source limits and the table that tracks them.
#[derive(Debug)]
pub struct PerSource {
    pub rate: Option<Rate>,
    pub max_connections: Option<u32>,
    pub exempt: PrefixSet,
    pub table: Arc<SourceTable>,
}

impl PerSource {
    fn admit(&self, ip: IpAddr, now: Instant) -> Result<Option<Ticket>, Refusal> {
        if self.exempt.contains(ip) {
            return Ok(None);
        }
        match self.table.admit(ip, now, self.max_connections) {
            Ok(ticket) => Ok(Some(ticket)),
            Err(outcome) => Err(refusal(outcome)),
        }
    }
}

/// A listener's admission policy as of one snapshot.
#[derive(Debug, Default)]
pub struct Policy {
    pub runtime_deny: PrefixSet,
    pub deny: PrefixSet,
    /// Empty: everyone not denied.
    pub allow: PrefixSet,
    pub per_source: Option<PerSource>,
}

impl Policy {
    /// Whether anything here can refuse a connection (the accept path skips it otherwise).
    pub fn is_open(&self) -> bool {
        self.runtime_deny.is_empty()
            && self.deny.is_empty()
            && self.allow.is_empty()
            && self.per_source.is_none()
    }

    /// The ACL verdict: `Ok(allow block)` or the refusal.
    fn acl(&self, ip: IpAddr) -> Result<Option<Cidr>, Refusal> {
        let refuse = |rule| Refusal {
            reason: Reason::Acl,
            rule,
            log: true,
        };
        if let Some(c) = self.runtime_deny.matching(ip) {
            return Err(refuse(Rule::RuntimeDeny(c)));
        }
        if let Some(c) = self.deny.matching(ip) {
            return Err(refuse(Rule::Deny(c)));
        }
        if self.allow.is_empty() {
            return Ok(None);
        }
        match self.allow.matching(ip) {
            Some(c) => Ok(Some(c)),
            None => Err(refuse(Rule::NotAllowed)),
        }
    }

    /// Decides on a new connection from `ip` now. The clock is read only when a per-source
    /// limit needs it.
    #[inline]
    pub fn admit(&self, ip: IpAddr) -> Result<Option<Ticket>, Refusal> {
        if self.is_open() {
            return Ok(None);
        }
        self.acl(ip)?;
        match &self.per_source {
            None => Ok(None),
            Some(ps) => ps.admit(ip, Instant::now()),
        }
    }

    /// The ticket of a connection from `ip` admitted elsewhere and served here now (a binary
    /// upgrade handed it over): it counts against its source's `max_connections` like one
    /// admitted here, but nothing is checked, as it is open already.
    pub fn readmit(&self, ip: IpAddr) -> Option<Ticket> {
        let ps = self.per_source.as_ref()?;
        (!ps.exempt.contains(ip)).then(|| ps.table.readmit(ip))
    }

    /// Decides on a new connection from `ip` at `now`. An admitted connection limited per
    /// source gets a ticket: hold it while the connection is open.
    pub fn admit_at(&self, ip: IpAddr, now: Instant) -> Result<Option<Ticket>, Refusal> {
        self.acl(ip)?;
        match &self.per_source {
            None => Ok(None),
            Some(ps) => ps.admit(ip, now),
        }
    }

    /// Why `ip` would be admitted or refused at `now`, changing nothing.
    pub fn explain(&self, ip: IpAddr, now: Instant) -> Explanation {
        let allowed_by = match self.acl(ip) {
            Ok(c) => c,
            Err(r) => return Explanation::decided(Some(r), None, None),
        };
        let Some(ps) = &self.per_source else {
            return Explanation::decided(None, allowed_by, None);
        };
        if let Some(c) = ps.exempt.matching(ip) {
            let mut e = Explanation::decided(None, allowed_by, None);
            e.rule = Rule::Exempt(c);
            return e;
        }
        let (entry, t) = ps.table.peek(ip, now);
        let (tat, open) = entry.map_or((0, 0), |e| (e.tat, e.open));
        let outcome = if entry.is_none() && !ps.table.has_room(ip, now) {
            Some(Outcome::Full)
        } else if ps.max_connections.is_some_and(|m| open >= m) {
            Some(Outcome::OverConnections { log: false })
        } else if ps.rate.is_some_and(|r| r.conform(tat, t).is_none()) {
            Some(Outcome::RateLimited { log: false })
        } else {
            None
        };
        let view = SourceView {
            group: ps.table.group(ip),
            tracked: entry.is_some(),
            rate: ps.rate,
            tokens: ps.rate.map(|r| r.tokens(tat, t)),
            next_token_in: ps.rate.map(|r| r.wait(tat, t)),
            open,
            max_connections: ps.max_connections,
            tracked_sources: ps.table.tracked(),
            max_tracked_sources: ps.table.shape().max_tracked,
        };
        Explanation::decided(outcome.map(refusal), allowed_by, Some(view))
    }
}

fn refusal(outcome: Outcome) -> Refusal {
    let (reason, rule, log) = match outcome {
        Outcome::RateLimited { log } => (Reason::RateLimit, Rule::ConnectionRate, log),
        Outcome::OverConnections { log } => (Reason::SourceLimit, Rule::MaxConnections, log),
        // No per-source state to throttle on: callers throttle these globally.
        Outcome::Full | Outcome::Admitted => (Reason::SourceTableFull, Rule::TableFull, true),
    };
    Refusal { reason, rule, log }
}

/// The answer of [`Policy::explain`].
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub admitted: bool,
    pub reason: Option<Reason>,
    pub rule: Rule,
    /// The allow-list block that lets the source in, when an allow list is set.
    pub allowed_by: Option<Cidr>,
    /// Per-source state, when per-source limits apply to this source.
    pub source: Option<SourceView>,
}

impl Explanation {
    fn decided(
        refused: Option<Refusal>,
        allowed_by: Option<Cidr>,
        source: Option<SourceView>,
    ) -> Explanation {
        let rule = match (&refused, &source) {
            (Some(r), _) => r.rule,
            (None, Some(_)) => Rule::WithinLimits,
            (None, None) => Rule::Open,
        };
        Explanation {
            admitted: refused.is_none(),
            reason: refused.map(|r| r.reason),
            rule,
            allowed_by,
            source,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SourceView {
    /// The group the source is limited as (its address masked to the configured prefix).
    pub group: Cidr,
    pub tracked: bool,
    pub rate: Option<Rate>,
    /// Connections the rate would admit now (fractional), and the wait for the next one.
    pub tokens: Option<f64>,
    pub next_token_in: Option<Duration>,
    pub open: u32,
    pub max_connections: Option<u32>,
    pub tracked_sources: usize,
    pub max_tracked_sources: usize,
}
