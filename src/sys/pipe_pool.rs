//! A bounded pool of splice pipes, cached per worker thread, that remembers when the kernel
//! refuses one.
//!
//! Every splice burst borrows a pipe and gives it back when its source would block, so pipes
//! change hands many times a second. Each worker thread therefore keeps its own short list of
//! empty pipes (like the copy buffers of `proxy/buffers.rs`): worker runtimes are
//! single-threaded, so borrowing and returning one takes no lock and touches no shared cache
//! line. What is shared is only what must be: one atomic count of the pipes that exist
//! (in use or cached, on any thread), kept under `max_open` because each pipe costs two
//! descriptors; the counters that metrics read; and the back-off below.
//!
//! The kernel may refuse a pipe: the process or system is out of descriptors (EMFILE,
//! ENFILE), or an unprivileged user holds more pipe pages than `fs.pipe-user-pages-soft`, so
//! new pipes come out at two pages and `F_SETPIPE_SZ` is refused ([`PipeError::Small`]).
//! Retrying on every burst would pay `pipe2`, two `fcntl`s and two `close`s each time only to
//! copy anyway, so a refusal is remembered for [`BACKOFF`]: meanwhile no pipe is made and
//! bursts copy through a buffer (cached pipes are still used). Nothing here blocks.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::Ordering::{AcqRel, Relaxed};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::time::{Duration, Instant};

use super::pipe::{Pipe, PipeError};

/// How long a refusal by the kernel keeps the pool from asking again.
pub const BACKOFF: Duration = Duration::from_secs(1);

/// Why a pipe the pool tried to make was refused (label `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// EMFILE or ENFILE.
    Descriptors,
    /// The per-user pipe quota: the kernel granted a pipe too small to be worth splicing.
    Quota,
    /// Anything else (ENOMEM, ...).
    Error,
}

/// Why a burst that would have spliced copied instead (label `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// `max_open` pipes exist already.
    Limit,
    /// The kernel refused the pipe made for this burst.
    Refused,
    /// A refusal less than [`BACKOFF`] ago: no pipe was asked for.
    Backoff,
}

impl Refusal {
    pub const ALL: [Refusal; 3] = [Refusal::Descriptors, Refusal::Quota, Refusal::Error];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::Descriptors => "descriptors",
            Refusal::Quota => "quota",
            Refusal::Error => "error",
        }
    }

    fn of(e: &PipeError) -> Refusal {
        match e {
            PipeError::Descriptors(_) => Refusal::Descriptors,
            PipeError::Small(_) => Refusal::Quota,
            PipeError::Other(_) => Refusal::Error,
        }
    }
}

impl Fallback {
    pub const ALL: [Fallback; 3] = [Fallback::Limit, Fallback::Refused, Fallback::Backoff];

    pub fn label(self) -> &'static str {
        match self {
            Fallback::Limit => "limit",
            Fallback::Refused => "refused",
            Fallback::Backoff => "backoff",
        }
    }
}

/// What the pool has done so far, for metrics and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipeStats {
    /// Pipes that exist now, in use or cached.
    pub open: usize,
    /// Pipes made since start.
    pub created: u64,
    /// Pipes the kernel refused, by [`Refusal`] (in [`Refusal::ALL`] order).
    pub refused: [u64; 3],
    /// Bursts that copied for want of a pipe, by [`Fallback`] (in [`Fallback::ALL`] order).
    pub fallbacks: [u64; 3],
}

/// The pipes of one process: at most `max_open` exist at once, at most `max_idle` empty ones
/// are cached per thread.
#[derive(Debug)]
pub struct PipePool {
    shared: Arc<Shared>,
}

/// What every thread's cache and the pool share.
#[derive(Debug)]
struct Shared {
    open: AtomicUsize,
    max_open: usize,
    max_idle: usize,
    pipe_size: usize,
    /// The end of the current back-off, in nanoseconds after `epoch`; 0 when none was ever
    /// set (so the clock is read only after a refusal).
    refused_until: AtomicU64,
    epoch: Instant,
    created: AtomicU64,
    refused: [AtomicU64; 3],
    fallbacks: [AtomicU64; 3],
    make: fn(usize) -> Result<Pipe, PipeError>,
}

/// Set after the first refusal was logged at warn; later ones go to debug (metrics count
/// every one).
static WARNED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static CACHE: RefCell<Cache> = const {
        RefCell::new(Cache { owner: None, pipes: Vec::new() })
    };
}

/// One thread's empty pipes, all from the pool `owner`. A thread serves one pool in
/// practice; should another pool return a pipe here, the cache changes hands and the first
/// pool's pipes are closed and uncounted.
struct Cache {
    owner: Option<Arc<Shared>>,
    pipes: Vec<Pipe>,
}

impl Cache {
    fn pop_for(&mut self, pool: &Arc<Shared>) -> Option<Pipe> {
        let mine = self.owner.as_ref().is_some_and(|o| Arc::ptr_eq(o, pool));
        if mine { self.pipes.pop() } else { None }
    }

    /// Keeps `pipe` (empty) if there is room; hands it back otherwise.
    fn keep(&mut self, pool: &Arc<Shared>, pipe: Pipe) -> Result<(), Pipe> {
        if !self.owner.as_ref().is_some_and(|o| Arc::ptr_eq(o, pool)) {
            self.release();
            self.owner = Some(pool.clone());
        }
        if self.pipes.len() >= pool.max_idle {
            return Err(pipe);
        }
        self.pipes.push(pipe);
        Ok(())
    }

    /// Closes every cached pipe and takes it off its pool's count.
    fn release(&mut self) {
        if let Some(owner) = self.owner.take() {
            let n = self.pipes.len();
            self.pipes.clear();
            owner.open.fetch_sub(n, AcqRel);
        }
    }
}

impl Drop for Cache {
    // A worker thread that ends closes its cached pipes.
    fn drop(&mut self) {
        self.release();
    }
}

impl PipePool {
    /// A pool of pipes of `pipe_size` bytes (as the kernel grants): at most `max_open` in
    /// existence, at most `max_idle` empty ones kept by each thread.
    pub fn new(max_open: usize, max_idle: usize, pipe_size: usize) -> PipePool {
        PipePool::with_maker(max_open, max_idle, pipe_size, Pipe::new)
    }

    fn with_maker(
        max_open: usize,
        max_idle: usize,
        pipe_size: usize,
        make: fn(usize) -> Result<Pipe, PipeError>,
    ) -> PipePool {
        PipePool {
            shared: Arc::new(Shared {
                open: AtomicUsize::new(0),
                max_open,
                max_idle,
                pipe_size,
                refused_until: AtomicU64::new(0),
                epoch: Instant::now(),
                created: AtomicU64::new(0),
                refused: Default::default(),
                fallbacks: Default::default(),
                make,
            }),
        }
    }

    /// Pipes that exist right now, in use or cached.
    pub fn open(&self) -> usize {
        self.shared.open.load(Relaxed)
    }

    pub fn stats(&self) -> PipeStats {
        let s = &self.shared;
        PipeStats {
            open: s.open.load(Relaxed),
            created: s.created.load(Relaxed),
            refused: s.refused.each_ref().map(|n| n.load(Relaxed)),
            fallbacks: s.fallbacks.each_ref().map(|n| n.load(Relaxed)),
        }
    }

    /// An empty pipe, or `None` when none can be had now (at the bound, refused, or backing
    /// off): the caller then copies through a buffer. The pipe goes back when the guard is
    /// dropped, however its user ends (a task cancelled mid-transfer included).
    pub fn take(&self) -> Option<PooledPipe<'_>> {
        self.take_with(Instant::now)
    }

    /// [`PipePool::take`] with the clock passed in; it is read only while a refusal is
    /// remembered or when one happens.
    fn take_with(&self, now: impl Fn() -> Instant) -> Option<PooledPipe<'_>> {
        let s = &self.shared;
        let cached = match s.max_idle {
            0 => None,
            _ => CACHE
                .try_with(|c| c.try_borrow_mut().ok()?.pop_for(s))
                .ok()
                .flatten(),
        };
        let pipe = match cached {
            Some(pipe) => pipe,
            None => self.make(now)?,
        };
        Some(PooledPipe {
            pipe: Some(pipe),
            pool: self,
        })
    }

    /// Takes in a pipe made elsewhere (handed over by a binary upgrade, bytes and all): it
    /// counts as open, even past the bound, and comes back to the pool like any other.
    pub fn adopt(&self, pipe: Pipe) -> PooledPipe<'_> {
        self.shared.open.fetch_add(1, AcqRel);
        PooledPipe {
            pipe: Some(pipe),
            pool: self,
        }
    }

    fn make(&self, now: impl Fn() -> Instant) -> Option<Pipe> {
        let s = &self.shared;
        let until = s.refused_until.load(Relaxed);
        if until != 0 && s.nanos(now()) < until {
            return self.fall_back(Fallback::Backoff);
        }
        let reserved = s
            .open
            .fetch_update(AcqRel, Relaxed, |n| (n < s.max_open).then_some(n + 1))
            .is_ok();
        if !reserved {
            return self.fall_back(Fallback::Limit);
        }
        match (s.make)(s.pipe_size) {
            Ok(pipe) => {
                s.created.fetch_add(1, Relaxed);
                Some(pipe)
            }
            Err(e) => {
                s.open.fetch_sub(1, AcqRel);
                let why = Refusal::of(&e);
                s.refused[why as usize].fetch_add(1, Relaxed);
                let end = s.nanos(now() + BACKOFF).max(1);
                s.refused_until.store(end, Relaxed);
                log_refusal(&e);
                self.fall_back(Fallback::Refused)
            }
        }
    }

    fn fall_back(&self, why: Fallback) -> Option<Pipe> {
        self.shared.fallbacks[why as usize].fetch_add(1, Relaxed);
        None
    }

    /// Returns a pipe. One that still holds bytes is closed, never reused: its bytes belong
    /// to a connection that is gone.
    fn give_back(&self, pipe: Pipe) {
        let s = &self.shared;
        let mut pipe = Some(pipe);
        if pipe.as_ref().is_some_and(|p| p.held() == 0) && s.max_idle > 0 {
            // During thread teardown the cache may be gone; the pipe is then closed below.
            let _ = CACHE.try_with(|c| {
                if let (Ok(mut c), Some(p)) = (c.try_borrow_mut(), pipe.take()) {
                    pipe = c.keep(s, p).err();
                }
            });
        }
        if let Some(pipe) = pipe {
            drop(pipe);
            s.open.fetch_sub(1, AcqRel);
        }
    }
}

impl Shared {
    fn nanos(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch);
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    }
}

fn log_refusal(e: &PipeError) {
    if !WARNED.swap(true, Relaxed) {
        tracing::warn!(error = %e, backoff = ?BACKOFF, "the kernel refused a splice pipe; bursts copy instead until one can be had (see fs.pipe-user-pages-soft and the open-file limit)");
    } else {
        tracing::debug!(error = %e, backoff = ?BACKOFF, "the kernel refused a splice pipe");
    }
}

/// A pipe on loan from a [`PipePool`]; dropping it gives the pipe back.
#[derive(Debug)]
pub struct PooledPipe<'a> {
    pipe: Option<Pipe>,
    pool: &'a PipePool,
}

impl std::ops::Deref for PooledPipe<'_> {
    type Target = Pipe;
    fn deref(&self) -> &Pipe {
        // The Option is Some from construction until drop.
        self.pipe
            .as_ref()
            .unwrap_or_else(|| unreachable!("pooled pipe used after drop"))
    }
}

impl std::ops::DerefMut for PooledPipe<'_> {
    fn deref_mut(&mut self) -> &mut Pipe {
        self.pipe
            .as_mut()
            .unwrap_or_else(|| unreachable!("pooled pipe used after drop"))
    }
}

impl PooledPipe<'_> {
    /// The pipe itself, out of the pool (it no longer counts as open): a binary upgrade
    /// hands it over with the bytes it holds.
    pub fn detach(mut self) -> Option<Pipe> {
        let pipe = self.pipe.take()?;
        self.pool.shared.open.fetch_sub(1, AcqRel);
        Some(pipe)
    }
}

impl Drop for PooledPipe<'_> {
    fn drop(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            self.pool.give_back(pipe);
        }
    }
}

#[cfg(test)]
#[path = "pipe_pool_tests.rs"]
mod tests;
