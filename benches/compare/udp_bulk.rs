//! Workloads udp-bulk and udp-memory, both over the UDP echo backend (`dgram.rs`).
//!
//! udp-bulk: the load generator's closed loop of 1200-byte datagrams through each front for
//! the run's seconds; datagrams per second each way, the loss, and datagrams forwarded per
//! CPU-second of the balancer (two per echoed round trip: one each way).
//!
//! udp-memory: N client sockets each send one datagram and read its echo, so N sessions
//! exist in the balancer with both legs; then the balancer's RSS (summed over its
//! processes) minus its RSS before, per session. tollgate's `tollgate_udp_sessions_active`
//! must have grown by exactly N, and each balancer must hold at least one more descriptor per
//! session (its upstream socket), or the figure would not be about N sessions.

use std::net::{SocketAddr, UdpSocket};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::contenders::{self, Contender, Front};
use crate::dgram::{self, Load, PROBE};
use crate::report::{Better, Metric, Results, metric};
use crate::{Ctx, udp};

const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// udp-bulk's shape: 16 flows, 8 datagrams in flight each (128 in all: about what the
/// balancers' default 208 KiB receive buffers hold), 1200 bytes (a QUIC-sized datagram).
pub const BULK: (usize, usize, usize) = (16, 8, 1200);
const BATCH: usize = 250;

pub const BULK_WORKLOAD: &str = "udp-bulk";
pub const MEMORY_WORKLOAD: &str = "udp-memory";
const ECHO_TIMEOUT: Duration = Duration::from_millis(500);
const ECHO_TRIES: usize = 4;

const SENT: Metric = metric(
    BULK_WORKLOAD,
    "sent_per_s",
    "datagrams/s client → balancer",
    Better::Higher,
    0,
    true,
);
const ECHOED: Metric = metric(
    BULK_WORKLOAD,
    "echoed_per_s",
    "datagrams/s echoed back to the client",
    Better::Higher,
    0,
    true,
);
const LOSS: Metric = Metric {
    ratio: false,
    ..metric(BULK_WORKLOAD, "loss_pct", "loss %", Better::Lower, 2, true)
};
const PER_CPU: Metric = metric(
    BULK_WORKLOAD,
    "datagrams_per_cpu_s",
    "datagrams forwarded per balancer CPU-s",
    Better::Higher,
    0,
    true,
);
const BYTES_PER_SESSION: Metric = metric(
    MEMORY_WORKLOAD,
    "bytes_per_session",
    "balancer RSS bytes per idle session",
    Better::Lower,
    0,
    true,
);
const TOTAL_MIB: Metric = metric(
    MEMORY_WORKLOAD,
    "total_rss_mib",
    "balancer RSS MiB, all sessions open",
    Better::Lower,
    1,
    true,
);

/// udp-bulk, one repetition: a fresh echo backend and front, one load run.
pub fn bulk(ctx: &Ctx, c: Contender, rep: &str, res: &mut Results) -> Result<()> {
    let echo = dgram::echo(ctx)?;
    let running = contenders::start_front(ctx, c, Front::Udp { responses: None }, echo.port)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], running.port));
    drop(
        udp::probe(addr, PROBE, |r| r == PROBE, READY_TIMEOUT)
            .with_context(|| format!("{c}: no echo through it"))?,
    );
    let (sockets, window, size) = BULK;
    let load = Load {
        sockets,
        window,
        size,
        duration: Duration::from_secs(ctx.settings.secs),
    };
    let balancer = running.proc.as_ref();
    let before = balancer.map(|p| p.cpu_ticks()).transpose()?;
    let counts = dgram::generate(addr, load).with_context(|| format!("{c}: load generator"))?;
    let after = balancer.map(|p| p.cpu_ticks()).transpose()?;
    if counts.received == 0 {
        bail!("{c}: none of {} datagrams came back", counts.sent);
    }
    let secs = load.duration.as_secs_f64();
    let (sent, echoed) = (counts.sent as f64 / secs, counts.received as f64 / secs);
    let loss = counts.sent.saturating_sub(counts.received) as f64 * 100.0 / counts.sent as f64;
    res.add(SENT, c, sent);
    res.add(ECHOED, c, echoed);
    res.add(LOSS, c, loss);
    let mut line =
        format!("{rep} {c:<15} {sent:9.0} sent/s  {echoed:9.0} echoed/s  loss {loss:.2}%");
    if let (Some(before), Some(after)) = (before, after) {
        let cpu_s = after.saturating_sub(before) as f64 / ctx.clk_tck;
        if cpu_s > 0.0 {
            let per_cpu = 2.0 * counts.received as f64 / cpu_s;
            res.add(PER_CPU, c, per_cpu);
            line += &format!("  {per_cpu:8.0} datagrams/CPU-s ({cpu_s:.2} CPU-s)");
        }
    }
    println!("{line}");
    running.stop()?;
    echo.stop()
}

/// udp-memory, one repetition: RSS before and with N sessions open through the front.
pub fn memory(ctx: &Ctx, c: Contender, rep: &str, res: &mut Results) -> Result<()> {
    let n = ctx.settings.udp_sessions;
    let echo = dgram::echo(ctx)?;
    let running = contenders::start_front(ctx, c, Front::Udp { responses: None }, echo.port)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], running.port));
    // The probe is also the warm-up session: lazy start-up work is not counted per session.
    // Its socket stays open, so that no client below reuses its port and joins its session.
    let warm_up = udp::probe(addr, PROBE, |r| r == PROBE, READY_TIMEOUT)
        .with_context(|| format!("{c}: no echo through it"))?;
    thread::sleep(Duration::from_millis(100));
    let balancer = running.balancer()?;
    let (rss_before, fds_before) = (balancer.rss_kib()?, balancer.open_fds()?);
    let sessions_before = running.admin.map(udp::sessions_active).transpose()?;
    let clients = open_sessions(addr, n, c)?;
    thread::sleep(Duration::from_millis(100));
    let (rss_with, fds_with) = (balancer.rss_kib()?, balancer.open_fds()?);
    let sessions_with = running.admin.map(udp::sessions_active).transpose()?;
    if fds_with < fds_before + n as u64 {
        bail!(
            "{c}: {fds_with} fds with {n} sessions open, {fds_before} before: fewer than one per session"
        );
    }
    let mut gauge = String::new();
    if let (Some(before), Some(with)) = (sessions_before, sessions_with) {
        if with.checked_sub(before) != Some(n as u64) {
            bail!("{c}: tollgate_udp_sessions_active went {before} -> {with}, want +{n}");
        }
        gauge = format!("  sessions_active {before} -> {with}");
    }
    let bytes = rss_with.saturating_sub(rss_before) as f64 * 1024.0 / n as f64;
    let mib = rss_with as f64 / 1024.0;
    res.add(BYTES_PER_SESSION, c, bytes);
    res.add(TOTAL_MIB, c, mib);
    println!(
        "{rep} {c:<15} {n} sessions: {bytes:6.0} B/session  RSS {:.1} -> {mib:.1} MiB  fds {fds_before} -> {fds_with}{gauge}",
        rss_before as f64 / 1024.0
    );
    drop((clients, warm_up));
    running.stop()?;
    echo.stop()
}

/// Opens `n` client sockets to `addr`, each sending one datagram and reading its echo, in
/// batches; a datagram lost on the way is sent again from the same socket (the same session).
fn open_sessions(addr: SocketAddr, n: usize, c: Contender) -> Result<Vec<UdpSocket>> {
    let mut clients: Vec<UdpSocket> = Vec::with_capacity(n);
    let mut buf = [0u8; 64];
    while clients.len() < n {
        crate::procs::check_interrupt()?;
        let start = clients.len();
        for i in start..(start + BATCH).min(n) {
            let what = || format!("{c}: client socket {} of {n}", i + 1);
            let s = UdpSocket::bind("127.0.0.1:0").with_context(what)?;
            s.connect(addr).with_context(what)?;
            s.set_read_timeout(Some(ECHO_TIMEOUT)).with_context(what)?;
            s.send(b"m").with_context(what)?;
            clients.push(s);
        }
        for (i, s) in clients[start..].iter().enumerate() {
            let echoed = (0..ECHO_TRIES).any(|try_no| {
                (try_no == 0 || s.send(b"m").is_ok()) && matches!(s.recv(&mut buf), Ok(1))
            });
            if !echoed {
                bail!(
                    "{c}: session {} of {n} got no echo in {ECHO_TRIES} tries",
                    start + i + 1
                );
            }
        }
    }
    Ok(clients)
}
