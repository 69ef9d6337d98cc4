//! `cargo bench --bench compare`: tollgate side by side with HAProxy 2.6 and nginx 1.22
//! (stream), and a direct connection as the baseline, on loopback.
//!
//! This file owns the rounds (each workload runs REPS times; each round visits every
//! contender, the order rotated by one per round, every contender started fresh), the
//! failures, and the exit status; the settings (environment knobs below) and the workloads'
//! names are `settings`'s. The TCP workloads live in `bulk` (iperf3), `http` (wrk), `tls`
//! (tls-sni: TLS passthrough routed by SNI, with h2load) and `held` (memory, startup,
//! reload); the UDP ones in `dns` (dnsperf, over `nsd`) and `udp_bulk` (udp-bulk,
//! udp-memory, over `dgram`'s echo backend and load generator), with the UDP fronts in
//! `udp`; `upgrade` (binary upgrade under load; its load in `upgrade_load`, each
//! contender's way of upgrading in `upgrade_balancer`); processes in `procs` (and
//! `adopted`: an upgrade's new process, which the bench did not start itself), contenders
//! in `contenders`, backends in `backends`, the summary and JSON in `report`. Configs and
//! logs go to a temp dir, kept (and named) when something failed.
//!
//! Environment:
//! * `TOLLGATE_COMPARE_SMOKE=1`: one repetition, 1 s per run, 300 held connections and 300
//!   UDP sessions (CI);
//! * `TOLLGATE_COMPARE_REPS`: repetitions of every workload (default 5 for bulk, conns,
//!   reqresp, tls-sni, udp-dns and udp-bulk, 3 for memory, startup, reload, udp-memory and
//!   upgrade);
//! * `TOLLGATE_COMPARE_SECS`: seconds per iperf3/wrk/h2load/dnsperf/UDP load run (default 5;
//!   h2load's run is counted in connections, sized from a pilot run to last about that long);
//! * `TOLLGATE_COMPARE_HELD`: idle connections held for memory, reload and upgrade (default
//!   9000; upgrade holds fewer, and says so, when the open-file limit fits fewer);
//! * `TOLLGATE_COMPARE_UDP_SESSIONS`: idle UDP sessions opened by udp-memory (default 10000);
//! * `TOLLGATE_COMPARE_ONLY=bulk,conns,reqresp,tls-sni,memory,startup,reload,udp-dns,udp-bulk,udp-memory,upgrade`:
//!   a subset (`tls-sni`: new TLS connections per second through SNI routing, no TLS
//!   termination in the balancer, and the balancer's CPU per connection; `upgrade`, tollgate
//!   and haproxy only, since nginx upgrades its binary only when daemonised: with N
//!   connections held, paced echo transfers (4; smoke 2) and ~300 new connections a second
//!   running, tollgate's `POST /api/v1/upgrade` against HAProxy's master-worker reload with
//!   `-x` and `hard-stop-after 2s`: the time from the request to the old process gone, the
//!   longest gap any transfer's echo saw meanwhile, and every client-visible failure; any
//!   failure fails tollgate's run);
//! * `TOLLGATE_COMPARE_CONTENDERS=direct,tollgate,tollgate-access-log,haproxy,haproxy-splice,nginx,nginx-half-close`:
//!   a subset (HAProxy community has no UDP: its UDP cells say so; tls-sni runs haproxy, not
//!   haproxy-splice; nginx-half-close, nginx passing half-closes on as tollgate does, runs
//!   on conns/s and tls-sni; tollgate-access-log, tollgate writing a JSON access-log line
//!   per connection, runs on conns/s).
//!
//! Any failed run, missing tool or workload without a result exits non-zero, after the
//! summary of whatever did complete. Results: stdout (Markdown) and
//! `target/compare/results.json`.

mod adopted;
mod backends;
mod bulk;
mod contenders;
mod dgram;
mod dns;
mod held;
mod http;
mod nsd;
#[path = "../common/procfs.rs"]
mod procfs;
mod procs;
mod report;
mod settings;
mod tls;
mod udp;
mod udp_bulk;
mod upgrade;
mod upgrade_balancer;
mod upgrade_load;

use std::cell::Cell;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;
use std::{env, fs};

use anyhow::{Context, Result, bail};
use serde_json::json;
use tempfile::TempDir;

use contenders::{Contender, StreamModule};
use report::{Machine, Results};
pub use settings::{Settings, Workload};

/// What every run needs.
pub struct Ctx {
    pub settings: Settings,
    pub tollgate: PathBuf,
    pub nginx_stream: Option<StreamModule>,
    pub clk_tck: f64,
    /// The soft open-file limit after raising it; children inherit it.
    pub fd_limit: u64,
    work: TempDir,
    seq: Cell<usize>,
}

impl Ctx {
    /// A fresh directory for one process's config and logs.
    pub fn run_dir(&self, label: &str) -> Result<PathBuf> {
        self.seq.set(self.seq.get() + 1);
        let dir = self
            .work
            .path()
            .join(format!("{:04}-{label}", self.seq.get()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// The connection cap given to tollgate and HAProxy: what two sockets a connection (and
    /// HAProxy's 256 reserved pipes) leave room for, at most 20000.
    pub fn max_conns(&self) -> u64 {
        (self.fd_limit.saturating_sub(700) / 2).min(20_000)
    }
}

fn main() -> ExitCode {
    if let Ok(port) = env::var(backends::ECHO_ENV) {
        return backends::echo_main(&port);
    }
    if let Ok(port) = env::var(dgram::UDP_ECHO_ENV) {
        return dgram::echo_main(&port);
    }
    let started = Instant::now();
    match run() {
        Ok(true) => {
            println!("compare: done in {:.0} s", started.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        Ok(false) => {
            eprintln!(
                "compare: FAILED (see above); {:.0} s",
                started.elapsed().as_secs_f64()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("compare bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Checks the environment, runs every round and prints the summary. `Ok(false)` when some
/// run failed or some workload produced nothing.
fn run() -> Result<bool> {
    let settings = Settings::from_env()?;
    procs::watch_signals()?;
    let limit = tollgate::sys::raise_nofile_limit().context("raising the open-file limit")?;
    let nginx_stream = contenders::check_tools(&settings)?;
    http::self_test()?;
    dns::self_test()?;
    tls::self_test()?;
    let tollgate = PathBuf::from(env!("CARGO_BIN_EXE_tollgate"));
    if !tollgate.is_file() {
        bail!("the tollgate binary {} is missing", tollgate.display());
    }
    let work = tempfile::Builder::new()
        .prefix("tollgate-compare-")
        .tempdir()
        .context("creating the temp dir")?;
    let ctx = Ctx {
        settings,
        tollgate,
        nginx_stream,
        clk_tck: procs::clk_tck()?,
        fd_limit: limit.soft,
        work,
        seq: Cell::new(0),
    };
    // `upgrade` holds as many as fit instead, and says so (`upgrade::plan`).
    let holds = [Workload::Memory, Workload::Reload]
        .iter()
        .any(|w| ctx.settings.workloads.contains(w));
    let held = ctx.settings.held as u64;
    if holds && (held + 300 > ctx.fd_limit || held + 10 > ctx.max_conns()) {
        bail!(
            "holding {held} connections needs an open-file limit of about {} (this one is {}); \
             set TOLLGATE_COMPARE_HELD lower",
            2 * held + 800,
            ctx.fd_limit
        );
    }
    let sessions = ctx.settings.udp_sessions as u64;
    if ctx.settings.uses(Workload::UdpMemory) && sessions + 300 > ctx.fd_limit {
        bail!(
            "opening {sessions} UDP sessions needs an open-file limit of about {} (this one is {}); \
             set TOLLGATE_COMPARE_UDP_SESSIONS lower",
            sessions + 300,
            ctx.fd_limit
        );
    }
    let machine = Machine::probe();
    let header = report::header(&ctx.settings, &machine);
    println!(
        "{header}\n\nlogs and configs: {}",
        ctx.work.path().display()
    );
    let mut res = Results::default();
    for &w in &ctx.settings.workloads {
        if procs::check_interrupt().is_err() {
            break;
        }
        rounds(&ctx, w, &mut res);
    }
    println!(
        "\n{}",
        report::markdown(&res, &ctx.settings.contenders, &header)
    );
    if !res.failures.is_empty() {
        println!("Failures:");
        // In full above, where each failed; here its first line.
        let first = |f: &String| f.lines().next().unwrap_or_default().to_owned();
        res.failures.iter().for_each(|f| println!("- {}", first(f)));
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| manifest.join("target"), |t| manifest.join(t));
    let path = target.join("compare").join("results.json");
    let s = &ctx.settings;
    let meta = json!({
        "nproc": machine.nproc, "cpu": machine.cpu, "kernel": machine.kernel,
        "versions": machine.versions.iter().map(|(t, v)| json!({"tool": t, "version": v})).collect::<Vec<_>>(),
        "smoke": s.smoke, "reps": [s.reps.0, s.reps.1], "secs_per_run": s.secs, "held_connections": s.held,
        "udp_sessions": s.udp_sessions,
        "tls_sni": {"h2load_clients": tls::CLIENTS, "h2load_threads": tls::THREADS, "server_name": tls::SERVER_NAME},
        "udp_dns": {"dnsperf_clients": dns::CLIENTS, "dnsperf_outstanding": dns::OUTSTANDING},
        "udp_bulk": {"sockets": udp_bulk::BULK.0, "window": udp_bulk::BULK.1, "datagram_bytes": udp_bulk::BULK.2},
        "upgrade": upgrade::meta(s),
        "workloads": s.workloads.iter().map(|w| w.name()).collect::<Vec<_>>(),
        "contenders": s.contenders.iter().map(|c| c.name()).collect::<Vec<_>>(),
    });
    report::write_json(&path, &res, &ctx.settings.contenders, meta)?;
    println!("results: {}", path.display());
    if !res.failures.is_empty() {
        println!("configs and logs kept in {}", ctx.work.keep().display());
    }
    Ok(res.failures.is_empty())
}

/// Every repetition of one workload, the contender order rotated by one each round. A failed
/// run is reported at once and recorded; the others go on.
fn rounds(ctx: &Ctx, w: Workload, res: &mut Results) {
    for &c in &ctx.settings.contenders {
        if let Some(why) = w.unsupported(c) {
            w.recorded_as()
                .iter()
                .for_each(|name| res.unsupported(name, c, why));
        }
    }
    let cs: Vec<Contender> = ctx
        .settings
        .contenders
        .iter()
        .copied()
        .filter(|&c| w.measures(c))
        .collect();
    if cs.is_empty() {
        return;
    }
    let reps = ctx.settings.reps(w);
    println!(
        "\n== {} ({reps} rep(s), {} contender(s))",
        w.name(),
        cs.len()
    );
    for rep in 0..reps {
        for i in 0..cs.len() {
            if procs::check_interrupt().is_err() {
                res.failures.push("interrupted".into());
                return;
            }
            let c = cs[(i + rep) % cs.len()];
            let tag = format!("  {:<10} {}/{reps}", w.name(), rep + 1);
            let done = match w {
                Workload::Bulk => bulk::run(ctx, c, &tag, res),
                Workload::Conns => http::run(ctx, http::CONNS, c, &tag, res),
                Workload::ReqResp => http::run(ctx, http::REQRESP, c, &tag, res),
                Workload::TlsSni => tls::run(ctx, c, &tag, res),
                Workload::Memory => held::memory(ctx, c, &tag, res),
                Workload::Startup => held::startup(ctx, c, &tag, res),
                Workload::Reload => held::reload(ctx, c, &tag, res),
                Workload::UdpDns => dns::run(ctx, c, &tag, res),
                Workload::UdpBulk => udp_bulk::bulk(ctx, c, &tag, res),
                Workload::UdpMemory => udp_bulk::memory(ctx, c, &tag, res),
                Workload::Upgrade => upgrade::run(ctx, c, &tag, res),
            };
            if let Err(e) = done {
                let failure = format!("{} / {c}, rep {}: {e:#}", w.name(), rep + 1);
                eprintln!("  FAILED {failure}");
                res.failures.push(failure);
            }
        }
    }
    for c in cs {
        for name in w.recorded_as() {
            if !res.has_any(name, c) {
                res.failures.push(format!("{name} / {c}: no result"));
            }
        }
    }
}
