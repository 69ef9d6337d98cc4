//! What the flow table promises, written the slow obvious way (a sorted map of sessions and
//! linear scans), and a driver that feeds the table and the model the same events, decoded
//! from bytes, and panics at the first disagreement: which sessions exist, on which backend
//! with which handle, which ended when (idle, last reply, removal, reload), which new
//! sessions were refused at the cap, and that memory stays bounded.
//!
//! Test support, public only because the fuzz target (`fuzz/fuzz_targets/udp_flows.rs`) and
//! the corpus replay (`tests/fuzz_corpus.rs`) live outside the crate; the seeded simulation
//! in `flows_tests.rs` feeds it pseudo-random bytes. The data plane never calls it.
//!
//! The driver follows the shell's contract: `pop_expired(now)` until `None` before the events
//! of each `now`; a session is admitted only after `lookup` said `New`. Events: datagrams
//! from 6 clients (two share an IP, two are IPv6) to 3 local addresses, replies (to live and
//! to ended sessions), time steps (tiny, exactly around `idle`, many times `idle`), backends
//! going down and up, removals, `idle` and `max_sessions` changes, reload retains, inserts
//! without a lookup (duplicates, full table), and clocks read a little late. Each event is
//! in `model/events.rs`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;

use super::deadlines::SLACK;
use super::{FlowKey, FlowTable, Limits, SessionId};

mod events;

const CLIENTS: [&str; 6] = [
    "10.0.0.1:4000",
    "10.0.0.1:4001",
    "10.0.0.2:53000",
    "[fd00::7]:5353",
    "[fd00::8]:1",
    "203.0.113.9:65535",
];
const LOCALS: [&str; 3] = ["192.0.2.1:53", "192.0.2.2:53", "[2001:db8::1]:53"];
const BACKENDS: u8 = 4;
const IDLES: [u64; 5] = [1, 3, 10, 50, 1000];

/// How often each outcome happened, so a simulation can show it reached them all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub steps: u64,
    pub inserted: u64,
    pub live: u64,
    pub refused: u64,
    pub moved: u64,
    pub no_backend: u64,
    pub expired: u64,
    pub forwarded: u64,
    pub last_replies: u64,
    pub stale_ids: u64,
    pub removed: u64,
    pub retained_out: u64,
    pub exists: u64,
}

impl std::ops::AddAssign for Summary {
    fn add_assign(&mut self, o: Summary) {
        let fields = [
            (&mut self.steps, o.steps),
            (&mut self.inserted, o.inserted),
            (&mut self.live, o.live),
            (&mut self.refused, o.refused),
            (&mut self.moved, o.moved),
            (&mut self.no_backend, o.no_backend),
            (&mut self.expired, o.expired),
            (&mut self.forwarded, o.forwarded),
            (&mut self.last_replies, o.last_replies),
            (&mut self.stale_ids, o.stale_ids),
            (&mut self.removed, o.removed),
            (&mut self.retained_out, o.retained_out),
            (&mut self.exists, o.exists),
        ];
        for (mine, theirs) in fields {
            *mine += theirs;
        }
    }
}

/// Runs the events `data` encodes through the table and the model; panics where they differ.
pub fn check(data: &[u8]) -> Summary {
    let mut bytes = data.iter().copied();
    let (Some(a), Some(b)) = (bytes.next(), bytes.next()) else {
        return Summary::default();
    };
    let mut d = Driver::new(a, b);
    while d.step(&mut bytes).is_some() {
        d.agree();
        d.summary.steps += 1;
    }
    d.summary
}

/// A session as the model keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    backend: u8,
    handle: u64,
    created: u64,
    last: u64,
    replies: u32,
    requests: u32,
    responses: Option<NonZeroU32>,
}

struct Driver {
    table: FlowTable<u8, u64>,
    sessions: BTreeMap<FlowKey, Expected>,
    limits: Limits,
    now: u64,
    up: [bool; BACKENDS as usize],
    ids: BTreeMap<FlowKey, SessionId>,
    /// Ids of sessions that ended, most recent last (a few).
    ended: Vec<SessionId>,
    next_handle: u64,
    summary: Summary,
}

fn addr(text: &str) -> SocketAddr {
    text.parse()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

fn key(n: u8) -> FlowKey {
    let n = usize::from(n);
    FlowKey {
        client: addr(CLIENTS[n % CLIENTS.len()]),
        local: addr(LOCALS[n / CLIENTS.len() % LOCALS.len()]),
    }
}

impl Driver {
    fn new(a: u8, b: u8) -> Driver {
        let limits = Limits {
            idle: IDLES[usize::from(a) % IDLES.len()],
            max_sessions: usize::from(b % 14),
        };
        // Now and then start next to the end of time: deadlines must saturate, not wrap.
        let now = if a >= 240 { u64::MAX - 2000 } else { 1_000_000 };
        Driver {
            table: FlowTable::new(limits),
            sessions: BTreeMap::new(),
            limits,
            now,
            up: [true; BACKENDS as usize],
            ids: BTreeMap::new(),
            ended: Vec::new(),
            next_handle: 0,
            summary: Summary::default(),
        }
    }

    fn step(&mut self, bytes: &mut impl Iterator<Item = u8>) -> Option<()> {
        self.expire();
        let op = bytes.next()?;
        let arg = bytes.next()?;
        match op % 16 {
            0..=5 => self.datagram(arg, bytes.next()?),
            6..=8 => self.reply(arg),
            9 | 10 => self.advance(arg),
            11 => self.up[usize::from(arg % BACKENDS)] ^= true,
            12 => self.remove(arg),
            13 => self.reconfigure(arg),
            14 => self.retain(arg),
            _ => self.insert_directly(arg),
        }
        Some(())
    }

    fn deadline(&self, e: &Expected) -> u64 {
        e.last.saturating_add(self.limits.idle)
    }

    fn end(&mut self, key: &FlowKey, id: SessionId) {
        assert_eq!(
            self.ids.remove(key),
            Some(id),
            "{key:?}: the id it was given"
        );
        self.ended.push(id);
        if self.ended.len() > 16 {
            self.ended.remove(0);
        }
    }

    fn expire(&mut self) {
        let mut got = Vec::new();
        while let Some((id, s)) = self.table.pop_expired(self.now) {
            self.end(&s.key(), id);
            got.push((s.key(), s.handle));
        }
        let due: Vec<FlowKey> = (self.sessions.iter())
            .filter(|(_, e)| self.deadline(e) <= self.now)
            .map(|(k, _)| *k)
            .collect();
        let mut want = Vec::new();
        for k in due {
            if let Some(e) = self.sessions.remove(&k) {
                want.push((k, e.handle));
            }
        }
        got.sort();
        assert_eq!(got, want, "sessions expired at {}", self.now);
        self.summary.expired += got.len() as u64;
    }

    /// The first backend that is up, starting at `from`.
    fn pick(&self, from: u64) -> Option<u8> {
        (0..u64::from(BACKENDS))
            .map(|i| ((from + i) % u64::from(BACKENDS)) as u8)
            .find(|&b| self.up[usize::from(b)])
    }

    fn handle(&mut self) -> u64 {
        self.next_handle += 1;
        self.next_handle
    }

    /// The table and the model hold the same sessions, and the table stays within bounds.
    fn agree(&self) {
        assert_eq!(self.table.len(), self.sessions.len(), "session count");
        for (id, s) in self.table.iter() {
            let Some(e) = self.sessions.get(&s.key()) else {
                panic!("{:?}: in the table only", s.key());
            };
            let got = (
                s.backend,
                s.handle,
                s.created(),
                s.last_active(),
                s.replies(),
            );
            assert_eq!(got, (e.backend, e.handle, e.created, e.last, e.replies));
            assert_eq!(s.responses(), e.responses);
            assert_eq!(s.requests(), e.requests, "{:?}: requests", s.key());
            assert_eq!(self.ids.get(&s.key()), Some(&id));
            assert_eq!(self.table.find(&s.key()), Some(id));
        }
        for id in &self.ended {
            assert!(
                self.table.get(*id).is_none(),
                "an ended id still finds a session"
            );
        }
        let earliest = self.sessions.values().map(|e| self.deadline(e)).min();
        match (self.table.next_deadline(), earliest) {
            (Some(d), Some(e)) => assert!(d <= e, "next deadline {d} after the first real one {e}"),
            (None, None) => {}
            (d, e) => panic!("next deadline {d:?}, earliest real one {e:?}"),
        }
        let bound = self.table.len() * 2 + SLACK;
        assert!(
            self.table.deadlines_on_file() <= bound,
            "deadline heap unbounded"
        );
    }
}
