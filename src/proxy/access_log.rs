//! The access log (`logging.access`): one structured line per TCP connection and per UDP
//! session when it ends, under the tracing target `tollgate::access` (JSON with
//! `--log-format json`). Off by default; when on, lines beyond `logging.access_rate` are
//! counted ([`AccessLog::suppressed`], `tollgate_access_log_lines_suppressed_total`), not
//! written, so a flood of short connections cannot turn into a flood of log I/O.
//!
//! Every line has the same fields: `protocol`, `listener`, `client` (the one a trusted
//! balancer's PROXY header named, when it did), `backend` (`-` when none was reached),
//! `to_backend` and `to_client` (bytes each way: for TCP delivered, for UDP sent, with
//! `*_datagrams` beside them),
//! `duration_ms`, `end` (why it ended) and `closed_by` (`client`, `backend` or `tollgate`).
//!
//! A TCP connection carries a [`TcpRecord`] from accept on: it is filled in as the
//! connection goes and written when dropped, so a connection whose task is dropped at the
//! drain deadline still gets its line (`end=shutdown`) with the bytes it moved (the
//! forwarding reports them through [`Tally`] however it ends). With the log off, the
//! record is an empty box pointer: nothing is allocated, timed or formatted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tracing::info;

use crate::admission::Rate;
use crate::state::Side;

/// The tracing target of access-log lines; the log filter always lets it through at
/// `info` unless the operator names it (`logging.rs`).
pub const TARGET: &str = "tollgate::access";

/// Whether lines are written, how many may be, and how many were not.
#[derive(Debug, Default)]
pub struct AccessLog {
    on: AtomicBool,
    /// `None`: no bound. Lines pass through a GCRA with a burst of one period's count:
    /// over any time `D`, at most `count + D·rate` lines are written.
    rate: ArcSwapOption<Rate>,
    /// The GCRA's theoretical arrival time, in nanoseconds on [`clock`].
    tat: AtomicU64,
    suppressed: AtomicU64,
}

impl AccessLog {
    /// Applies `logging` (at start and on every reload): `rate` is `(count, period)`.
    pub fn configure(&self, on: bool, rate: Option<(u64, Duration)>) {
        let rate = rate.map(|(count, period)| {
            let burst = u32::try_from(count.saturating_sub(1)).unwrap_or(u32::MAX);
            Arc::new(Rate::new(count, period, burst))
        });
        self.rate.store(rate);
        self.on.store(on, Ordering::Relaxed);
    }

    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Lines not written because `access_rate` was exceeded, since start.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }

    /// Whether one more line may be written now; counts it as suppressed when not.
    fn admit(&self) -> bool {
        let guard = self.rate.load();
        let Some(rate) = guard.as_deref() else {
            return true;
        };
        let now = clock();
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let Some(next) = rate.conform(tat, now) else {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                return false;
            };
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(seen) => tat = seen,
            }
        }
    }

    /// A record for a TCP connection from `client` just accepted on `listener`: empty
    /// (and free) when the log is off.
    pub fn tcp<'a>(&'a self, listener: &Arc<str>, client: SocketAddr) -> TcpRecord<'a> {
        if !self.is_on() {
            return TcpRecord(None);
        }
        TcpRecord(Some(Box::new(TcpLine {
            log: self,
            started: Instant::now(),
            listener: listener.clone(),
            client,
            backend: None,
            tally: Tally::default(),
            end: None,
            error: None,
        })))
    }

    /// The line of a TCP connection refused before it was served (ACL, limits): it moved
    /// nothing and took no time.
    pub fn refused(&self, listener: &str, client: SocketAddr, reason: &'static str) {
        if self.is_on() && self.admit() {
            info!(target: TARGET, protocol = "tcp", listener, %client, backend = "-", to_backend = 0u64, to_client = 0u64, duration_ms = 0.0, end = reason, closed_by = "tollgate", "tcp connection");
        }
    }

    /// The line of a UDP session that ended.
    pub fn udp(&self, line: &UdpLine<'_>) {
        if !(self.is_on() && self.admit()) {
            return;
        }
        let UdpLine {
            listener,
            client,
            backend,
            counts,
            duration_ms,
            end,
        } = line;
        let closed_by = match end {
            UdpEnd::Answered => "backend",
            _ => "tollgate",
        };
        info!(
            target: TARGET,
            protocol = "udp",
            listener,
            %client,
            %backend,
            to_backend = counts.to_backend_bytes,
            to_client = counts.to_client_bytes,
            to_backend_datagrams = counts.to_backend,
            to_client_datagrams = counts.to_client,
            duration_ms = *duration_ms as f64,
            end = end.label(),
            closed_by,
            "udp session"
        );
    }
}

/// Nanoseconds since the first call: the rate limiter's clock.
fn clock() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// What the forwarding of a TCP connection reports for its line, written as it ends
/// (dropped at the drain deadline included): bytes delivered each way, and which side
/// ended its direction first (its FIN reached tollgate first).
#[derive(Debug, Default)]
pub struct Tally {
    to_backend: AtomicU64,
    to_client: AtomicU64,
    /// 0: neither yet; 1: the client; 2: the backend.
    first_fin: AtomicU8,
}

impl Tally {
    pub fn report(&self, to_backend: u64, to_client: u64, first_fin: Option<Side>) {
        self.to_backend.store(to_backend, Ordering::Relaxed);
        self.to_client.store(to_client, Ordering::Relaxed);
        let fin = match first_fin {
            None => 0,
            Some(Side::Client) => 1,
            Some(Side::Backend) => 2,
        };
        self.first_fin.store(fin, Ordering::Relaxed);
    }

    fn first_fin(&self) -> &'static str {
        match self.first_fin.load(Ordering::Relaxed) {
            1 => "client",
            2 => "backend",
            _ => "tollgate",
        }
    }
}

/// Why a TCP connection ended, as its line's `end` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpEnd {
    /// Both directions ended with a FIN; `closed_by` is the side whose came first.
    Closed,
    /// Nothing moved for `timeouts.idle`: tollgate closed both legs.
    Idle,
    /// A leg was reset (`closed_by`: which).
    Reset(Side),
    /// A leg failed otherwise (`closed_by`: which).
    Error(Side),
    /// No backend of the pool could be reached.
    NoBackend,
    /// This host had no resources (descriptors, ports) to reach a backend.
    LocalError,
    /// Refused before a backend was chosen: SNI routing, the PROXY header, or admission of
    /// the client a PROXY header named (`acl`, `rate_limit`, …).
    Refused(&'static str),
}

impl TcpEnd {
    fn labels(self, tally: &Tally) -> (&'static str, &'static str) {
        match self {
            TcpEnd::Closed => ("closed", tally.first_fin()),
            TcpEnd::Idle => ("idle", "tollgate"),
            TcpEnd::Reset(side) => ("reset", side.label()),
            TcpEnd::Error(side) => ("error", side.label()),
            TcpEnd::NoBackend => ("no_backend", "tollgate"),
            TcpEnd::LocalError => ("local_error", "tollgate"),
            TcpEnd::Refused(why) => (why, "tollgate"),
        }
    }
}

/// One TCP connection's line in the making; written when dropped. Empty when the log is
/// off: then every call on it does nothing.
pub struct TcpRecord<'a>(Option<Box<TcpLine<'a>>>);

struct TcpLine<'a> {
    log: &'a AccessLog,
    started: Instant,
    listener: Arc<str>,
    client: SocketAddr,
    backend: Option<SocketAddr>,
    tally: Tally,
    /// `None` until the connection ends; still `None` when dropped means its task was cut
    /// short (the drain deadline): `end=shutdown`.
    end: Option<TcpEnd>,
    error: Option<String>,
}

impl TcpRecord<'_> {
    /// The client a trusted balancer's PROXY header named.
    pub fn client(&mut self, client: SocketAddr) {
        if let Some(line) = &mut self.0 {
            line.client = client;
        }
    }

    pub fn backend(&mut self, backend: SocketAddr) {
        if let Some(line) = &mut self.0 {
            line.backend = Some(backend);
        }
    }

    /// Where the forwarding reports its bytes, when the log is on.
    pub fn tally(&self) -> Option<&Tally> {
        self.0.as_ref().map(|line| &line.tally)
    }

    pub fn end(&mut self, end: TcpEnd) {
        if let Some(line) = &mut self.0 {
            line.end = Some(end);
        }
    }

    /// The connection was handed over to another process, which writes its line when it
    /// ends: nothing is written here. Returns how long it has been open, for that line.
    pub fn handed_over(&mut self) -> std::time::Duration {
        self.0
            .take()
            .map_or(std::time::Duration::ZERO, |line| line.started.elapsed())
    }

    /// A connection resumed from a handover: it has been open for `age` already.
    pub fn started_ago(&mut self, age: std::time::Duration) {
        if let Some(line) = &mut self.0 {
            line.started = Instant::now().checked_sub(age).unwrap_or(line.started);
        }
    }

    /// Ends it on a failed leg, with the error's text.
    pub fn failed(&mut self, end: TcpEnd, error: &dyn std::fmt::Display) {
        if let Some(line) = &mut self.0 {
            line.end = Some(end);
            line.error = Some(error.to_string());
        }
    }
}

impl Drop for TcpRecord<'_> {
    fn drop(&mut self) {
        let Some(line) = self.0.take() else {
            return;
        };
        if !line.log.admit() {
            return;
        }
        let (end, closed_by) = match line.end {
            Some(end) => end.labels(&line.tally),
            None => ("shutdown", "tollgate"),
        };
        let listener = &*line.listener;
        let client = line.client;
        let backend = line
            .backend
            .map_or_else(|| "-".to_owned(), |b| b.to_string());
        let to_backend = line.tally.to_backend.load(Ordering::Relaxed);
        let to_client = line.tally.to_client.load(Ordering::Relaxed);
        let duration_ms = line.started.elapsed().as_secs_f64() * 1000.0;
        match &line.error {
            None => {
                info!(target: TARGET, protocol = "tcp", listener, %client, backend, to_backend, to_client, duration_ms, end, closed_by, "tcp connection");
            }
            Some(error) => {
                info!(target: TARGET, protocol = "tcp", listener, %client, backend, to_backend, to_client, duration_ms, end, closed_by, error, "tcp connection");
            }
        }
    }
}

/// Datagrams and bytes a UDP session forwarded each way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UdpCounts {
    pub to_backend: u64,
    pub to_backend_bytes: u64,
    pub to_client: u64,
    pub to_client_bytes: u64,
}

/// Why a UDP session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpEnd {
    /// No datagram either way for `udp.session_idle`.
    Idle,
    /// Every client datagram had its `udp.responses` replies.
    Answered,
    /// Its backend could no longer be used and no other could take it.
    NoBackend,
    /// Its backend could no longer be used, and this host had no socket for another.
    LocalError,
    /// A reload removed its listener address.
    ListenerRemoved,
    /// Still open when the drain ended.
    Shutdown,
}

impl UdpEnd {
    pub fn label(self) -> &'static str {
        match self {
            UdpEnd::Idle => "idle",
            UdpEnd::Answered => "answered",
            UdpEnd::NoBackend => "no_backend",
            UdpEnd::LocalError => "local_error",
            UdpEnd::ListenerRemoved => "listener_removed",
            UdpEnd::Shutdown => "shutdown",
        }
    }
}

/// The line of one UDP session.
#[derive(Debug)]
pub struct UdpLine<'a> {
    pub listener: &'a str,
    pub client: SocketAddr,
    pub backend: SocketAddr,
    pub counts: UdpCounts,
    pub duration_ms: u64,
    pub end: UdpEnd,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bound: a burst of one period's count, then the sustained rate; every line
    /// refused is counted.
    #[test]
    fn lines_beyond_the_rate_are_counted_not_written() {
        let log = AccessLog::default();
        log.configure(true, Some((5, Duration::from_secs(3600))));
        let written = (0..20).filter(|_| log.admit()).count();
        assert_eq!(written, 5);
        assert_eq!(log.suppressed(), 15);
        log.configure(true, None);
        assert!((0..100).all(|_| log.admit()), "no rate: no bound");
        assert_eq!(log.suppressed(), 15);
    }

    #[test]
    fn a_record_is_empty_while_the_log_is_off() {
        let log = AccessLog::default();
        let peer: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let web: Arc<str> = "web".into();
        let record = log.tcp(&web, peer);
        assert!(record.tally().is_none());
        log.configure(true, None);
        assert!(log.tcp(&web, peer).tally().is_some());
    }
}
