//! Workload `upgrade`: replacing the running balancer process under load. With N idle
//! connections held (each one proven to echo), paced echo transfers and a churn of new
//! connections running (`upgrade_load`), the balancer is upgraded, and the bench measures
//! the time from asking to the old process being gone, the longest gap any transfer saw
//! meanwhile, and every failure a client saw: held connections that no longer echo, churn
//! connections refused, reset, timed out or echoed wrong, transfers cut or not byte-exact.
//!
//! Owns the round (how many connections fit the open-file limit, the load before and after
//! the upgrade, the checks after it), the figures and how they are judged: for tollgate any
//! failure fails the run (no client sees the upgrade: that is its promise), and a figure
//! past its target is noted; for HAProxy the failures are the result. How each contender
//! upgrades is `upgrade_balancer`'s.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::backends;
use crate::contenders::{self, Contender};
use crate::report::{Better, Metric, Results, metric};
use crate::upgrade_balancer::{Balancer, HARD_STOP};
use crate::upgrade_load::{CHUNK, CHURN_EVERY, Load, PACE, Stalls, Transfer};
use crate::{Ctx, Settings, held};

pub const WORKLOAD: &str = "upgrade";
/// The targets tollgate is held to (beyond them the summary says so).
const TARGET_MS: f64 = 2000.0;
const TARGET_STALL_MS: f64 = 50.0;

const UPGRADE_MS: Metric = metric(
    WORKLOAD,
    "upgrade_ms",
    "request to old process gone, ms (N held)",
    Better::Lower,
    0,
    true,
);
const MAX_STALL_MS: Metric = metric(
    WORKLOAD,
    "max_stall_ms",
    "longest gap in any transfer's echo, ms",
    Better::Lower,
    1,
    true,
);
const FAILURES: Metric = metric(
    WORKLOAD,
    "failures",
    "client-visible failures (held + churn + transfers)",
    Better::Lower,
    0,
    false,
);

/// How big one round is: full, or the smoke run's few seconds.
struct Plan {
    held: usize,
    transfers: usize,
    /// Load before the upgrade (the stall seen then is the baseline) and after the old
    /// process is gone.
    before: Duration,
    after: Duration,
}

/// Paced transfers running through the upgrade.
fn transfers(s: &Settings) -> usize {
    if s.smoke { 2 } else { 4 }
}

/// The round's fixed parameters, for results.json.
pub fn meta(s: &Settings) -> Value {
    json!({
        "transfers": transfers(s), "transfer_chunk_bytes": CHUNK,
        "transfer_pace_ms": PACE.as_secs_f64() * 1000.0,
        "churn_per_s": (1.0 / CHURN_EVERY.as_secs_f64()).round(),
        "haproxy_hard_stop_after_s": HARD_STOP.as_secs(),
    })
}

/// What the summary's heading says of the workload.
pub fn describe(s: &Settings) -> String {
    format!(
        "- upgrade: {} held connections (each echoing first; fewer if the open-file limit \
         fits fewer, as the notes then say), {} echo transfers of {} KiB \
         every {} ms each way and ~{} new connections/s running; tollgate `POST \
         /api/v1/upgrade` (the same binary re-executed; `shutdown.drain_timeout: {}`, counted \
         from the handover's last progress); haproxy `-W` master-worker, SIGUSR2 \
         reload (the new worker takes the listeners with `-x`), `hard-stop-after {}s`. \
         upgrade_ms = request to the old process (haproxy: old worker) gone; max_stall_ms = \
         longest gap between reads in any transfer from the request to the end of the load, \
         while it was not cut; failures = held connections that no longer echo + failed \
         churn connections + transfers cut or not byte-exact",
        s.held,
        transfers(s),
        CHUNK / 1024,
        PACE.as_millis(),
        (1.0 / CHURN_EVERY.as_secs_f64()).round(),
        contenders::TOLLGATE_DRAIN,
        HARD_STOP.as_secs()
    )
}

/// The held connections that fit the open-file limit: the bench holds one descriptor per
/// connection, each balancer process two (`Ctx::max_conns`); past it, the largest N that
/// fits, said in a note.
fn plan(ctx: &Ctx, res: &mut Results) -> Result<Plan> {
    let s = &ctx.settings;
    let room = ctx
        .fd_limit
        .saturating_sub(300)
        .min(ctx.max_conns().saturating_sub(30)) as usize;
    if room == 0 {
        bail!("the open-file limit {} leaves no room", ctx.fd_limit);
    }
    if s.held > room {
        res.note(format!(
            "upgrade: {room} connections held, not the {} asked: the open-file limit {} \
             (two descriptors per connection in each balancer process) fits no more",
            s.held, ctx.fd_limit
        ));
    }
    let (before, after) = match s.smoke {
        true => (Duration::from_millis(300), Duration::from_millis(500)),
        false => (Duration::from_secs(1), Duration::from_secs(1)),
    };
    Ok(Plan {
        held: s.held.min(room),
        transfers: transfers(s),
        before,
        after,
    })
}

/// One round: a fresh echo backend and balancer, the connections and the load, the
/// upgrade, then every check.
pub fn run(ctx: &Ctx, c: Contender, rep: &str, res: &mut Results) -> Result<()> {
    let plan = plan(ctx, res)?;
    let echo = backends::echo(ctx)?;
    let mut lb = Balancer::start(ctx, c, echo.port)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], lb.port));
    let held = held::open(addr, plan.held, c)?;
    let load = Load::start(addr, plan.transfers)?;
    thread::sleep(plan.before);
    let asked = Instant::now();
    let took = lb.upgrade(ctx, res)?;
    thread::sleep(plan.after);
    let ended = Instant::now();
    let (transfers, churn) = load.finish();
    let dropped = held::echo_all(&held, b'u');
    drop(held);
    let stalls = Stalls::of(&transfers, asked, ended, plan.before);
    let broken: Vec<&Transfer> = transfers.iter().filter(|t| t.broken()).collect();
    let failures = dropped + churn.failed as usize + broken.len();
    let ms = took.as_secs_f64() * 1000.0;
    res.add(UPGRADE_MS, c, ms);
    let max_stall = stalls.max_ms;
    res.add(MAX_STALL_MS, c, max_stall);
    res.add(FAILURES, c, failures as f64);
    println!(
        "{rep} {c:<15} {n} held: old process gone after {ms:6.0} ms, longest stall {}, \
         failures {failures} = {dropped} held + {}/{} churn + {}/{} transfers{}",
        stalls.describe(),
        churn.failed,
        churn.made,
        broken.len(),
        transfers.len(),
        lb.said(),
        n = plan.held,
    );
    let mut why: Vec<String> = churn.quoted.iter().map(|q| format!("churn {q}")).collect();
    why.extend(broken.iter().map(|t| format!("transfer: {}", t.describe())));
    if dropped > 0 {
        why.push(format!(
            "{dropped} of {} held connections no longer echo",
            plan.held
        ));
    }
    why.iter().for_each(|w| println!("    {w}"));
    if matches!(c, Contender::Tollgate) {
        if failures > 0 {
            return Err(lb.failure(format!(
                "{failures} client-visible failures across the upgrade:\n{}",
                why.join("\n")
            )));
        }
        if ms > TARGET_MS || max_stall > TARGET_STALL_MS {
            res.note(format!(
                "upgrade / tollgate: above target (old process gone in {TARGET_MS} ms, stalls \
                 under {TARGET_STALL_MS} ms): {ms:.0} ms, stall {max_stall:.1} ms"
            ));
        }
    }
    lb.stop()?;
    echo.stop()
}
