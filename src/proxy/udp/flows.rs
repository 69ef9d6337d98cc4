//! The session (flow) table of one UDP listener on one worker: which client, writing to
//! which of our addresses, is served by which backend through which upstream socket, and
//! when each session ends. Pure bookkeeping: no I/O, no clock, no randomness; the I/O shell
//! passes the time in, asks, and does what the answer says.
//!
//! Time is a `u64` of milliseconds on the shell's monotonic clock. Integers make deadlines
//! plain saturating sums (an `Instant` plus a huge `Duration` panics), keep a heap entry at
//! 24 bytes, let a test or the fuzzer start anywhere and jump anywhere, and can cross a
//! binary upgrade as a number; session idle times are configured in milliseconds at best.
//!
//! The life of a session, as the shell sees it:
//!
//! - every datagram from a client: [`FlowTable::lookup`] refreshes its session and says
//!   [`Lookup::Live`] (send on its upstream), [`Lookup::Moved`] (its backend may no longer
//!   be used: pick another, open a socket, [`FlowTable::repick`]; the key and id stay),
//!   [`Lookup::New`] (run admission, pick, open, [`FlowTable::insert`]) or
//!   [`Lookup::Refused`] (`max_sessions` reached: drop and count);
//! - every reply from upstream: [`FlowTable::reply`] counts it and says whether the
//!   session lives on or that was its last one (every client datagram had its `responses`
//!   replies);
//! - [`FlowTable::pop_expired`] before handling the events of each `now`, and when
//!   [`FlowTable::next_deadline`] comes: a session ends there, and only there, once `idle`
//!   has passed since its last datagram either way, and is never ended by a deadline it
//!   has since moved past (`deadlines.rs`);
//! - a reload keeps the sessions whose listener and backend remain ([`FlowTable::retain`]).
//!
//! Every session that leaves the table is handed back whole, so the shell closes its socket
//! and releases its admission ticket (both live in the handle `H`) in one place. Memory is
//! bounded: at most `max_sessions` sessions, slots reused, stale deadlines compacted.

use std::collections::HashMap;
use std::num::NonZeroU32;

use super::deadlines::{Deadlines, Entry};
use super::session::{FlowKey, Session, SessionId};

/// Slots and map entries reserved up front, so a table of a busy listener does not grow
/// its way up from nothing, and an idle one with a large `max_sessions` costs little.
const PRESIZE: usize = 1024;

/// The limits of one listener's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Milliseconds without a datagram either way after which a session ends.
    pub idle: u64,
    /// Sessions at most (`udp.max_sessions`, this worker's share).
    pub max_sessions: usize,
}

/// Why a new session was refused; the `reason` label of
/// `tollgate_udp_sessions_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    MaxSessions,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::MaxSessions => "max_sessions",
        }
    }
}

/// What to do with a client's datagram.
#[derive(Debug)]
pub enum Lookup<'a, B, H> {
    /// Its session: send on `session.handle`.
    Live(SessionId, &'a mut Session<B, H>),
    /// Its session's backend may no longer be used: pick another and [`FlowTable::repick`]
    /// (or [`FlowTable::remove`] when none is left).
    Moved(SessionId),
    /// No session: admit, pick, [`FlowTable::insert`].
    New,
    /// No session and no room for one: drop the datagram.
    Refused(Refusal),
}

/// What to do with a reply from upstream.
#[derive(Debug)]
pub enum Reply<'a, B, H> {
    /// Forward it to `key().client` from `key().local`.
    Forward(&'a Session<B, H>),
    /// Forward it; that was the session's last reply: it has left the table.
    Last(Session<B, H>),
    /// The session has ended: drop it.
    Gone,
}

/// Why [`FlowTable::insert`] did not insert; what it was given comes back.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejected<B, H> {
    pub why: InsertError,
    pub backend: B,
    pub handle: H,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    Refused(Refusal),
    /// The key has a session already.
    Exists(SessionId),
}

#[derive(Debug)]
struct Slot<B, H> {
    serial: u64,
    session: Session<B, H>,
}

/// The sessions of one listener on one worker. `B` names a backend, `H` is the shell's
/// per-session state; the table looks into neither.
#[derive(Debug)]
pub struct FlowTable<B, H> {
    limits: Limits,
    map: HashMap<FlowKey, u32>,
    slots: Vec<Option<Slot<B, H>>>,
    free: Vec<u32>,
    deadlines: Deadlines,
    next_serial: u64,
}

impl<B, H> FlowTable<B, H> {
    pub fn new(limits: Limits) -> FlowTable<B, H> {
        let limits = clamp(limits);
        let n = limits.max_sessions.min(PRESIZE);
        FlowTable {
            limits,
            map: HashMap::with_capacity(n),
            slots: Vec::with_capacity(n),
            free: Vec::new(),
            deadlines: Deadlines::with_capacity(n),
            next_serial: 0,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// New limits (a reload). Sessions above a lowered `max_sessions` stay until they end; a
    /// shorter `idle` applies to every session from its last datagram.
    pub fn set_limits(&mut self, limits: Limits) {
        let limits = clamp(limits);
        let shorter = limits.idle < self.limits.idle;
        self.limits = limits;
        if shorter {
            // Entries on file may now lie past their sessions' real deadlines.
            self.rebuild_deadlines();
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The session of a client's datagram at `now`, refreshed (its idle time starts again);
    /// `usable` says whether its backend may still take it.
    pub fn lookup(
        &mut self,
        key: &FlowKey,
        now: u64,
        usable: impl FnOnce(&B) -> bool,
    ) -> Lookup<'_, B, H> {
        let Some(&slot) = self.map.get(key) else {
            return if self.has_room() {
                Lookup::New
            } else {
                Lookup::Refused(Refusal::MaxSessions)
            };
        };
        let Some(Some(s)) = self.slots.get_mut(slot as usize) else {
            return Lookup::New;
        };
        let id = SessionId {
            slot,
            serial: s.serial,
        };
        s.session.touch(now);
        s.session.requests = s.session.requests.saturating_add(1);
        if usable(&s.session.backend) {
            Lookup::Live(id, &mut s.session)
        } else {
            Lookup::Moved(id)
        }
    }

    /// Inserts a session admitted at `now`: its first datagram counts as activity.
    pub fn insert(
        &mut self,
        key: FlowKey,
        backend: B,
        handle: H,
        responses: Option<NonZeroU32>,
        now: u64,
    ) -> Result<SessionId, Rejected<B, H>> {
        let why = match self.find(&key) {
            Some(id) => Some(InsertError::Exists(id)),
            None if !self.has_room() => Some(InsertError::Refused(Refusal::MaxSessions)),
            None => None,
        };
        if let Some(why) = why {
            return Err(Rejected {
                why,
                backend,
                handle,
            });
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        let session = Session::new(key, backend, handle, responses, now);
        let deadline = session.deadline(self.limits.idle);
        let filled = Some(Slot { serial, session });
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = filled;
                slot
            }
            None => {
                // Below u32::MAX: the table never holds more than max_sessions (clamped).
                let slot = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                self.slots.push(filled);
                slot
            }
        };
        self.map.insert(key, slot);
        self.deadlines.push(Entry {
            deadline,
            serial,
            slot,
        });
        Ok(SessionId { slot, serial })
    }

    /// Moves a session to another backend and upstream handle, keeping its key, id, age and
    /// reply count; returns the old pair to close. `Err` gives the new pair back when the
    /// session has ended meanwhile.
    pub fn repick(&mut self, id: SessionId, backend: B, handle: H) -> Result<(B, H), (B, H)> {
        match self.get_mut(id) {
            Some(s) => Ok((
                std::mem::replace(&mut s.backend, backend),
                std::mem::replace(&mut s.handle, handle),
            )),
            None => Err((backend, handle)),
        }
    }

    /// Counts a reply from upstream at `now` (it refreshes the session too).
    pub fn reply(&mut self, id: SessionId, now: u64) -> Reply<'_, B, H> {
        let Some(s) = self.get_mut(id) else {
            return Reply::Gone;
        };
        s.touch(now);
        s.replies = s.replies.saturating_add(1);
        let last = s.answered();
        if last {
            return self.remove(id).map_or(Reply::Gone, Reply::Last);
        }
        match self.get(id) {
            Some(s) => Reply::Forward(s),
            None => Reply::Gone,
        }
    }

    /// Ends a session now (no backend left for it, its socket failed, shutdown).
    pub fn remove(&mut self, id: SessionId) -> Option<Session<B, H>> {
        self.get(id)?;
        let slot = self.slots.get_mut(id.slot as usize)?.take()?;
        self.map.remove(&slot.session.key);
        self.free.push(id.slot);
        if self.deadlines.bloated(self.map.len()) {
            self.rebuild_deadlines();
        }
        Some(slot.session)
    }

    /// The next session whose idle time has run out at `now`, taken out of the table; `None`
    /// once none is left. Call until `None` before handling the events of `now`: O(1) when
    /// nothing is due, and O(log n) per session that ended or was refreshed past its entry.
    pub fn pop_expired(&mut self, now: u64) -> Option<(SessionId, Session<B, H>)> {
        while let Some(entry) = self.deadlines.pop_due(now) {
            let id = SessionId {
                slot: entry.slot,
                serial: entry.serial,
            };
            let Some(deadline) = self.get(id).map(|s| s.deadline(self.limits.idle)) else {
                continue; // stale: that session has already ended
            };
            if deadline <= now {
                return self.remove(id).map(|s| (id, s));
            }
            // Refreshed since this entry was filed: file it at its real deadline.
            self.deadlines.push(Entry { deadline, ..entry });
        }
        None
    }

    /// When [`FlowTable::pop_expired`] may next have something to return (possibly earlier:
    /// a refreshed or ended session's old deadline); `None` with no session.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.earliest().filter(|_| !self.is_empty())
    }

    /// Keeps the sessions `keep` approves; returns the others, taken out (a reload that
    /// removed their listener address or backend).
    pub fn retain(
        &mut self,
        mut keep: impl FnMut(SessionId, &Session<B, H>) -> bool,
    ) -> Vec<(SessionId, Session<B, H>)> {
        let gone: Vec<SessionId> = self
            .iter()
            .filter(|(id, s)| !keep(*id, s))
            .map(|(id, _)| id)
            .collect();
        gone.into_iter()
            .filter_map(|id| self.remove(id).map(|s| (id, s)))
            .collect()
    }

    /// Every session, in slot order (a function of the events alone).
    pub fn iter(&self) -> impl Iterator<Item = (SessionId, &Session<B, H>)> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, slot)| {
            let slot = slot.as_ref()?;
            let id = SessionId {
                slot: u32::try_from(i).ok()?,
                serial: slot.serial,
            };
            Some((id, &slot.session))
        })
    }

    /// The session of `key`, without refreshing it.
    pub fn find(&self, key: &FlowKey) -> Option<SessionId> {
        let &slot = self.map.get(key)?;
        let serial = self.slots.get(slot as usize)?.as_ref()?.serial;
        Some(SessionId { slot, serial })
    }

    pub fn get(&self, id: SessionId) -> Option<&Session<B, H>> {
        match self.slots.get(id.slot as usize) {
            Some(Some(s)) if s.serial == id.serial => Some(&s.session),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, id: SessionId) -> Option<&mut Session<B, H>> {
        match self.slots.get_mut(id.slot as usize) {
            Some(Some(s)) if s.serial == id.serial => Some(&mut s.session),
            _ => None,
        }
    }

    /// Deadlines on file, stale ones included: at most twice the sessions plus a constant.
    #[doc(hidden)]
    pub fn deadlines_on_file(&self) -> usize {
        self.deadlines.len()
    }

    fn has_room(&self) -> bool {
        self.map.len() < self.limits.max_sessions
    }

    fn rebuild_deadlines(&mut self) {
        let idle = self.limits.idle;
        let entries = self.slots.iter().enumerate().filter_map(|(i, slot)| {
            let slot = slot.as_ref()?;
            Some(Entry {
                deadline: slot.session.deadline(idle),
                serial: slot.serial,
                slot: u32::try_from(i).ok()?,
            })
        });
        self.deadlines.rebuild(entries);
    }
}

/// Slots are numbered in `u32`.
fn clamp(limits: Limits) -> Limits {
    Limits {
        max_sessions: limits.max_sessions.min(u32::MAX as usize),
        ..limits
    }
}
