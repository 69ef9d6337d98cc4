//! Workload tls-sni: new TLS connections per second routed by server name, with no TLS
//! termination in the balancer (passthrough), and the balancer's CPU per connection.
//!
//! Every connection is a full TLS 1.3 handshake with SNI `bench.example`, one tiny HTTP/1.1
//! request and its response, then the close: `h2load --h1` (nghttp2-client) connects to
//! the front with `--connect-to` and takes the name from the URI, and the backend (nginx
//! `ssl`, [`crate::backends::tls`]) answers `Connection: close` (`keepalive_timeout 0`),
//! after which h2load opens the next connection. The backend keeps no session cache and
//! issues no tickets, so no reconnect can resume a session; and it answers 421 to a
//! connection whose ClientHello did not name `bench.example`, so a path that altered the
//! ClientHello shows up as errors.
//!
//! Owns the certificate (a self-signed P-256 one for `bench.example`, made with `openssl
//! req` per backend), the balancers' SNI configurations (`Front::Sni` in `contenders.rs`
//! writes them), the h2load runs (a short pilot that proves the path and measures its pace,
//! then the measured run sized to last about the run's seconds: the h2load of Debian 12
//! hangs at the end of a `-D` timed run whose server closes connections, so the runs are
//! counted with `-n`), and parsing h2load's output.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::contenders::{self, Contender, Front};
use crate::report::{Better, Metric, Results, metric};
use crate::{Ctx, backends};

pub const WORKLOAD: &str = "tls-sni";
/// The server name every ClientHello carries and the route matches.
pub const SERVER_NAME: &str = "bench.example";
/// h2load's concurrent clients (each a closed loop of connect, handshake, request,
/// response, close) and threads: the shape of the conns/s workload.
pub const CLIENTS: u64 = 32;
pub const THREADS: u64 = 2;
/// Connections per client in the pilot run.
const PILOT_PER_CLIENT: u64 = 10;
/// The measured run's connections are its seconds at the pilot's pace, at least this many
/// per client, and at most [`MAX_CONNECTIONS`].
const MIN_PER_CLIENT: u64 = 20;
const MAX_CONNECTIONS: u64 = 2_000_000;

const RATE: Metric = metric(
    WORKLOAD,
    "connections_per_s",
    "new TLS connections/s",
    Better::Higher,
    0,
    true,
);
const ERRORS: Metric = metric(
    WORKLOAD,
    "errors",
    "h2load errors (failed + non-2xx)",
    Better::Lower,
    0,
    false,
);
const CPU: Metric = metric(
    WORKLOAD,
    "cpu_us_per_connection",
    "balancer CPU µs per connection",
    Better::Lower,
    1,
    true,
);

const PER_CPU: Metric = metric(
    WORKLOAD,
    "per_cpu_s",
    "connections per balancer CPU-s",
    Better::Higher,
    0,
    true,
);

/// One repetition: a fresh TLS backend and contender, the pilot, then the measured run with
/// the balancer's CPU over it.
pub fn run(ctx: &Ctx, c: Contender, rep: &str, res: &mut Results) -> Result<()> {
    let backend = backends::tls(ctx)?;
    let running = contenders::start_front(ctx, c, Front::Sni, backend.port)?;
    let dir = ctx.run_dir("h2load")?;
    let pilot = h2load(running.port, CLIENTS * PILOT_PER_CLIENT, &dir, "pilot", 60)
        .with_context(|| format!("{c}: h2load pilot (does the path answer?)"))?;
    if pilot.errors() > 0 {
        bail!(
            "{c}: the pilot run had {} errors in {} connections",
            pilot.errors(),
            pilot.requested
        );
    }
    let secs = ctx.settings.secs;
    let wanted = (pilot.per_s * secs as f64) as u64;
    let n = wanted
        .clamp(CLIENTS * MIN_PER_CLIENT, MAX_CONNECTIONS)
        .div_ceil(CLIENTS)
        * CLIENTS;
    // Three times the expected length and some: a path that stalls fails, bounded.
    let timeout = 3 * secs + 30;
    let balancer = running.proc.as_ref();
    let before = balancer.map(|p| p.cpu_ticks()).transpose()?;
    let h =
        h2load(running.port, n, &dir, "h2load", timeout).with_context(|| format!("{c}: h2load"))?;
    let after = balancer.map(|p| p.cpu_ticks()).transpose()?;
    [RATE, ERRORS, CPU, PER_CPU]
        .into_iter()
        .for_each(|m| res.declare(m));
    res.add(RATE, c, h.per_s);
    res.add(ERRORS, c, h.errors() as f64);
    let mut line = format!(
        "{rep} {c:<15} {:7.0} new TLS connections/s ({} in {:.2} s)  errors {}",
        h.per_s,
        h.ok_2xx,
        h.secs,
        h.errors()
    );
    if let (Some(before), Some(after)) = (before, after) {
        let cpu_us = after.saturating_sub(before) as f64 / ctx.clk_tck * 1e6;
        let per_conn = cpu_us / h.ok_2xx.max(1) as f64;
        res.add(CPU, c, per_conn);
        if per_conn > 0.0 {
            res.add(PER_CPU, c, 1e6 / per_conn);
        }
        line += &format!("  {per_conn:.1} CPU µs/connection");
    }
    println!("{line}");
    if h.errors() > 0 {
        let note = format!(
            "{WORKLOAD} {c}: WARNING: {} of {} connections did not end in a 2xx response \
             (h2load: {} failed, {} errored, {} timed out, {} non-2xx)",
            h.errors(),
            h.requested,
            h.failed,
            h.errored,
            h.timeout,
            h.requested.saturating_sub(h.ok_2xx + h.failed)
        );
        println!("    {note}");
        res.note(note);
    }
    running.stop()?;
    backend.stop()
}

/// What one h2load run printed, parsed.
#[derive(Debug, Default, PartialEq)]
struct H2load {
    secs: f64,
    per_s: f64,
    requested: u64,
    failed: u64,
    errored: u64,
    timeout: u64,
    ok_2xx: u64,
    protocol: String,
}

impl H2load {
    /// Connections that did not end in a 2xx response (each connection carries one request).
    fn errors(&self) -> u64 {
        self.requested.saturating_sub(self.ok_2xx)
    }
}

/// `h2load --h1 -n N` through 127.0.0.1:`port` for `https://bench.example/`, within
/// `timeout_s`; its output in `dir` as `name.out`.
fn h2load(port: u16, n: u64, dir: &Path, name: &str, timeout_s: u64) -> Result<H2load> {
    let mut cmd = Command::new("h2load");
    cmd.args(["--h1", "-n", &n.to_string()])
        .args(["-c", &CLIENTS.to_string(), "-t", &THREADS.to_string()])
        .arg(format!("--connect-to=127.0.0.1:{port}"))
        .arg(format!("https://{SERVER_NAME}/"));
    let timeout = Duration::from_secs(timeout_s);
    let out = crate::procs::run_tool(name, &mut cmd, dir, timeout)?;
    let h = parse(&out).with_context(|| format!("parsing h2load output:\n{out}"))?;
    if h.requested != n {
        bail!("h2load ran {} requests, {n} asked for", h.requested);
    }
    if h.protocol != "TLSv1.3" {
        bail!("h2load negotiated {:?}, not TLSv1.3", h.protocol);
    }
    Ok(h)
}

fn parse(out: &str) -> Result<H2load> {
    let mut h = H2load::default();
    let (mut finished, mut requests, mut codes) = (false, false, false);
    let number = |w: &str| w.trim_end_matches(',').parse::<u64>().ok();
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            // `finished in 5.01s, 3021.44 req/s, 1.20MB/s`
            ["finished", "in", secs, rate, "req/s,", ..] => {
                h.secs = duration_s(secs.trim_end_matches(','))
                    .context("unreadable `finished in` time")?;
                h.per_s = rate.parse().context("unreadable req/s")?;
                finished = true;
            }
            // `requests: 8000 total, 8000 started, 8000 done, 8000 succeeded, 0 failed,
            // 0 errored, 0 timeout`
            ["requests:", rest @ ..] => {
                for pair in rest.chunks(2) {
                    if let [n, what] = pair {
                        let n = number(n);
                        match what.trim_end_matches(',') {
                            "total" => h.requested = n.context("unreadable total")?,
                            "failed" => h.failed = n.unwrap_or(0),
                            "errored" => h.errored = n.unwrap_or(0),
                            "timeout" => h.timeout = n.unwrap_or(0),
                            _ => {}
                        }
                    }
                }
                requests = true;
            }
            // `status codes: 8000 2xx, 0 3xx, 0 4xx, 0 5xx`
            ["status", "codes:", n, "2xx,", ..] => {
                h.ok_2xx = number(n).context("unreadable 2xx count")?;
                codes = true;
            }
            ["TLS", "Protocol:", p] => h.protocol = (*p).to_owned(),
            _ => {}
        }
    }
    if !(finished && requests && codes) {
        bail!("no `finished in`, `requests:` or `status codes:` line");
    }
    if h.ok_2xx == 0 || h.per_s <= 0.0 {
        bail!("h2load completed no request");
    }
    Ok(h)
}

/// h2load's `16.73s`, `118.22ms`, `950.10us` in seconds.
fn duration_s(text: &str) -> Option<f64> {
    let split = text.find(|ch: char| ch.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        _ => return None,
    };
    Some(number * scale)
}

/// Checked at every run (cheap), so that an h2load whose output changed fails at once.
pub fn self_test() -> Result<()> {
    let sample = "starting benchmark...\nspawning thread #0: 16 total client(s). 320 total requests\n\
                  TLS Protocol: TLSv1.3\nCipher: TLS_AES_128_GCM_SHA256\n\
                  Server Temp Key: X25519 253 bits\nApplication protocol: http/1.1\n\
                  progress: 100% done\n\n\
                  finished in 118.22ms, 2706.85 req/s, 0B/s\n\
                  requests: 320 total, 320 started, 320 done, 318 succeeded, 2 failed, 1 errored, 1 timeout\n\
                  status codes: 317 2xx, 0 3xx, 1 4xx, 0 5xx\n\
                  traffic: 0B (0) total, 32.19KB (32960) headers (space savings 0.00%), 960B (960) data\n";
    // `118.22ms` is not seconds: h2load prints ms below a second.
    let got = parse(sample);
    let want_secs = 0.11822;
    let ok = match &got {
        Ok(h) => {
            (h.secs - want_secs).abs() < 1e-9
                && (h.per_s - 2706.85).abs() < 1e-9
                && (h.requested, h.failed, h.errored, h.timeout, h.ok_2xx) == (320, 2, 1, 1, 317)
                && h.protocol == "TLSv1.3"
                && h.errors() == 3
        }
        Err(_) => false,
    };
    if !ok {
        bail!("h2load output parser self-test: got {got:?}");
    }
    Ok(())
}

/// A self-signed P-256 certificate for [`SERVER_NAME`] and its key, made in `dir`.
pub fn make_cert(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-x509", "-newkey", "ec"])
        .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-days", "2", "-subj", &format!("/CN={SERVER_NAME}")])
        .args(["-addext", &format!("subjectAltName=DNS:{SERVER_NAME}")]);
    crate::procs::run_tool("openssl-req", &mut cmd, dir, Duration::from_secs(30))
        .context("making the TLS certificate (openssl req)")?;
    Ok((cert, key))
}

/// tollgate with one `sni` listener on 127.0.0.1:`port`: `bench.example` routed to pool
/// `tls`, which is also the default; no `pool:` key, as `sni` requires.
pub fn tollgate_yaml(port: u16, admin: u16, backend: u16, max_conns: u64) -> String {
    format!(
        "# generated by benches/compare (tls-sni)\n\
         workers: auto\nforwarding: splice\n\
         admin:\n  bind: \"127.0.0.1:{admin}\"\n\
         shutdown:\n  drain_timeout: 1s\n\
         listeners:\n  bench:\n    bind: \"127.0.0.1:{port}\"\n\
         \x20   sni: {{ routes: [ {{ match: [\"{SERVER_NAME}\"], pool: tls }} ], default_pool: tls }}\n\
         \x20   limits:\n      max_connections: {max_conns}\n\
         pools:\n  tls:\n    balance: round_robin\n    backends:\n\
         \x20     - address: \"127.0.0.1:{backend}\"\n"
    )
}

/// HAProxy's documented SNI passthrough: wait (up to 5 s) for a ClientHello, then pick the
/// backend by `req.ssl_sni`.
pub fn haproxy_cfg(port: u16, backend: u16, maxconn: u64) -> String {
    format!(
        "global\n    nbthread 2\n    maxconn {maxconn}\n\
         defaults\n    mode tcp\n    maxconn {maxconn}\n    timeout connect 5s\n\
         \x20   timeout client 10m\n    timeout server 10m\n\
         frontend bench\n    bind 127.0.0.1:{port}\n\
         \x20   tcp-request inspect-delay 5s\n\
         \x20   tcp-request content accept if {{ req_ssl_hello_type 1 }}\n\
         \x20   use_backend tls if {{ req.ssl_sni -i {SERVER_NAME} }}\n\
         \x20   default_backend tls\n\
         backend tls\n    server b1 127.0.0.1:{backend}\n"
    )
}

/// nginx `stream {}` with `ssl_preread` and the upstream picked by a `map` of
/// `$ssl_preread_server_name`; `proxy_half_close on` for `nginx-half-close`.
pub fn nginx_conf(nginx: &contenders::Nginx, port: u16, backend: u16) -> String {
    let half_close = nginx.half_close_line();
    nginx.conf(&format!(
        "    map $ssl_preread_server_name $upstream {{\n\
         \x20       {SERVER_NAME} tls;\n        default tls;\n    }}\n\
         \x20   upstream tls {{\n        server 127.0.0.1:{backend};\n    }}\n\
         \x20   server {{\n        listen 127.0.0.1:{port};\n        ssl_preread on;\n{half_close}\
         \x20       proxy_pass $upstream;\n    }}\n"
    ))
}
