//! Loopback throughput benchmark for tollgate.
//!
//! Moves a fixed amount of data (default 1 GiB) over 127.0.0.1 from a client
//! to a "sink" server that reads and discards it, in three modes:
//!
//! * `direct`: client → sink, no proxy (the baseline);
//! * `splice`: client → tollgate (`forwarding: splice`) → sink;
//! * `copy`:   client → tollgate (`forwarding: copy`) → sink.
//!
//! For each run it reports throughput in Gbit/s (from the first connect until
//! the sink has seen EOF on every stream) and, for the proxied modes, the CPU
//! time of the tollgate process per GiB moved (utime + stime from
//! `/proc/PID/stat`, delta over the transfer). Modes alternate
//! (direct, splice, copy, direct, …); the median and min–max are printed.
//!
//! Run with `cargo bench --bench throughput`; it first builds the release
//! binary with `cargo build --release --bin tollgate`. Environment variables:
//!
//! * `TOLLGATE_BENCH_GIB`: GiB per run, fractional allowed (default 1);
//! * `TOLLGATE_BENCH_REPS`: repetitions of each mode (default 3);
//! * `TOLLGATE_BENCH_STREAMS`: parallel TCP streams sharing the bytes (default 1).
//!
//! Smoke run: `TOLLGATE_BENCH_GIB=0.05 TOLLGATE_BENCH_REPS=1 cargo bench --bench throughput`.

use std::fmt::Display;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::str::FromStr;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};
use std::{env, thread};

#[path = "../common/child.rs"]
mod child;
#[path = "../common/procfs.rs"]
mod procfs;
#[path = "../common/streams.rs"]
mod streams;
use child::{Ctx, Res, Tollgate};
use streams::summary;

const BUF_SIZE: usize = 256 * 1024;
const GIB: f64 = (1u64 << 30) as f64;

/// Modes in the order they alternate; the proxied ones are tollgate's `forwarding` values.
const MODES: [&str; 3] = ["direct", "splice", "copy"];

struct Settings {
    reps: usize,
    streams: usize,
    per_stream: u64,
    /// Per-run deadline: 120 s, scaled up for transfers above 1 GiB.
    deadline: Duration,
    clk_tck: f64,
}

impl Settings {
    fn from_env() -> Res<Self> {
        let gib: f64 = env_or("TOLLGATE_BENCH_GIB", 1.0)?;
        let reps: usize = env_or("TOLLGATE_BENCH_REPS", 3)?;
        let streams: usize = env_or("TOLLGATE_BENCH_STREAMS", 1)?;
        if !(gib.is_finite() && gib > 0.0) || reps == 0 || streams == 0 {
            return Err("TOLLGATE_BENCH_GIB must be > 0, REPS and STREAMS >= 1".into());
        }
        let per_stream = (gib * GIB) as u64 / streams as u64;
        if per_stream == 0 {
            return Err("TOLLGATE_BENCH_GIB is too small for the stream count".into());
        }
        let deadline = Duration::from_secs_f64(120.0 * gib.max(1.0));
        let clk_tck = procfs::clk_tck().ctx("the clock-tick rate")?;
        Ok(Settings {
            reps,
            streams,
            per_stream,
            deadline,
            clk_tck,
        })
    }

    fn total(&self) -> u64 {
        self.per_stream * self.streams as u64
    }
}

fn env_or<T: FromStr<Err: Display>>(name: &str, default: T) -> Res<T> {
    match env::var(name) {
        Ok(v) => v.trim().parse().ctx(format!("{name}={v:?}")),
        Err(_) => Ok(default),
    }
}

/// One measured run; `cpu` is tollgate's CPU-seconds per GiB.
struct Sample {
    mode: &'static str,
    gbps: f64,
    cpu: Option<f64>,
}

/// Everything a run needs.
struct Bench {
    settings: Settings,
    exe: PathBuf,
    sink: Sink,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("throughput bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Res<()> {
    let settings = Settings::from_env()?;
    let (exe, sink) = (build_tollgate()?, Sink::start()?);
    print_header(&settings);
    let reps = settings.reps;
    let bench = Bench {
        settings,
        exe,
        sink,
    };
    let mut samples = Vec::new();
    for rep in 1..=reps {
        for mode in MODES {
            let s = bench.run_once(mode)?;
            let cpu = s.cpu.map(|c| format!("{c:.3} CPU-s/GiB"));
            let (gbps, cpu) = (s.gbps, cpu.unwrap_or_default());
            println!("  rep {rep}/{reps} {mode:<6} {gbps:7.2} Gbit/s  {cpu}");
            samples.push(s);
        }
    }
    print_table(&samples);
    Ok(())
}

fn print_header(s: &Settings) {
    let (total, streams, reps) = (s.total(), s.streams, s.reps);
    let gib = total as f64 / GIB;
    let nproc = thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "tollgate throughput: {total} bytes ({gib:.3} GiB) per run, {streams} stream(s), {reps} rep(s), nproc {nproc}"
    );
}

/// Builds the release binary and returns its path.
fn build_tollgate() -> Res<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&cargo)
        .args(["build", "--release", "--bin", "tollgate"])
        .current_dir(&manifest)
        .status()
        .ctx(format!("running {cargo:?}"))?;
    if !status.success() {
        return Err(format!("cargo build --release --bin tollgate: {status}"));
    }
    let target = env::var_os("CARGO_TARGET_DIR").map_or("target".into(), PathBuf::from);
    let exe = manifest.join(target).join("release").join("tollgate");
    if !exe.is_file() {
        return Err(format!("{} not found after build", exe.display()));
    }
    Ok(exe)
}

impl Bench {
    fn run_once(&self, mode: &'static str) -> Res<Sample> {
        let proxy = match mode {
            "direct" => None,
            _ => Some(Tollgate::start(
                &self.exe,
                &config_yaml(mode, self.sink.addr),
                &[],
            )?),
        };
        let target = proxy.as_ref().map_or(self.sink.addr, |(_, addr)| *addr);
        let pid = proxy.as_ref().map(|(t, _)| t.pid()).transpose()?;
        let (secs, ticks) = self.transfer(target, pid)?;
        if let Some((tollgate, _)) = proxy {
            tollgate.stop()?;
        }
        let bytes = self.settings.total() as f64;
        let cpu = ticks.map(|t| t as f64 / self.settings.clk_tck / (bytes / GIB));
        let gbps = bytes * 8.0 / secs / 1e9;
        Ok(Sample { mode, gbps, cpu })
    }

    /// Runs one timed transfer to `to`; returns (seconds, CPU ticks of `pid`).
    fn transfer(&self, to: SocketAddr, pid: Option<i32>) -> Res<(f64, Option<u64>)> {
        let (streams, bytes) = (self.settings.streams, self.settings.per_stream);
        self.sink.drain_stale();
        let deadline = Instant::now() + self.settings.deadline;
        let cpu_before = pid.map(tollgate_ticks).transpose()?;
        let start = Instant::now();
        let clients: Vec<_> = (0..streams)
            .map(|_| {
                // A failing client also reports to the sink's channel, so the
                // wait below ends at once instead of at the deadline.
                let failed = self.sink.tx.clone();
                thread::spawn(move || {
                    let result = client(to, bytes, deadline);
                    if let Err(e) = &result {
                        let _ = failed.send(Err(e.clone()));
                    }
                    result
                })
            })
            .collect();
        self.sink.wait_for(streams, bytes, deadline)?;
        let secs = start.elapsed().as_secs_f64();
        let cpu_after = pid.map(tollgate_ticks).transpose()?;
        for handle in clients {
            handle.join().map_err(|_| "client thread panicked")??;
        }
        let ticks = cpu_before.zip(cpu_after).map(|(b, a)| a.saturating_sub(b));
        Ok((secs, ticks))
    }
}

/// Sends `bytes` bytes, half-closes, then waits for the peer's EOF.
fn client(to: SocketAddr, bytes: u64, deadline: Instant) -> Res<()> {
    let buf: Vec<u8> = (0..BUF_SIZE).map(|i| (i % 251) as u8 + 1).collect();
    let timeout = deadline.saturating_duration_since(Instant::now());
    let timeout = timeout.max(Duration::from_millis(1));
    let mut stream = TcpStream::connect_timeout(&to, timeout).ctx(format!("connect {to}"))?;
    stream.set_write_timeout(Some(timeout)).ctx("SO_SNDTIMEO")?;
    stream.set_read_timeout(Some(timeout)).ctx("SO_RCVTIMEO")?;
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left).map_or(BUF_SIZE, |l| l.min(BUF_SIZE));
        stream.write_all(&buf[..n]).ctx("client write")?;
        left -= n as u64;
    }
    stream.shutdown(Shutdown::Write).ctx("client shutdown")?;
    match stream.read(&mut [0u8; 64]).ctx("client waiting for EOF")? {
        0 => Ok(()),
        n => Err(format!("client got {n} unexpected bytes back")),
    }
}

/// A server that counts and discards everything it receives, reporting the
/// byte count of each connection once it sees EOF (then closing it).
struct Sink {
    addr: SocketAddr,
    tx: Sender<Res<u64>>,
    done: Receiver<Res<u64>>,
}

impl Sink {
    fn start() -> Res<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").ctx("sink bind")?;
        let addr = listener.local_addr().ctx("sink local_addr")?;
        let (tx, done) = mpsc::channel();
        let accept_tx = tx.clone();
        thread::spawn(move || accept_loop(listener, accept_tx));
        Ok(Sink { addr, tx, done })
    }

    fn drain_stale(&self) {
        while self.done.try_recv().is_ok() {}
    }

    /// Waits until `streams` connections each delivered exactly `per_stream` bytes.
    fn wait_for(&self, streams: usize, per_stream: u64, deadline: Instant) -> Res<()> {
        streams::wait_for(&self.done, streams, per_stream, deadline)
    }
}

fn accept_loop(listener: TcpListener, tx: Sender<Res<u64>>) {
    for conn in listener.incoming() {
        let tx = tx.clone();
        match conn {
            Ok(stream) => drop(thread::spawn(move || tx.send(discard(stream)))),
            Err(e) => drop(tx.send(Err(format!("sink accept: {e}")))),
        }
    }
}

fn discard(mut stream: TcpStream) -> Res<u64> {
    let mut buf = vec![0u8; BUF_SIZE];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("sink read after {total} bytes: {e}")),
        }
    }
}

fn fmt_summary(v: Option<(f64, f64, f64)>, precision: usize) -> String {
    let p = precision;
    v.map_or("-".into(), |(m, lo, hi)| {
        format!("{m:.p$} ({lo:.p$}-{hi:.p$})")
    })
}

fn print_table(samples: &[Sample]) {
    let rate_header = "Gbit/s median (min-max)";
    println!("\nmode     {rate_header:<28} tollgate CPU-s/GiB median (min-max)");
    let mut medians = [0.0; 3];
    for (median, mode) in medians.iter_mut().zip(MODES) {
        let of_mode = || samples.iter().filter(move |s| s.mode == mode);
        let rate = summary(of_mode().map(|s| s.gbps).collect());
        let cpu = summary(of_mode().filter_map(|s| s.cpu).collect());
        *median = rate.map_or(0.0, |r| r.0);
        println!(
            "{mode:<8} {:<28} {}",
            fmt_summary(rate, 2),
            fmt_summary(cpu, 3)
        );
    }
    let [direct, splice, copy] = medians;
    let (s, c) = (splice / direct, copy / direct);
    println!("ratio splice/direct: {s:.2}   copy/direct: {c:.2}");
}

/// utime + stime of the tollgate child, in clock ticks.
fn tollgate_ticks(pid: i32) -> Res<u64> {
    procfs::cpu_ticks(pid).map_err(|e| format!("tollgate's CPU time: {e:#}"))
}

fn config_yaml(forwarding: &str, backend: SocketAddr) -> String {
    format!(
        "workers: 1\nforwarding: {forwarding}\n\
         listeners:\n  bench:\n    bind: \"127.0.0.1:0\"\n    pool: sink\n\
         pools:\n  sink:\n    backends:\n      - address: \"{backend}\"\n"
    )
}
