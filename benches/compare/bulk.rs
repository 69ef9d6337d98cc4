//! Workload 1, bulk transfer: iperf3 through each contender with one and with eight
//! parallel streams.
//!
//! Owns running `iperf3 -c ... -J`, reading the receiver-side totals from its JSON, and the
//! balancer's CPU accounting: utime + stime summed over its processes, taken just before
//! the client starts and after it exits, giving GB moved per CPU-second. After the 8-stream
//! run it also asks HAProxy's stats socket whether kernel pipes were used, which shows
//! whether `option splice-*` actually engaged.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::contenders::{self, Contender, Running};
use crate::report::{Better, Metric, Results};
use crate::{Ctx, backends};

/// Parallel stream counts, each its own iperf3 run on the same contender instance.
const STREAMS: [u32; 2] = [1, 8];

const GBPS: [Metric; 2] = [gbps("bulk -P1"), gbps("bulk -P8")];
const GB_PER_CPU: [Metric; 2] = [gb_per_cpu("bulk -P1"), gb_per_cpu("bulk -P8")];

const fn gbps(workload: &'static str) -> Metric {
    Metric {
        workload,
        key: "gbit_per_s",
        label: "Gbit/s (receiver)",
        better: Better::Higher,
        digits: 2,
        ratio: true,
    }
}

const fn gb_per_cpu(workload: &'static str) -> Metric {
    Metric {
        workload,
        key: "gb_per_cpu_s",
        label: "GB per balancer CPU-s",
        better: Better::Higher,
        digits: 2,
        ratio: true,
    }
}

/// What one iperf3 run measured.
struct Transfer {
    bytes: f64,
    gbps: f64,
    /// The balancer's CPU ticks during the run; `None` for `direct`.
    ticks: Option<u64>,
}

/// One repetition: a fresh iperf3 server and a fresh contender, then `-P 1` and `-P 8`.
pub fn run(ctx: &Ctx, c: Contender, rep: &str, res: &mut Results) -> Result<()> {
    let server = backends::iperf3(ctx)?;
    let running = contenders::start(ctx, c, server.port)?;
    for (i, streams) in STREAMS.into_iter().enumerate() {
        let t = transfer(ctx, &running, streams)
            .with_context(|| format!("{c}: iperf3 -P {streams}"))?;
        res.add(GBPS[i], c, t.gbps);
        let mut line = format!("{rep} {c:<15} -P{streams}  {:7.2} Gbit/s", t.gbps);
        if let Some(ticks) = t.ticks {
            if ticks == 0 {
                res.note(format!(
                    "bulk -P{streams} {c}: the balancer used under one clock tick of CPU"
                ));
            } else {
                let gb_per_cpu = t.bytes / (ticks as f64 / ctx.clk_tck) / 1e9;
                res.add(GB_PER_CPU[i], c, gb_per_cpu);
                line += &format!("  {gb_per_cpu:6.2} GB/CPU-s");
            }
        }
        println!("{line}");
        if matches!(c, Contender::Haproxy | Contender::HaproxySplice) && streams == 8 {
            check_splice(&running, res)?;
        }
    }
    // stop() fails if the balancer died meanwhile, which would void the CPU figures.
    running.stop()?;
    server.stop()
}

/// Runs the iperf3 client against the contender and measures the balancer's CPU meanwhile.
fn transfer(ctx: &Ctx, running: &Running, streams: u32) -> Result<Transfer> {
    let secs = ctx.settings.secs;
    let mut cmd = Command::new("iperf3");
    cmd.args(["-c", "127.0.0.1", "-J", "--connect-timeout", "5000"])
        .args(["-p", &running.port.to_string()])
        .args(["-t", &secs.to_string(), "-P", &streams.to_string()]);
    let balancer = running.proc.as_ref();
    let before = balancer.map(|p| p.cpu_ticks()).transpose()?;
    let dir = ctx.run_dir(&format!("iperf3-client-P{streams}"))?;
    let timeout = Duration::from_secs(secs + 30);
    let out = crate::procs::run_tool("iperf3-client", &mut cmd, &dir, timeout);
    let after = balancer.map(|p| p.cpu_ticks()).transpose()?;
    // iperf3 -J reports its own errors in the JSON, sometimes with exit status 0.
    let out = out?;
    let json: Value = serde_json::from_str(&out)
        .with_context(|| format!("iperf3 -J output is not JSON: {out:.300}"))?;
    if let Some(error) = json.get("error").and_then(Value::as_str) {
        bail!("iperf3 client: {error}");
    }
    let received = &json["end"]["sum_received"];
    let number = |key: &str| {
        received[key]
            .as_f64()
            .with_context(|| format!("iperf3 JSON has no end.sum_received.{key}"))
    };
    let (bytes, bps) = (number("bytes")?, number("bits_per_second")?);
    if bytes <= 0.0 {
        bail!("iperf3 moved no bytes");
    }
    let ticks = before.zip(after).map(|(b, a)| a.saturating_sub(b));
    Ok(Transfer {
        bytes,
        gbps: bps / 1e9,
        ticks,
    })
}

/// Notes whether HAProxy used kernel pipes: it must for `haproxy-splice` and must not for
/// `haproxy`, or the two variants are not what their names say.
fn check_splice(running: &Running, res: &mut Results) -> Result<()> {
    let c = running.contender;
    let pipes = haproxy_pipes(running).with_context(|| format!("{c}: reading pipe counters"))?;
    let splicing = c == Contender::HaproxySplice;
    let note = match (splicing, pipes) {
        (true, 0) => {
            format!("{c}: WARNING: no kernel pipe was ever allocated, splice did not engage")
        }
        (true, n) => {
            format!("{c}: splice engaged ({n} kernel pipes allocated after the bulk runs)")
        }
        (false, 0) => return Ok(()),
        (false, n) => {
            format!("{c}: WARNING: {n} kernel pipes allocated without the splice options")
        }
    };
    println!("    {note}");
    res.note(note);
    Ok(())
}

/// HAProxy's `PipesUsed` + `PipesFree` from `show info`: non-zero once splice has engaged.
pub fn haproxy_pipes(running: &Running) -> Result<u64> {
    let path = running.dir.join("haproxy.sock");
    let mut s =
        UnixStream::connect(&path).with_context(|| format!("connecting to {}", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .context("SO_RCVTIMEO")?;
    s.write_all(b"show info\n")
        .context("haproxy stats socket: send")?;
    let mut info = String::new();
    s.read_to_string(&mut info)
        .context("haproxy stats socket: read")?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .with_context(|| format!("no {name} in haproxy `show info`"))
    };
    Ok(field("PipesUsed:")? + field("PipesFree:")?)
}
