//! The longest a data-plane worker stalls while a reload reshapes a listener's per-source
//! table of 1,000,000 tracked sources, measured in-process from the outside: persistent
//! connections through tollgate echo one byte at a time, and the largest gap between two
//! echoes on one connection during a reload is what a transfer on that worker suffered.
//!
//! Set-up: tollgate (`Server::start_from` a config file, 2 workers, admin API) with one
//! listener `front` over an echo backend (threads of this process) and `per_source:
//! { connection_rate: 1/h, burst: 100000, max_tracked_sources: 2000000 }`; 1,000,000
//! distinct IPv4 sources admitted straight into the running listener's table (each then
//! owes its hour, so a reshape carries every one). Load: 8 persistent connections (the
//! kernel spreads them over both workers' `SO_REUSEPORT` sockets), each driven by a client
//! thread doing 1-byte round trips, and one thread opening short connections from
//! 127.0.0.1-8 all along, so that workers admit and drop tickets during the reshape (where a
//! locked table stalls them). After a quiet baseline, two reloads through `POST
//! /api/v1/reload` over plain HTTP/1.1 (the stable interface, not a Rust API):
//! `max_tracked_sources` 2000000 -> 2000001 (a new table, the same groups), then
//! `ipv4_prefix` 32 -> 24 (groups merge). A reload phase lasts from the request until the
//! published snapshot holds the new table: the reload itself is applied at once, and the
//! state moves after it, on a blocking thread, while the old table keeps serving.
//!
//! Printed per phase: how long it took, the echoes and short connections completed in it,
//! and the median, the number above 10 ms and the largest of the gaps between consecutive
//! echoes on one connection (a gap counts in every phase it overlaps); before that,
//! tollgate's own log line for each reshape. Only a worker blocked in admission stalls its
//! connections, so the echoes served by the other worker go on (and speed up) meanwhile:
//! the largest gap, not the median, is the figure.
//!
//! Run: `cargo bench --bench reshape` (about 10 s once built). Every loop stops by itself:
//! on the phases' end, or at `DEADLINE` whatever happens.
#![allow(clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use tollgate::app::Server;

const SOURCES: u32 = 1_000_000;
const PERSISTENT: usize = 8;
/// How long any loop of this benchmark may run, whatever happens.
const DEADLINE: Duration = Duration::from_secs(50);
/// Echo gaps kept per connection at most.
const MAX_SAMPLES: usize = 20_000_000;
const QUIET: Duration = Duration::from_secs(2);
const SETTLE: Duration = Duration::from_secs(1);

const PHASES: [&str; 6] = [
    "warm-up",
    "baseline (quiet)",
    "reload: max_tracked_sources +1",
    "between (quiet)",
    "reload: ipv4_prefix 32 -> 24",
    "after (quiet)",
];

fn config(backend: SocketAddr, max_tracked: u32, prefix: u8) -> String {
    format!(
        "workers: 2
admin:
  bind: \"127.0.0.1:0\"
shutdown:
  drain_timeout: 1s
listeners:
  front:
    bind: \"127.0.0.1:0\"
    pool: echo
    limits:
      per_source:
        connection_rate: 1/h
        burst: 100000
        ipv4_prefix: {prefix}
        max_tracked_sources: {max_tracked}
pools:
  echo:
    backends:
      - address: \"{backend}\"
"
    )
}

/// An echo server on its own threads, one per connection.
fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the echo backend");
    let addr = listener.local_addr().expect("echo backend address");
    thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// One gap between consecutive echoes: the phases at its start and end, in microseconds.
struct Gap {
    from: u8,
    to: u8,
    micros: u32,
}

/// 1-byte round trips on one persistent connection until `stop`.
fn echo_loop(front: SocketAddr, phase: &AtomicUsize, stop: &AtomicBool) -> Vec<Gap> {
    let mut s = TcpStream::connect(front).expect("connect to front");
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let (started, mut last, mut at) = (Instant::now(), Instant::now(), phase.load(Relaxed));
    let mut gaps = Vec::with_capacity(1 << 20);
    let mut b = [0u8; 1];
    while !stop.load(Relaxed) && gaps.len() < MAX_SAMPLES {
        s.write_all(&[7]).expect("echo write");
        s.read_exact(&mut b).expect("echo read");
        let (now, p) = (Instant::now(), phase.load(Relaxed));
        let micros = u32::try_from((now - last).as_micros()).unwrap_or(u32::MAX);
        gaps.push(Gap {
            from: at as u8,
            to: p as u8,
            micros,
        });
        (last, at) = (now, p);
        if now - started > DEADLINE {
            break;
        }
    }
    gaps
}

/// Short connections from 127.0.0.1-8 until `stop`: connect, one echoed byte, close.
/// Counts the completed ones per phase.
fn churn(front: SocketAddr, phase: &AtomicUsize, stop: &AtomicBool, done: &[AtomicU64]) {
    let started = Instant::now();
    for i in 0u64.. {
        if stop.load(Relaxed) || started.elapsed() > DEADLINE {
            return;
        }
        let from = SocketAddr::new(IpAddr::from([127, 0, 0, 1 + (i % 8) as u8]), 0);
        let Ok(socket) = Socket::new(Domain::IPV4, Type::STREAM, None) else {
            continue;
        };
        // Reset on close: no TIME_WAIT piling up on these few source addresses.
        let _ = socket.set_linger(Some(Duration::ZERO));
        let _ = socket.set_read_timeout(Some(Duration::from_secs(5)));
        if socket.bind(&from.into()).is_err() || socket.connect(&front.into()).is_err() {
            continue;
        }
        let mut s: TcpStream = socket.into();
        let mut b = [0u8; 1];
        if s.write_all(&[1]).is_ok() && s.read_exact(&mut b).is_ok() {
            done[phase.load(Relaxed)].fetch_add(1, Relaxed);
        }
    }
}

/// `POST /api/v1/reload` on the admin API; how long the answer took.
fn reload(admin: SocketAddr) -> Duration {
    let started = Instant::now();
    let mut s = TcpStream::connect(admin).expect("connect to the admin API");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    s.write_all(
        b"POST /api/v1/reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\
          Connection: close\r\n\r\n",
    )
    .expect("send the reload");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read the answer");
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "reload refused: {answer}"
    );
    started.elapsed()
}

/// Waits until the published snapshot holds a table of the new shape: the reload is
/// applied at once, and the limiter's state moves after it, off the control plane's loop,
/// while the old table serves. How long that took.
fn moved(server: &Server, max_tracked: u32, prefix: u8) -> Duration {
    let started = Instant::now();
    loop {
        let snapshot = server.snapshot();
        let shape = snapshot
            .listener("front")
            .and_then(|l| l.admission.per_source.as_ref())
            .map(|ps| ps.table.shape())
            .expect("per-source limits");
        if shape.max_tracked == max_tracked as usize && shape.ipv4_prefix == prefix {
            return started.elapsed();
        }
        assert!(started.elapsed() < DEADLINE, "the limiter never moved");
        thread::sleep(Duration::from_millis(1));
    }
}

fn fill(server: &Server) {
    let snapshot = server.snapshot();
    let listener = snapshot.listener("front").expect("listener front");
    let ps = listener
        .admission
        .per_source
        .as_ref()
        .expect("per-source limits");
    let started = Instant::now();
    for i in 0..SOURCES {
        let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        drop(ps.table.admit(ip, Instant::now(), None).expect("admitted"));
    }
    assert_eq!(ps.table.tracked(), SOURCES as usize);
    eprintln!("filled {SOURCES} sources in {:.2?}", started.elapsed());
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("tollgate::control=info"))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tollgate.yaml");
    let backend = echo_backend();
    let write = |path: &Path, max, prefix| {
        std::fs::write(path, config(backend, max, prefix)).expect("write the config");
    };
    write(&path, 2_000_000, 32);
    let cfg = tollgate::config::load(&path).expect("valid config");
    let server = Server::start_from(&cfg, Some(path.clone())).expect("server starts");
    let front = server.addrs("front")[0];
    let admin = server.admin_addr().expect("admin API");
    fill(&server);

    let (phase, stop) = (AtomicUsize::new(0), AtomicBool::new(false));
    let conns: Vec<_> = PHASES.iter().map(|_| AtomicU64::new(0)).collect();
    let mut took = [Duration::ZERO; PHASES.len()];
    let gaps: Vec<Gap> = thread::scope(|s| {
        let echoes: Vec<_> = (0..PERSISTENT)
            .map(|_| s.spawn(|| echo_loop(front, &phase, &stop)))
            .collect();
        s.spawn(|| churn(front, &phase, &stop, &conns));
        let quiet = |p: usize, d: Duration| {
            phase.store(p, Relaxed);
            thread::sleep(d);
            d
        };
        took[0] = quiet(0, SETTLE);
        took[1] = quiet(1, QUIET);
        phase.store(2, Relaxed);
        write(&path, 2_000_001, 32);
        took[2] = reload(admin) + moved(&server, 2_000_001, 32);
        took[3] = quiet(3, SETTLE);
        phase.store(4, Relaxed);
        write(&path, 2_000_001, 24);
        took[4] = reload(admin) + moved(&server, 2_000_001, 24);
        took[5] = quiet(5, SETTLE);
        stop.store(true, Relaxed);
        echoes
            .into_iter()
            .flat_map(|h| h.join().expect("echo thread"))
            .collect()
    });
    report(&gaps, &took, &conns);
    server.shutdown();
}

fn report(gaps: &[Gap], took: &[Duration], conns: &[AtomicU64]) {
    println!(
        "\nreshape of {SOURCES} tracked sources; {PERSISTENT} persistent echo connections, 2 workers"
    );
    println!(
        "{:<32} {:>10} {:>9} {:>7} {:>11} {:>12} {:>12}",
        "phase", "took", "echoes", "conns", "median gap", "gaps > 10ms", "largest gap"
    );
    for (p, name) in PHASES.iter().enumerate().skip(1) {
        let p8 = p as u8;
        let mut mine: Vec<u32> = (gaps.iter())
            .filter(|g| g.from <= p8 && p8 <= g.to)
            .map(|g| g.micros)
            .collect();
        mine.sort_unstable();
        let median = mine.get(mine.len() / 2).copied().unwrap_or(0);
        let largest = mine.last().copied().unwrap_or(0);
        let long = mine.iter().filter(|&&g| g > 10_000).count();
        println!(
            "{:<32} {:>8.1}ms {:>9} {:>7} {:>9}us {:>12} {:>10.2}ms",
            name,
            took[p].as_secs_f64() * 1e3,
            mine.len(),
            conns[p].load(Relaxed),
            median,
            long,
            f64::from(largest) / 1e3,
        );
    }
}
