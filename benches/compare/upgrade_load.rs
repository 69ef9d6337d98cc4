//! The load the upgrade workload keeps running through a balancer while it upgrades:
//! paced echo transfers that time every chunk they get back and check every byte, and a
//! churn of short connections that counts every one a client would see fail.
//!
//! Owns the transfers (a writer thread sending a deterministic byte stream in 16 KiB writes
//! every millisecond, a reader thread checking each byte of the echo against it and noting
//! when each read returned, so that the longest gap in any window can be read off
//! afterwards) and the churn (about 300 connections a second, each a connect, one short
//! echo and a close, within timeouts). It measures; judging the figures is `upgrade`'s.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// One write of a transfer, every `PACE`: about 16 MB/s each way per transfer, so a stall
/// of a few milliseconds shows as a gap between reads.
pub const CHUNK: usize = 16 * 1024;
pub const PACE: Duration = Duration::from_millis(1);
/// A transfer or churn connection that gets nothing for this long has failed.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// A churn connection's connect, send and echo must each finish within this.
const CHURN_TIMEOUT: Duration = Duration::from_secs(2);
/// About 300 new connections a second.
pub const CHURN_EVERY: Duration = Duration::from_micros(3_333);
/// Reads are noted at most this often (the gaps measured are milliseconds).
const NOTED: Duration = Duration::from_micros(100);
/// No load runs longer than this, whatever happens to the stop flag.
const MAX_RUN: Duration = Duration::from_secs(120);
/// How many failed churn connections are quoted (all are counted).
const QUOTED: usize = 5;

/// Transfer `seed`'s stream from byte `offset` on, into `out`: eight bytes of a SplitMix64
/// value per eight offsets, so that a lost, repeated or reordered piece of any length shows.
/// Made a word at a time: at 16 MB/s per transfer, byte by byte would cost a core.
fn pattern(seed: u64, offset: u64, out: &mut [u8]) {
    let (mut word, mut skip, mut i) = (offset / 8, (offset % 8) as usize, 0);
    while i < out.len() {
        let mut z = (seed << 48 ^ word).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let bytes = (z ^ (z >> 31)).to_le_bytes();
        let take = (8 - skip).min(out.len() - i);
        out[i..i + take].copy_from_slice(&bytes[skip..skip + take]);
        (word, skip, i) = (word + 1, 0, i + take);
    }
}

/// What one transfer saw once it ended.
pub struct Transfer {
    pub sent: u64,
    pub received: u64,
    /// When reads returned data, in order (at most one every `NOTED`).
    pub arrivals: Vec<Instant>,
    /// The first thing that went wrong: an I/O error, a wrong byte, a short echo.
    pub error: Option<String>,
}

impl Transfer {
    pub fn broken(&self) -> bool {
        self.error.is_some() || self.received != self.sent
    }

    /// The longest gap between two reads that overlaps `from..to`, and when it began; a
    /// gap starting before `from` counts whole (the stall began before and went on into it).
    pub fn max_gap(&self, from: Instant, to: Instant) -> Option<(Duration, Instant)> {
        let gaps = self
            .arrivals
            .windows(2)
            .filter(|w| w[1] > from && w[0] < to);
        gaps.map(|w| (w[1] - w[0], w[0])).max()
    }

    pub fn describe(&self) -> String {
        let what = self.error.as_deref().unwrap_or("short echo");
        format!("{} of {} bytes back: {what}", self.received, self.sent)
    }
}

/// The longest gaps the transfers saw, in ms.
pub struct Stalls {
    /// The longest of any transfer from the upgrade request to the end of the load.
    pub max_ms: f64,
    /// When it began, in ms from the request (a gap under way at the request counts whole).
    pub at_ms: f64,
    /// Each transfer's longest over the same window.
    pub each_ms: Vec<f64>,
    /// The longest of any transfer over the `before` ahead of the request: the noise floor.
    pub baseline_ms: f64,
}

impl Stalls {
    pub fn of(transfers: &[Transfer], asked: Instant, ended: Instant, before: Duration) -> Stalls {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let longest = |from, to| {
            let gaps = transfers.iter().filter_map(|t| t.max_gap(from, to));
            gaps.max().unwrap_or((Duration::ZERO, from))
        };
        let (max, began) = longest(asked, ended);
        let each = transfers.iter().map(|t| t.max_gap(asked, ended));
        Stalls {
            max_ms: ms(max),
            at_ms: ms(began.saturating_duration_since(asked))
                - ms(asked.saturating_duration_since(began)),
            each_ms: each.map(|g| g.map_or(0.0, |g| ms(g.0))).collect(),
            baseline_ms: ms(longest(asked - before, asked).0),
        }
    }

    pub fn describe(&self) -> String {
        let each: Vec<String> = self.each_ms.iter().map(|g| format!("{g:.1}")).collect();
        format!(
            "{:5.1} ms from {:+.0} ms (each: {}; before: {:.1})",
            self.max_ms,
            self.at_ms,
            each.join("/"),
            self.baseline_ms
        )
    }
}

/// What the churn saw.
#[derive(Default)]
pub struct Churn {
    pub made: u64,
    pub failed: u64,
    /// The first few failures, each with what went wrong.
    pub quoted: Vec<String>,
}

/// What a transfer's writer sent, and what failed, if anything.
type Sent = (u64, Option<String>);

/// The transfers and the churn, running until [`Load::finish`] (or until dropped: a round
/// that fails midway stops its load, whose threads then end on their own).
pub struct Load {
    stop: Arc<AtomicBool>,
    transfers: Vec<(JoinHandle<Sent>, JoinHandle<Transfer>)>,
    churn: Option<JoinHandle<Churn>>,
}

impl Load {
    /// Starts `transfers` paced echo transfers and the churn through `addr`.
    pub fn start(addr: SocketAddr, transfers: usize) -> Result<Load> {
        // Built first, so that a failure midway drops it and stops what already runs.
        let mut load = Load {
            stop: Arc::new(AtomicBool::new(false)),
            transfers: Vec::with_capacity(transfers),
            churn: None,
        };
        for seed in 0..transfers as u64 {
            let what = || format!("transfer {seed}: connecting to {addr}");
            let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).with_context(what)?;
            s.set_nodelay(true).with_context(what)?;
            s.set_read_timeout(Some(IO_TIMEOUT)).with_context(what)?;
            s.set_write_timeout(Some(IO_TIMEOUT)).with_context(what)?;
            let reader = s.try_clone().with_context(what)?;
            let stop = Arc::clone(&load.stop);
            let writer = thread::spawn(move || send(s, seed, &stop));
            (load.transfers).push((writer, thread::spawn(move || receive(reader, seed))));
        }
        let stop = Arc::clone(&load.stop);
        load.churn = Some(thread::spawn(move || churn(addr, &stop)));
        Ok(load)
    }

    /// Stops the load: each writer half-closes, each reader reads the echo to its end.
    pub fn finish(mut self) -> (Vec<Transfer>, Churn) {
        self.stop.store(true, Ordering::SeqCst);
        let mut done = Vec::with_capacity(self.transfers.len());
        for (writer, reader) in std::mem::take(&mut self.transfers) {
            let (sent, failed) = writer
                .join()
                .unwrap_or_else(|_| (0, Some("the writer panicked".into())));
            let mut t = reader.join().unwrap_or_else(|_| Transfer {
                sent: 0,
                received: 0,
                arrivals: Vec::new(),
                error: Some("the reader panicked".into()),
            });
            t.sent = sent;
            if let Some(e) = failed {
                t.error.get_or_insert(format!("sending: {e}"));
            }
            done.push(t);
        }
        let churn = self.churn.take().map(JoinHandle::join);
        let churn = churn.and_then(Result::ok).unwrap_or_else(|| Churn {
            failed: 1,
            quoted: vec!["the churn thread panicked".into()],
            ..Churn::default()
        });
        (done, churn)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Writes the stream in `CHUNK`s every `PACE` until told to stop, then half-closes; returns
/// the bytes sent and what failed, if anything. Behind schedule (the balancer held the
/// writes back), it goes on from now rather than bursting.
fn send(mut s: TcpStream, seed: u64, stop: &AtomicBool) -> Sent {
    let (start, mut sent) = (Instant::now(), 0u64);
    let mut buf = vec![0u8; CHUNK];
    let mut next = start;
    while !stop.load(Ordering::SeqCst) && start.elapsed() < MAX_RUN {
        pattern(seed, sent, &mut buf);
        if let Err(e) = s.write_all(&buf) {
            // Part of the chunk may have gone: the reader's count says how much came back.
            return (sent, Some(format!("after {sent} bytes: {e}")));
        }
        sent += CHUNK as u64;
        next += PACE;
        let now = Instant::now();
        match next.checked_duration_since(now) {
            Some(wait) => thread::sleep(wait),
            None if now - next > 50 * PACE => next = now,
            None => {}
        }
    }
    let shut = s.shutdown(Shutdown::Write).err();
    (
        sent,
        shut.map(|e| format!("half-closing after {sent} bytes: {e}")),
    )
}

/// Reads the echo to its end, checking every byte and noting when each read returned.
fn receive(mut s: TcpStream, seed: u64) -> Transfer {
    let mut t = Transfer {
        sent: 0,
        received: 0,
        arrivals: Vec::with_capacity(1 << 16),
        error: None,
    };
    let (mut buf, mut want) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let deadline = Instant::now() + MAX_RUN + IO_TIMEOUT;
    while Instant::now() < deadline {
        let n = match s.read(&mut buf) {
            Ok(0) => return t,
            Ok(n) => n,
            Err(e) => {
                t.error = Some(format!("reading after {} bytes: {e}", t.received));
                return t;
            }
        };
        // Reads closer together than this tell nothing about stalls; skipping them bounds
        // the record at 10 000 a second.
        let now = Instant::now();
        if t.arrivals.last().is_none_or(|&last| now - last >= NOTED) {
            t.arrivals.push(now);
        }
        pattern(seed, t.received, &mut want[..n]);
        if buf[..n] != want[..n] {
            let i = (0..n).find(|&i| buf[i] != want[i]).unwrap_or(0);
            let at = t.received + i as u64;
            t.error = Some(format!("byte {at} echoed wrong"));
            return t;
        }
        t.received += n as u64;
    }
    t.error = Some(format!("still reading after {:?}", MAX_RUN + IO_TIMEOUT));
    t
}

/// New connections at about 300 a second until told to stop, each one a connect, a short
/// message and its echo, and a close.
fn churn(addr: SocketAddr, stop: &AtomicBool) -> Churn {
    let mut c = Churn::default();
    let start = Instant::now();
    let mut next = start;
    while !stop.load(Ordering::SeqCst) && start.elapsed() < MAX_RUN {
        c.made += 1;
        let msg = format!("churn {}\n", c.made);
        if let Err(e) = short_echo(addr, msg.as_bytes()) {
            c.failed += 1;
            if c.quoted.len() < QUOTED {
                let at = start.elapsed().as_secs_f64();
                c.quoted
                    .push(format!("connection {} at {at:.3} s: {e}", c.made));
            }
        }
        next += CHURN_EVERY;
        match next.checked_duration_since(Instant::now()) {
            Some(wait) => thread::sleep(wait),
            None => next = Instant::now(),
        }
    }
    c
}

/// One churn connection; the error says which way it failed (refused, reset, timed out,
/// closed early or a wrong echo).
fn short_echo(addr: SocketAddr, msg: &[u8]) -> Result<(), String> {
    let kind = |step: &str, e: std::io::Error| {
        let how = match e.kind() {
            ErrorKind::ConnectionRefused => "refused",
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
                "reset"
            }
            ErrorKind::WouldBlock | ErrorKind::TimedOut => "timeout",
            ErrorKind::UnexpectedEof => "closed early",
            _ => "error",
        };
        format!("{how} ({step}: {e})")
    };
    let mut s = TcpStream::connect_timeout(&addr, CHURN_TIMEOUT).map_err(|e| kind("connect", e))?;
    s.set_read_timeout(Some(CHURN_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(CHURN_TIMEOUT)))
        .map_err(|e| kind("timeouts", e))?;
    s.write_all(msg).map_err(|e| kind("send", e))?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).map_err(|e| kind("echo", e))?;
    if got != msg {
        return Err(format!("wrong echo ({got:?})"));
    }
    Ok(())
}
