//! Workloads 2 and 3, HTTP through the contenders with wrk: new connections per second
//! (`Connection: close`, so every request is a new TCP connection through the balancer) and
//! requests per second over keep-alive connections.
//!
//! Owns running wrk against each contender in front of a fresh nginx `return 200` backend,
//! parsing wrk's text output (Requests/sec, the `--latency` distribution, socket errors and
//! non-2xx counts) and surfacing errors: they become a metric in the table and a note.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::contenders::{self, Contender};
use crate::report::{Better, Metric, Results};
use crate::{Ctx, backends};

/// One of the two wrk workloads.
#[derive(Clone, Copy)]
pub struct Shape {
    pub workload: &'static str,
    connections: u32,
    close: bool,
    rate_label: &'static str,
}

pub const CONNS: Shape = Shape {
    workload: "conns/s",
    connections: 32,
    close: true,
    rate_label: "new connections/s",
};

pub const REQRESP: Shape = Shape {
    workload: "req/resp",
    connections: 64,
    close: false,
    rate_label: "requests/s",
};

impl Shape {
    fn metrics(self) -> [Metric; 6] {
        let m = |key, label, better, digits, ratio| Metric {
            workload: self.workload,
            key,
            label,
            better,
            digits,
            ratio,
        };
        [
            m("requests_per_s", self.rate_label, Better::Higher, 0, true),
            m("p50_ms", "p50 latency ms", Better::Lower, 3, true),
            m("p99_ms", "p99 latency ms", Better::Lower, 3, true),
            m(
                "errors",
                "wrk errors (socket + non-2xx)",
                Better::Lower,
                0,
                false,
            ),
            m(
                "cpu_us_per_request",
                if self.close {
                    "balancer CPU µs per connection"
                } else {
                    "balancer CPU µs per request"
                },
                Better::Lower,
                1,
                true,
            ),
            m(
                "per_cpu_s",
                if self.close {
                    "connections per balancer CPU-s"
                } else {
                    "requests per balancer CPU-s"
                },
                Better::Higher,
                0,
                true,
            ),
        ]
    }
}

/// What wrk printed, parsed.
#[derive(Debug, Default, PartialEq)]
struct Wrk {
    requests_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    /// connect, read, write, timeout.
    socket_errors: [u64; 4],
    non_2xx: u64,
}

/// One repetition: a fresh HTTP backend and contender, one wrk run.
pub fn run(ctx: &Ctx, shape: Shape, c: Contender, rep: &str, res: &mut Results) -> Result<()> {
    let backend = backends::http(ctx)?;
    let running = contenders::start(ctx, c, backend.port)?;
    let secs = ctx.settings.secs;
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t2",
        &format!("-c{}", shape.connections),
        &format!("-d{secs}s"),
    ]);
    cmd.arg("--latency");
    if shape.close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(format!("http://127.0.0.1:{}/", running.port));
    let dir = ctx.run_dir("wrk")?;
    let timeout = Duration::from_secs(secs + 30);
    // The balancer's own CPU over the run: on a machine where wrk, the backend and the
    // balancer share the cores, CPU per request is the figure that does not depend on how
    // the scheduler shared them.
    let balancer = running.proc.as_ref();
    let before = balancer.map(|p| p.cpu_ticks()).transpose()?;
    let out = crate::procs::run_tool("wrk", &mut cmd, &dir, timeout)
        .with_context(|| format!("{c}: wrk"))?;
    let after = balancer.map(|p| p.cpu_ticks()).transpose()?;
    let wrk = parse(&out).with_context(|| format!("{c}: parsing wrk output:\n{out}"))?;
    let errors = wrk.socket_errors.iter().sum::<u64>() + wrk.non_2xx;
    let [rate, p50, p99, errs, cpu, per_cpu] = shape.metrics();
    res.add(rate, c, wrk.requests_per_s);
    res.add(p50, c, wrk.p50_ms);
    res.add(p99, c, wrk.p99_ms);
    res.add(errs, c, errors as f64);
    let mut line = format!(
        "{rep} {c:<15} {:9.0} {}  p50 {:.3} ms  p99 {:.3} ms  errors {errors}",
        wrk.requests_per_s, shape.rate_label, wrk.p50_ms, wrk.p99_ms
    );
    if let (Some(before), Some(after)) = (before, after) {
        let cpu_us = after.saturating_sub(before) as f64 / ctx.clk_tck * 1e6;
        let per_request = cpu_us / wrk.requests as f64;
        res.add(cpu, c, per_request);
        if per_request > 0.0 {
            res.add(per_cpu, c, 1e6 / per_request);
        }
        line += &format!("  {per_request:.1} CPU µs/request");
    }
    println!("{line}");
    if errors > 0 {
        let [connect, read, write, timeout] = wrk.socket_errors;
        let note = format!(
            "{} {c}: WARNING: wrk saw {errors} errors in {} requests: socket errors connect \
             {connect}, read {read}, write {write}, timeout {timeout}; non-2xx {}",
            shape.workload, wrk.requests, wrk.non_2xx
        );
        println!("    {note}");
        res.note(note);
    }
    running.stop()?;
    backend.stop()
}

fn parse(out: &str) -> Result<Wrk> {
    let mut wrk = Wrk::default();
    let (mut rate, mut p50, mut p99) = (None, None, None);
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => rate = v.parse::<f64>().ok(),
            ["50%", v] => p50 = duration_ms(v),
            ["99%", v] => p99 = duration_ms(v),
            [n, "requests", "in", ..] => wrk.requests = n.parse().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => {
                // "connect 0, read 0, write 0, timeout 0"
                let numbers: Vec<u64> = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse().ok())
                    .collect();
                wrk.socket_errors = numbers
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("unexpected socket error line {line:?}"))?;
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => wrk.non_2xx = n.parse().unwrap_or(0),
            _ => {}
        }
    }
    wrk.requests_per_s = rate.context("no `Requests/sec:` line")?;
    wrk.p50_ms = p50.context("no 50% line in the latency distribution")?;
    wrk.p99_ms = p99.context("no 99% line in the latency distribution")?;
    if wrk.requests == 0 || wrk.requests_per_s <= 0.0 {
        bail!("wrk completed no request");
    }
    Ok(wrk)
}

/// `245.00us`, `1.07ms`, `2.01s`, `1.50m` in milliseconds.
fn duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|ch: char| ch.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    Some(number * scale)
}

/// Checked at every run (cheap), so a wrk whose output format changed fails at once rather
/// than producing an empty table.
pub fn self_test() -> Result<()> {
    let sample = "Running 1s test @ http://127.0.0.1:1/\n  2 threads and 32 connections\n\
                  \x20 Latency Distribution\n     50%  513.00us\n     75%  703.00us\n\
                  \x20    90%    0.85ms\n     99%    1.82s\n\
                  \x20 111097 requests in 1.10s, 15.89MB read\n\
                  \x20 Socket errors: connect 1, read 2, write 3, timeout 4\n\
                  \x20 Non-2xx or 3xx responses: 5\n\
                  Requests/sec: 100963.13\nTransfer/sec:     14.44MB\n";
    let got = parse(sample)?;
    let want = Wrk {
        requests_per_s: 100963.13,
        p50_ms: 0.513,
        p99_ms: 1820.0,
        requests: 111097,
        socket_errors: [1, 2, 3, 4],
        non_2xx: 5,
    };
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9 * b.abs().max(1.0);
    let same = close(got.requests_per_s, want.requests_per_s)
        && close(got.p50_ms, want.p50_ms)
        && close(got.p99_ms, want.p99_ms)
        && (got.requests, got.socket_errors, got.non_2xx)
            == (want.requests, want.socket_errors, want.non_2xx);
    if !same {
        bail!("wrk output parser self-test: got {got:?}, want {want:?}");
    }
    Ok(())
}
