//! The events of the model's driver: each one runs on the table and the model and checks
//! that both answer the same (the table first, then what the model says it should have
//! answered). How the bytes choose them is in the parent's `step`.

use std::num::NonZeroU32;

use super::{BACKENDS, Driver, Expected, IDLES, key};
use crate::proxy::udp::{FlowKey, InsertError, Lookup, Refusal, Reply, SessionId};

impl Driver {
    pub(super) fn datagram(&mut self, which: u8, how: u8) {
        let key = key(which);
        // A clock read a little before the last expiry pass: it must not move anything back.
        let at = self.now.saturating_sub(u64::from(how >> 6 & 1) * 2);
        let up = self.up;
        let in_model = self.sessions.contains_key(&key);
        match self.table.lookup(&key, at, |b| up[usize::from(*b)]) {
            Lookup::Live(id, s) => {
                let Some(e) = self.sessions.get_mut(&key) else {
                    panic!("{key:?}: live in the table, absent from the model");
                };
                e.last = e.last.max(at);
                e.requests += 1;
                assert!(
                    up[usize::from(e.backend)],
                    "{key:?}: live on a down backend"
                );
                assert_eq!((s.backend, s.handle), (e.backend, e.handle), "{key:?}");
                assert_eq!(self.ids.get(&key), Some(&id), "{key:?}: id");
                self.summary.live += 1;
            }
            Lookup::Moved(id) => self.moved(key, id, at),
            Lookup::New => {
                assert!(!in_model, "{key:?}: has a session, the table says new");
                assert!(
                    self.sessions.len() < self.limits.max_sessions,
                    "new at the cap"
                );
                let admitted = how & 3 != 0;
                if let (true, Some(backend)) = (admitted, self.pick(self.next_handle)) {
                    let responses = NonZeroU32::new(u32::from(how >> 2 & 3));
                    self.admit(key, backend, responses, at);
                }
            }
            Lookup::Refused(Refusal::MaxSessions) => {
                assert!(!in_model, "{key:?}: has a session, refused as new");
                assert!(
                    self.sessions.len() >= self.limits.max_sessions,
                    "refused below the cap"
                );
                self.summary.refused += 1;
            }
        }
    }

    fn admit(&mut self, key: FlowKey, backend: u8, responses: Option<NonZeroU32>, at: u64) {
        let handle = self.handle();
        let Ok(id) = self.table.insert(key, backend, handle, responses, at) else {
            panic!("{key:?}: refused right after lookup said new");
        };
        let e = Expected {
            backend,
            handle,
            created: at,
            last: at,
            replies: 0,
            requests: 1,
            responses,
        };
        self.sessions.insert(key, e);
        self.ids.insert(key, id);
        self.summary.inserted += 1;
    }

    fn moved(&mut self, key: FlowKey, id: SessionId, at: u64) {
        let Some(e) = self.sessions.get(&key).cloned() else {
            panic!("{key:?}: moved in the table, absent from the model");
        };
        assert!(
            !self.up[usize::from(e.backend)],
            "{key:?}: moved off a backend that is up"
        );
        assert_eq!(self.ids.get(&key), Some(&id), "{key:?}: id");
        match self.pick(u64::from(e.backend) + 1) {
            Some(backend) => {
                let handle = self.handle();
                let old = self.table.repick(id, backend, handle);
                assert_eq!(old, Ok((e.backend, e.handle)), "{key:?}: repick");
                let last = e.last.max(at);
                let moved = Expected {
                    backend,
                    handle,
                    last,
                    requests: e.requests + 1,
                    ..e
                };
                self.sessions.insert(key, moved);
                self.summary.moved += 1;
            }
            None => {
                let gone = self.table.remove(id).map(|s| s.handle);
                assert_eq!(
                    gone,
                    Some(e.handle),
                    "{key:?}: removed for want of a backend"
                );
                self.sessions.remove(&key);
                self.end(&key, id);
                self.summary.no_backend += 1;
            }
        }
    }

    /// The `n`th session of the model, with its id, or (1 in 8) an id that has ended.
    fn target(&self, n: u8) -> Option<(Option<FlowKey>, SessionId)> {
        if n % 8 == 7 && !self.ended.is_empty() {
            return Some((None, self.ended[usize::from(n / 8) % self.ended.len()]));
        }
        let key = *self
            .sessions
            .keys()
            .nth(usize::from(n) % self.sessions.len().max(1))?;
        Some((Some(key), *self.ids.get(&key)?))
    }

    pub(super) fn reply(&mut self, n: u8) {
        let Some((key, id)) = self.target(n) else {
            return;
        };
        let now = self.now;
        let Some(key) = key else {
            assert!(
                matches!(self.table.reply(id, now), Reply::Gone),
                "a reply to an ended id"
            );
            self.summary.stale_ids += 1;
            return;
        };
        let Some(e) = self.sessions.get_mut(&key) else {
            return;
        };
        e.last = e.last.max(now);
        e.replies += 1;
        let last = e
            .responses
            .is_some_and(|r| u64::from(e.replies) >= u64::from(r.get()) * u64::from(e.requests));
        let want = (e.backend, e.handle, e.replies);
        match self.table.reply(id, now) {
            Reply::Forward(s) => {
                assert!(
                    !last,
                    "{key:?}: reply {} of {:?} kept it",
                    want.2, e.responses
                );
                assert_eq!((s.backend, s.handle, s.replies()), want, "{key:?}");
                assert_eq!(s.key(), key);
                self.summary.forwarded += 1;
            }
            Reply::Last(s) => {
                assert!(last, "{key:?}: ended at reply {}", want.2);
                assert_eq!((s.backend, s.handle, s.replies()), want, "{key:?}");
                self.sessions.remove(&key);
                self.end(&key, id);
                self.summary.last_replies += 1;
            }
            Reply::Gone => panic!("{key:?}: live in the model, gone from the table"),
        }
    }

    pub(super) fn advance(&mut self, how: u8) {
        let idle = self.limits.idle;
        let step = u64::from(how >> 2);
        let dt = match how % 4 {
            0 => 0,
            1 => step % 8,
            // Just before, at, and just after an idle period.
            2 => (idle + step % 3).saturating_sub(1),
            _ => idle.saturating_mul(step % 16),
        };
        self.now = self.now.saturating_add(dt);
    }

    pub(super) fn remove(&mut self, n: u8) {
        let Some((key, id)) = self.target(n) else {
            return;
        };
        let gone = self.table.remove(id).map(|s| (s.key(), s.handle));
        match key {
            None => assert_eq!(gone, None, "removed an ended id"),
            Some(key) => {
                let e = self.sessions.remove(&key).map(|e| (key, e.handle));
                assert_eq!(gone, e, "{key:?}: removed");
                self.end(&key, id);
                self.summary.removed += 1;
            }
        }
    }

    pub(super) fn reconfigure(&mut self, how: u8) {
        if how & 1 == 1 {
            self.limits.idle = IDLES[usize::from(how >> 1) % IDLES.len()];
        } else {
            self.limits.max_sessions = usize::from(how >> 1) % 14;
        }
        self.table.set_limits(self.limits);
        assert_eq!(self.table.limits(), self.limits);
    }

    /// A reload that removed one backend: its sessions leave the table.
    pub(super) fn retain(&mut self, backend: u8) {
        let backend = backend % BACKENDS;
        let gone = self.table.retain(|_, s| s.backend != backend);
        let mut got: Vec<(FlowKey, u64)> = Vec::new();
        for (id, s) in gone {
            self.end(&s.key(), id);
            got.push((s.key(), s.handle));
        }
        got.sort();
        let keys: Vec<FlowKey> = (self.sessions.iter())
            .filter(|(_, e)| e.backend == backend)
            .map(|(k, _)| *k)
            .collect();
        let want: Vec<(FlowKey, u64)> = (keys.into_iter())
            .filter_map(|k| self.sessions.remove(&k).map(|e| (k, e.handle)))
            .collect();
        assert_eq!(got, want, "retained out: sessions of backend {backend}");
        self.summary.retained_out += got.len() as u64;
    }

    /// An insert the shell did not look up first: a duplicate or a full table is refused.
    pub(super) fn insert_directly(&mut self, which: u8) {
        let key = key(which);
        let handle = self.handle();
        let result = self.table.insert(key, 0, handle, None, self.now);
        match (self.ids.get(&key), result) {
            (Some(&id), Err(r)) => {
                assert_eq!((r.why, r.handle), (InsertError::Exists(id), handle));
                self.summary.exists += 1;
            }
            (None, Err(r)) => {
                assert_eq!(r.why, InsertError::Refused(Refusal::MaxSessions));
                assert!(self.sessions.len() >= self.limits.max_sessions);
                self.summary.refused += 1;
            }
            (None, Ok(id)) => {
                assert!(self.sessions.len() < self.limits.max_sessions);
                let e = Expected {
                    backend: 0,
                    handle,
                    created: self.now,
                    last: self.now,
                    replies: 0,
                    requests: 1,
                    responses: None,
                };
                self.sessions.insert(key, e);
                self.ids.insert(key, id);
                self.summary.inserted += 1;
            }
            (Some(_), Ok(_)) => panic!("{key:?}: inserted twice"),
        }
    }
}
