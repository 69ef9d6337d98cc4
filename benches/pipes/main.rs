//! `cargo bench --bench pipes`: splice forwarding as root and as an unprivileged user, with
//! enough parallel streams that the kernel's per-user pipe quota bites.
//!
//! An unprivileged user may hold `fs.pipe-user-pages-soft` pages of pipes (16384 by default:
//! 512 of tollgate's 128 KiB pipes); past it, new pipes come out at two pages and tollgate
//! refuses them and copies instead. Root (CAP_SYS_RESOURCE or CAP_SYS_ADMIN) is exempt. Each
//! run starts the release binary fresh (`workers: auto`, `forwarding: splice`) as the user of
//! the row — `nobody` through `setpriv --reuid=65534 --regid=65534 --clear-groups`
//! (util-linux; no account beyond `nobody` is needed) — moves STREAMS × MIB bytes from
//! parallel client streams through it to a sink (`load.rs`), then reads tollgate's pipe
//! metrics from its admin API. Users alternate (root, nobody, root, ...).
//!
//! Reported per user, median (min–max) over the repetitions: Gbit/s (first connect to the
//! sink seeing every stream end), tollgate's CPU-seconds (utime + stime from `/proc`) per GB,
//! pipes made, pipes the kernel refused (quota, descriptors), bursts that copied for want of
//! a pipe (limit, refused, backoff), and pipes open at the end (cached by the workers).
//!
//! Pipes are held at once only by bursts that wait for their destination with bytes in the
//! pipe, so the sink is a slow receiver (a 64 KiB `SO_RCVBUF`) and each stream carries more
//! than the socket buffers on the way hold (4 MiB): as in front of many slow clients, most
//! pumps wait holding a full pipe, and 2048 of them want more pipes than the quota allows.
//!
//! Environment: `TOLLGATE_PIPES_STREAMS` (default 2048), `TOLLGATE_PIPES_MIB` per stream
//! (default 4), `TOLLGATE_PIPES_REPS` (default 3), `TOLLGATE_PIPES_USERS` (default
//! `root,nobody`; not running as root, only `self` is possible), `TOLLGATE_PIPES_EXE`
//! (another tollgate binary, e.g. an older build to compare; pipe figures are n/a for one
//! without the pipe metrics), `TOLLGATE_PIPES_FORWARDING` (default `splice`; `copy` gives
//! the cost of copying everything, for reference). Every run has a deadline (120 s), and the count of runs is
//! REPS × users, so the bench always ends; any failed run makes it exit non-zero.

#[path = "../common/child.rs"]
mod child;
mod load;
#[path = "../common/procfs.rs"]
mod procfs;
mod report;
#[path = "../common/streams.rs"]
mod streams;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};
use std::{env, fmt::Display, fs};

use child::{Ctx, Res, Tollgate};
use load::Sink;
use report::Sample;

const GB: f64 = 1e9;
const RUN_DEADLINE: Duration = Duration::from_secs(120);
const SETPRIV_NOBODY: [&str; 4] = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
];

struct Settings {
    streams: usize,
    per_stream: u64,
    reps: usize,
    users: Vec<String>,
    clk_tck: f64,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pipes bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Res<()> {
    let s = settings()?;
    let exe = env::var_os("TOLLGATE_PIPES_EXE").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_tollgate")),
        PathBuf::from,
    );
    println!("binary: {}", exe.display());
    let sink = Sink::start()?;
    print_header(&s);
    let mut samples = Vec::new();
    for rep in 1..=s.reps {
        for user in &s.users {
            let sample = run_once(&s, &exe, &sink, user)?;
            println!("  rep {rep}/{} {}", s.reps, sample.line());
            samples.push(sample);
        }
    }
    report::table(&samples, &s.users);
    Ok(())
}

fn settings() -> Res<Settings> {
    let streams: usize = env_or("TOLLGATE_PIPES_STREAMS", 2048)?;
    let mib: u64 = env_or("TOLLGATE_PIPES_MIB", 4)?;
    let reps: usize = env_or("TOLLGATE_PIPES_REPS", 3)?;
    let users: String = env_or("TOLLGATE_PIPES_USERS", "root,nobody".to_owned())?;
    if streams == 0 || mib == 0 || reps == 0 {
        return Err("STREAMS, MIB and REPS must be at least 1".into());
    }
    let users: Vec<String> = users.split(',').map(|u| u.trim().to_owned()).collect();
    let root = is_root()?;
    for user in &users {
        match user.as_str() {
            "root" | "nobody" if !root => {
                return Err(format!("user {user} needs the bench to run as root"));
            }
            "root" | "nobody" | "self" => {}
            other => return Err(format!("unknown user {other:?}: root, nobody or self")),
        }
    }
    let clk_tck = procfs::clk_tck().ctx("the clock-tick rate")?;
    Ok(Settings {
        streams,
        per_stream: mib << 20,
        reps,
        users,
        clk_tck,
    })
}

fn env_or<T: FromStr<Err: Display>>(name: &str, default: T) -> Res<T> {
    match env::var(name) {
        Ok(v) => v.trim().parse().ctx(format!("{name}={v:?}")),
        Err(_) => Ok(default),
    }
}

/// Whether this process's effective user is root (`/proc/self/status`, `Uid:` line).
fn is_root() -> Res<bool> {
    let status = fs::read_to_string("/proc/self/status").ctx("reading /proc/self/status")?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .ok_or("no Uid: line in /proc/self/status")?;
    Ok(uid == "0")
}

fn sysctl(name: &str) -> String {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    fs::read_to_string(path).map_or("?".into(), |v| v.trim().to_owned())
}

fn print_header(s: &Settings) {
    let total = s.streams as u64 * s.per_stream;
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "tollgate pipes: {} streams x {} MiB = {:.2} GB per run, {} rep(s), users {}, nproc {nproc}",
        s.streams,
        s.per_stream >> 20,
        total as f64 / GB,
        s.reps,
        s.users.join(",")
    );
    println!(
        "fs.pipe-user-pages-soft {}, fs.pipe-user-pages-hard {}, fs.pipe-max-size {}",
        sysctl("fs.pipe-user-pages-soft"),
        sysctl("fs.pipe-user-pages-hard"),
        sysctl("fs.pipe-max-size")
    );
}

fn run_once(s: &Settings, exe: &std::path::Path, sink: &Sink, user: &str) -> Res<Sample> {
    let admin = free_port()?;
    let yaml = config_yaml(sink.addr, admin);
    let prefix: &[&str] = if user == "nobody" {
        &SETPRIV_NOBODY
    } else {
        &[]
    };
    let (tollgate, front) = Tollgate::start(exe, &yaml, prefix)?;
    let pid = tollgate.pid()?;
    sink.drain_stale();
    let deadline = Instant::now() + RUN_DEADLINE;
    let before = procfs::cpu_ticks(pid).map_err(|e| format!("{e:#}"))?;
    let started = Instant::now();
    let clients = load::clients(front, s.streams, s.per_stream, deadline);
    sink.wait_for(s.streams, s.per_stream, deadline)?;
    let secs = started.elapsed().as_secs_f64();
    let after = procfs::cpu_ticks(pid).map_err(|e| format!("{e:#}"))?;
    clients.join().map_err(|_| "the client thread panicked")??;
    let pipes = report::scrape(admin)?;
    tollgate.stop()?;
    let bytes = (s.streams as u64 * s.per_stream) as f64;
    let cpu = after.saturating_sub(before) as f64 / s.clk_tck;
    Ok(Sample {
        user: user.to_owned(),
        gbps: bytes * 8.0 / secs / GB,
        cpu_per_gb: cpu / (bytes / GB),
        pipes,
    })
}

fn config_yaml(sink: SocketAddr, admin: u16) -> String {
    let forwarding = env::var("TOLLGATE_PIPES_FORWARDING").unwrap_or_else(|_| "splice".into());
    format!(
        "workers: auto\nforwarding: {forwarding}\n\
         admin:\n  bind: \"127.0.0.1:{admin}\"\n\
         listeners:\n  bench:\n    bind: \"127.0.0.1:0\"\n    pool: sink\n\
         pools:\n  sink:\n    backends:\n      - address: \"{sink}\"\n"
    )
}

/// A port free a moment ago, for the admin API (it is not logged, so it cannot be 0).
fn free_port() -> Res<u16> {
    let l = TcpListener::bind("127.0.0.1:0").ctx("finding a free port")?;
    Ok(l.local_addr().ctx("free port")?.port())
}
