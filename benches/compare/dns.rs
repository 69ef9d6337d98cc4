//! Workload udp-dns: DNS-sized request/response over UDP, many queries outstanding, with
//! `dnsperf` against nsd (`nsd.rs`) serving a tiny zone, directly and through each UDP front.
//!
//! Owns the two dnsperf runs per repetition (as fast as it goes, then at a fixed rate),
//! running dnsperf with `-v` (one line per query with its latency, from which p50 and p99
//! come: dnsperf 2.10 itself reports only the mean) and parsing its output, and the
//! balancer's CPU over each run.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::contenders::{self, Contender, Front};
use crate::procs::Proc;
use crate::report::{Better, Metric, Results, metric};
use crate::{Ctx, nsd};

pub const WORKLOAD: &str = "udp-dns";
pub const FIXED_WORKLOAD: &str = "udp-dns @20k/s";

/// dnsperf's sockets ("clients") and queries in flight across them.
pub const CLIENTS: u32 = 64;
pub const OUTSTANDING: u32 = 256;
/// The second run's offered rate (`-Q`): below what every path carries on the 2-core VM, so
/// that CPU per query and latency are compared at the same load rather than at saturation,
/// where latency is mostly queueing (256 in flight / rate) and the rate depends on losses.
pub const FIXED_QPS: u32 = 20_000;
/// Seconds after which dnsperf counts a query lost. Short, so that a lost query holds its
/// slot of the 256 briefly and the rate still says what the path can carry.
const QUERY_TIMEOUT_S: u32 = 1;
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// One of the two dnsperf runs: as fast as it goes, or at [`FIXED_QPS`].
struct Shape {
    rate: Option<u32>,
    /// queries/s, p50, p99, lost %, and the CPU figure.
    metrics: [Metric; 5],
}

const SATURATED: Shape = Shape {
    rate: None,
    metrics: [
        metric(
            WORKLOAD,
            "queries_per_s",
            "queries/s",
            Better::Higher,
            0,
            true,
        ),
        metric(WORKLOAD, "p50_ms", "p50 latency ms", Better::Lower, 3, true),
        metric(WORKLOAD, "p99_ms", "p99 latency ms", Better::Lower, 3, true),
        metric(
            WORKLOAD,
            "lost_pct",
            "queries lost %",
            Better::Lower,
            2,
            false,
        ),
        metric(
            WORKLOAD,
            "queries_per_cpu_s",
            "queries per balancer CPU-s",
            Better::Higher,
            0,
            true,
        ),
    ],
};

const FIXED: Shape = Shape {
    rate: Some(FIXED_QPS),
    metrics: [
        metric(
            FIXED_WORKLOAD,
            "queries_per_s",
            "queries/s (offered 20000)",
            Better::Higher,
            0,
            false,
        ),
        metric(
            FIXED_WORKLOAD,
            "p50_ms",
            "p50 latency ms",
            Better::Lower,
            3,
            true,
        ),
        metric(
            FIXED_WORKLOAD,
            "p99_ms",
            "p99 latency ms",
            Better::Lower,
            3,
            true,
        ),
        metric(
            FIXED_WORKLOAD,
            "lost_pct",
            "queries lost %",
            Better::Lower,
            2,
            false,
        ),
        metric(
            FIXED_WORKLOAD,
            "cpu_us_per_query",
            "balancer CPU µs per query",
            Better::Lower,
            1,
            true,
        ),
    ],
};

/// What dnsperf asks, in turn: answers of 50 to 120 bytes.
const QUERIES: &str = "www.bench.test A\nbench.test SOA\napi.bench.test A\n\
    www.bench.test AAAA\nbench.test MX\nbench.test TXT\nmail.bench.test A\nbench.test NS\n";

/// One repetition: a fresh nsd and contender, then dnsperf through it at full speed and at
/// the fixed rate.
pub fn run(ctx: &Ctx, c: Contender, rep: &str, res: &mut Results) -> Result<()> {
    let nsd = nsd::start(ctx)?;
    let front = Front::Udp { responses: Some(1) };
    let running = contenders::start_front(ctx, c, front, nsd.port)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], running.port));
    crate::udp::probe(
        addr,
        &nsd::query(0x7467),
        nsd::answers(0x7467),
        READY_TIMEOUT,
    )
    .with_context(|| format!("{c}: no DNS answer through it"))?;
    for shape in [SATURATED, FIXED] {
        measure(ctx, &running, &shape, rep, res)?;
    }
    running.stop()?;
    nsd.stop()
}

/// One dnsperf run through `running`, with the balancer's CPU over it.
fn measure(
    ctx: &Ctx,
    running: &contenders::Running,
    shape: &Shape,
    rep: &str,
    res: &mut Results,
) -> Result<()> {
    let c = running.contender;
    let dir = ctx.run_dir("dnsperf")?;
    let balancer = running.proc.as_ref();
    let before = balancer.map(Proc::cpu_ticks).transpose()?;
    let perf =
        dnsperf(ctx, running.port, shape.rate, &dir).with_context(|| format!("{c}: dnsperf"))?;
    let after = balancer.map(Proc::cpu_ticks).transpose()?;
    shape.metrics.into_iter().for_each(|m| res.declare(m));
    let [qps, p50, p99, lost, cpu] = shape.metrics;
    res.add(qps, c, perf.qps);
    res.add(p50, c, perf.p50_ms);
    res.add(p99, c, perf.p99_ms);
    res.add(lost, c, perf.lost_pct());
    let pace = shape
        .rate
        .map_or_else(|| "max".to_owned(), |r| format!("-Q {r}"));
    let mut line = format!(
        "{rep} {c:<15} {pace:<8} {:8.0} queries/s  p50 {:.3} ms  p99 {:.3} ms  lost {:.2}%",
        perf.qps,
        perf.p50_ms,
        perf.p99_ms,
        perf.lost_pct()
    );
    if let (Some(before), Some(after)) = (before, after) {
        let cpu_s = after.saturating_sub(before) as f64 / ctx.clk_tck;
        if cpu_s > 0.0 {
            let figure = match shape.rate {
                None => perf.completed as f64 / cpu_s,
                Some(_) => cpu_s * 1e6 / perf.completed as f64,
            };
            res.add(cpu, c, figure);
            let d = cpu.digits;
            line += &format!("  {figure:.d$} {}", cpu.label);
        }
    }
    println!("{line}");
    if let Some(rate) = shape.rate
        && perf.qps < 0.95 * f64::from(rate)
    {
        res.note(format!(
            "{} {c}: WARNING: carried {:.0} of the {rate} queries/s offered",
            cpu.workload, perf.qps
        ));
    }
    if perf.other_rcodes > 0 {
        res.note(format!(
            "{} {c}: {} answers were not NOERROR",
            cpu.workload, perf.other_rcodes
        ));
    }
    Ok(())
}

/// What one dnsperf run reported.
#[derive(Debug, Default, PartialEq)]
struct Perf {
    sent: u64,
    completed: u64,
    qps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Answers with an RCODE other than NOERROR.
    other_rcodes: u64,
}

impl Perf {
    fn lost_pct(&self) -> f64 {
        match self.sent {
            0 => 0.0,
            s => s.saturating_sub(self.completed) as f64 * 100.0 / s as f64,
        }
    }
}

/// Runs dnsperf against 127.0.0.1:`port`; its per-query lines are parsed and then deleted
/// (tens of MB per run), its statistics kept in `dir`.
fn dnsperf(ctx: &Ctx, port: u16, rate: Option<u32>, dir: &Path) -> Result<Perf> {
    let secs = ctx.settings.secs;
    let queries = dir.join("queries.txt");
    fs::write(&queries, QUERIES).with_context(|| format!("writing {}", queries.display()))?;
    let mut cmd = Command::new("dnsperf");
    cmd.args(["-s", "127.0.0.1", "-p", &port.to_string()])
        .arg("-d")
        .arg(&queries)
        .args(["-l", &secs.to_string(), "-c", &CLIENTS.to_string()])
        .args(["-q", &OUTSTANDING.to_string()])
        .args(["-t", &QUERY_TIMEOUT_S.to_string(), "-v"])
        .args(["-O", "suppress=timeouts"]);
    if let Some(rate) = rate {
        cmd.args(["-Q", &rate.to_string()]);
    }
    let timeout = Duration::from_secs(secs + u64::from(QUERY_TIMEOUT_S) + 30);
    let out = crate::procs::run_tool("dnsperf", &mut cmd, dir, timeout)?;
    let kept: String = out
        .lines()
        .filter(|l| !l.starts_with("> "))
        .map(|l| format!("{l}\n"))
        .collect();
    let _ = fs::write(dir.join("dnsperf.out"), &kept);
    parse(&out).with_context(|| format!("parsing dnsperf output:\n{kept}"))
}

fn parse(out: &str) -> Result<Perf> {
    let mut perf = Perf::default();
    let (mut sent, mut completed, mut qps) = (None, None, None);
    let mut latencies: Vec<f64> = Vec::new();
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            // `> NOERROR www.bench.test A 0.000178`; a timed-out query reads `> T ...`.
            [">", rcode, .., latency] if *rcode != "T" => {
                if let Ok(s) = latency.parse::<f64>() {
                    latencies.push(s * 1000.0);
                }
            }
            ["Queries", "sent:", n, ..] => sent = n.parse().ok(),
            ["Queries", "completed:", n, ..] => completed = n.parse().ok(),
            ["Queries", "per", "second:", n] => qps = n.parse().ok(),
            ["Response", "codes:", codes @ ..] => {
                // `NOERROR 379256 (100.00%), NXDOMAIN 3 (0.00%)`
                for pair in codes.chunks(3) {
                    if let [code, n, ..] = pair
                        && *code != "NOERROR"
                    {
                        perf.other_rcodes += n.parse::<u64>().unwrap_or(0);
                    }
                }
            }
            _ => {}
        }
    }
    perf.sent = sent.context("no `Queries sent:` line")?;
    perf.completed = completed.context("no `Queries completed:` line")?;
    perf.qps = qps.context("no `Queries per second:` line")?;
    if perf.completed == 0 || latencies.is_empty() {
        bail!("dnsperf completed no query");
    }
    latencies.sort_by(f64::total_cmp);
    perf.p50_ms = percentile(&latencies, 50.0);
    perf.p99_ms = percentile(&latencies, 99.0);
    Ok(perf)
}

/// Nearest-rank percentile of sorted, non-empty `values`.
fn percentile(values: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// Checked at every run (cheap), so that a dnsperf whose output changed fails at once.
pub fn self_test() -> Result<()> {
    let mut sample = String::from("[Status] Testing complete (time limit)\n");
    for i in 1..=100 {
        sample += &format!("> NOERROR www.bench.test A 0.{i:06}\n");
    }
    sample += "> T www.bench.test A\n\nStatistics:\n\n  Queries sent:         102\n\
               \x20 Queries completed:    101 (99.02%)\n  Queries lost:         1 (0.98%)\n\n\
               \x20 Response codes:       NOERROR 100 (99.01%), SERVFAIL 1 (0.99%)\n\
               \x20 Queries per second:   20.123\n";
    let got = parse(&sample)?;
    let want = Perf {
        sent: 102,
        completed: 101,
        qps: 20.123,
        p50_ms: 0.050,
        p99_ms: 0.099,
        other_rcodes: 1,
    };
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    let same = (got.sent, got.completed, got.other_rcodes) == (want.sent, want.completed, 1)
        && close(got.qps, want.qps)
        && close(got.p50_ms, want.p50_ms)
        && close(got.p99_ms, want.p99_ms);
    if !same {
        bail!("dnsperf output parser self-test: got {got:?}, want {want:?}");
    }
    Ok(())
}
