//! Workloads 4 to 6, all over the echo backend: memory per held connection, startup time,
//! and tollgate's reload with every connection held.
//!
//! Owns opening N idle proxied connections (each sends one byte and reads its echo, so the
//! backend leg provably exists), checking that they all still echo, closing them and
//! checking that the balancer and the backend let go of them (`upgrade` opens and checks
//! its held connections with the same functions); the PSS readings; the 1 ms
//! connect-and-echo poll from spawn; and the timed `POST /api/v1/reload`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::Ctx;
use crate::backends::{self, Backend};
use crate::contenders::{self, Contender};
use crate::procs::Proc;
use crate::report::{Better, Metric, Results, metric};

const BATCH: usize = 250;
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const STARTUP_BOUND: Duration = Duration::from_secs(5);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(15);

const KIB_PER_CONN: Metric = metric(
    "memory",
    "kib_per_conn",
    "balancer PSS KiB per connection",
    Better::Lower,
    2,
    true,
);
const TOTAL_MIB: Metric = metric(
    "memory",
    "total_mib",
    "balancer PSS MiB, all held",
    Better::Lower,
    1,
    true,
);
const STARTUP_MS: Metric = metric(
    "startup",
    "ms",
    "spawn to first proxied echo, ms",
    Better::Lower,
    1,
    true,
);
const RELOAD_MS: Metric = metric(
    "reload",
    "ms",
    "POST /api/v1/reload, ms (N held)",
    Better::Lower,
    2,
    true,
);

/// Memory: PSS of the balancer before and with N connections held through it.
pub fn memory(ctx: &Ctx, c: Contender, rep: &str, res: &mut Results) -> Result<()> {
    let n = ctx.settings.held;
    let echo = backends::echo(ctx)?;
    let running = contenders::start(ctx, c, echo.port)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], running.port));
    // One connection first, so that lazy start-up work is not counted per connection.
    drop(open(addr, 1, c).context("warm-up connection")?);
    thread::sleep(Duration::from_millis(100));
    let balancer = running.balancer()?;
    let (pss_before, fds_before) = (balancer.pss_kib()?, balancer.open_fds()?);
    let echo_fds = echo.proc.open_fds()?;
    let conns = open(addr, n, c)?;
    thread::sleep(Duration::from_millis(100));
    let (pss_with, fds_with) = (balancer.pss_kib()?, balancer.open_fds()?);
    check_fds(balancer, fds_before, fds_with, n)?;
    let kib = pss_with.saturating_sub(pss_before) as f64 / n as f64;
    let mib = pss_with as f64 / 1024.0;
    res.add(KIB_PER_CONN, c, kib);
    res.add(TOTAL_MIB, c, mib);
    println!(
        "{rep} {c:<15} {n} held: {kib:6.2} KiB/conn  PSS {:.1} -> {mib:.1} MiB  fds {fds_before} -> {fds_with}",
        pss_before as f64 / 1024.0
    );
    close(conns, balancer, fds_before, &echo, echo_fds)?;
    running.stop()?;
    echo.stop()
}

/// Startup: from spawning the balancer to the first connection through it that echoes.
pub fn startup(ctx: &Ctx, c: Contender, rep: &str, res: &mut Results) -> Result<()> {
    let echo = backends::echo(ctx)?;
    for attempt in 1..=3 {
        let mut running = contenders::spawn(ctx, c, echo.port)?;
        let spawned = running.spawned_at;
        let addr = SocketAddr::from(([127, 0, 0, 1], running.port));
        let proc = running.proc.as_mut().context("startup needs a balancer")?;
        let give_up = spawned + STARTUP_BOUND;
        let took = loop {
            if let Some(status) = proc.poll()? {
                if attempt < 3 && contenders::port_clash(proc) {
                    break None;
                }
                return Err(proc.failure(format!("exited during startup ({status})")));
            }
            crate::procs::check_interrupt()?;
            if echo_once(addr, give_up).is_ok() {
                break Some(spawned.elapsed());
            }
            if Instant::now() >= give_up {
                return Err(proc.failure(format!("no echo through it within {STARTUP_BOUND:?}")));
            }
            thread::sleep(Duration::from_millis(1));
        };
        let Some(took) = took else { continue };
        let ms = took.as_secs_f64() * 1000.0;
        res.add(STARTUP_MS, c, ms);
        println!("{rep} {c:<15} first echo after {ms:7.1} ms");
        running.stop()?;
        return echo.stop();
    }
    bail!("{c}: could not bind a free port in 3 attempts")
}

/// Reload (tollgate only): a harmless change (the backend's weight 1 -> 2) applied with
/// `POST /api/v1/reload` while N connections are held; every one must still echo after.
pub fn reload(ctx: &Ctx, c: Contender, rep: &str, res: &mut Results) -> Result<()> {
    if c != Contender::Tollgate {
        bail!("{c}: the reload workload is tollgate's only");
    }
    let n = ctx.settings.held;
    let echo = backends::echo(ctx)?;
    let running = contenders::start(ctx, c, echo.port)?;
    let admin = running.admin.context("tollgate without an admin port")?;
    let balancer = running.balancer()?;
    let (fds_before, echo_fds) = (balancer.open_fds()?, echo.proc.open_fds()?);
    let conns = open(SocketAddr::from(([127, 0, 0, 1], running.port)), n, c)?;
    running.set_tollgate_weight(2)?;
    let (status, body, took) = contenders::admin_request(admin, "POST", "/api/v1/reload")?;
    let reply: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let generation = reply["generation"].as_u64();
    if status != 200 || generation.is_none() {
        return Err(balancer.failure(format!("reload answered {status}: {body}")));
    }
    check_weight(admin, generation, 2)?;
    let dropped = echo_all(&conns, b'r');
    if dropped > 0 {
        bail!("{c}: {dropped} of {n} held connections did not echo after the reload");
    }
    let ms = took.as_secs_f64() * 1000.0;
    res.add(RELOAD_MS, c, ms);
    println!("{rep} {c:<15} reload with {n} held: {ms:7.2} ms, all {n} still echo");
    close(conns, balancer, fds_before, &echo, echo_fds)?;
    running.stop()?;
    echo.stop()
}

/// The reload took effect: the status shows its generation and the new weight.
fn check_weight(admin: u16, generation: Option<u64>, weight: u64) -> Result<()> {
    let (status, body, _) = contenders::admin_request(admin, "GET", "/api/v1/status")?;
    let json: Value =
        serde_json::from_str(&body).with_context(|| format!("status {status}: {body}"))?;
    let backends = json["pools"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["backends"].as_array().into_iter().flatten());
    let weights: Vec<u64> = backends
        .filter_map(|b| b["configured_weight"].as_u64())
        .collect();
    if json["generation"].as_u64() != generation || weights != [weight] {
        bail!(
            "after the reload the status shows weights {weights:?}, generation {}, want [{weight}] and {generation:?}",
            json["generation"]
        );
    }
    Ok(())
}

/// Opens `n` connections to `addr`, each sending one byte and reading its echo, in batches.
pub fn open(addr: SocketAddr, n: usize, c: Contender) -> Result<Vec<TcpStream>> {
    let mut conns: Vec<TcpStream> = Vec::with_capacity(n);
    while conns.len() < n {
        crate::procs::check_interrupt()?;
        let start = conns.len();
        for i in start..(start + BATCH).min(n) {
            let what = || format!("{c}: connection {} of {n}", i + 1);
            let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).with_context(what)?;
            s.set_read_timeout(Some(IO_TIMEOUT)).with_context(what)?;
            s.set_write_timeout(Some(IO_TIMEOUT)).with_context(what)?;
            s.set_nodelay(true).with_context(what)?;
            (&s).write_all(b"x").with_context(what)?;
            conns.push(s);
        }
        for (i, mut s) in conns[start..].iter().enumerate() {
            let mut byte = [0u8];
            s.read_exact(&mut byte)
                .with_context(|| format!("{c}: echo on connection {} of {n}", start + i + 1))?;
            if byte != *b"x" {
                bail!("{c}: connection {} echoed {byte:?}", start + i + 1);
            }
        }
    }
    Ok(conns)
}

/// Sends one byte on every connection and reads it back; returns how many failed.
pub fn echo_all(conns: &[TcpStream], byte: u8) -> usize {
    let mut failed = 0;
    for batch in conns.chunks(BATCH) {
        let sent: Vec<bool> = batch
            .iter()
            .map(|mut s| s.write_all(&[byte]).is_ok())
            .collect();
        for (mut s, ok) in batch.iter().zip(sent) {
            let mut got = [0u8];
            if !ok || s.read_exact(&mut got).is_err() || got[0] != byte {
                failed += 1;
            }
        }
    }
    failed
}

/// One connection, one byte, its echo, within the deadline.
fn echo_once(addr: SocketAddr, deadline: Instant) -> Result<()> {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    let mut s = TcpStream::connect_timeout(&addr, left)?;
    s.set_read_timeout(Some(left))?;
    s.write_all(b"s")?;
    let mut byte = [0u8];
    s.read_exact(&mut byte)?;
    Ok(())
}

/// Each held connection must cost the balancer at least its two sockets.
fn check_fds(balancer: &Proc, before: u64, with: u64, n: usize) -> Result<()> {
    if with < before + 2 * n as u64 {
        bail!(
            "{}: {with} fds with {n} connections held, {before} before: fewer than two per connection",
            balancer.name()
        );
    }
    Ok(())
}

/// Closes every connection and waits until the balancer and the backend are back to the
/// descriptors they had before (a few spare pipes kept in a pool are tolerated).
fn close(
    conns: Vec<TcpStream>,
    balancer: &Proc,
    fds_before: u64,
    echo: &Backend,
    echo_before: u64,
) -> Result<()> {
    let n = conns.len() as u64;
    drop(conns);
    let slack = 64;
    let give_up = Instant::now() + CLOSE_TIMEOUT;
    loop {
        crate::procs::check_interrupt()?;
        let (fds, echo_fds) = (balancer.open_fds()?, echo.proc.open_fds()?);
        if fds <= fds_before + slack && echo_fds <= echo_before {
            return Ok(());
        }
        if Instant::now() >= give_up {
            bail!(
                "{}: {CLOSE_TIMEOUT:?} after closing {n} connections it still has {fds} fds (had {fds_before}) \
                 and the echo backend {echo_fds} (had {echo_before})",
                balancer.name()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}
