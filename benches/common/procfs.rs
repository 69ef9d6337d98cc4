//! What `/proc` and `sysconf` say about a process's CPU time, shared by the benchmarks
//! (`compare` and `throughput` include this file with `#[path]`): the fields of
//! `/proc/PID/stat`, its utime + stime, and the clock-tick rate they are counted in.

use std::fs;

use anyhow::{Context, Result, bail};

/// The fields of /proc/PID/stat after the parenthesised command name: state is [0], ppid
/// [1], utime [11], stime [12].
pub fn stat_fields(pid: i32) -> Result<Vec<String>> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let (_, after) = stat
        .rsplit_once(')')
        .with_context(|| format!("malformed {path}"))?;
    Ok(after.split_whitespace().map(str::to_owned).collect())
}

pub fn cpu_ticks(pid: i32) -> Result<u64> {
    let fields = stat_fields(pid)?;
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match (field(11), field(12)) {
        (Some(utime), Some(stime)) => Ok(utime + stime),
        _ => bail!("cannot parse utime/stime of pid {pid}"),
    }
}

pub fn clk_tck() -> Result<f64> {
    match tollgate::sys::signals::clock_ticks_per_second() {
        Ok(ticks) => Ok(ticks as f64),
        Err(e) => bail!("sysconf(_SC_CLK_TCK) failed: {e}"),
    }
}
