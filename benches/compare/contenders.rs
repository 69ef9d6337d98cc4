//! The contenders: `direct` (no proxy), `tollgate`, `tollgate-access-log`, `haproxy`,
//! `haproxy-splice`, `nginx` and `nginx-half-close`.
//!
//! Owns each one's generated configuration (written into a fresh directory of the run's temp
//! dir), starting it in front of a backend port and waiting until it listens (TCP) or has
//! its socket bound (UDP, whose configurations are `udp.rs`'s), retrying with fresh ports
//! when a port picked as free was taken meanwhile, checking up front that every tool the
//! chosen workloads and contenders need is installed (nginx's stream module too), and
//! tollgate's admin API (reload, status, metrics). HAProxy's stats socket is in the config
//! for the bulk workload's splice check; HAProxy has no UDP front. The TLS passthrough
//! fronts that route by SNI (`Front::Sni`) are configured by `tls.rs`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use std::{fmt, fs};

use anyhow::{Context, Result, bail};

use crate::procs::{Proc, free_port, free_udp_port};
use crate::{Ctx, Settings, Workload, tls, udp};

const READY_TIMEOUT: Duration = Duration::from_secs(15);
const ATTEMPTS: usize = 3;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Contender {
    Direct,
    Tollgate,
    /// tollgate writing a JSON access-log line per connection (`logging.access`, no rate
    /// bound) to its log file: what the log costs, beside `tollgate` with it off.
    TollgateAccessLog,
    Haproxy,
    HaproxySplice,
    Nginx,
    /// nginx with `proxy_half_close on`: like tollgate and HAProxy, it passes a FIN on and
    /// keeps the other direction flowing. nginx's default closes both sides at the first
    /// FIN, and so never delivers what the other peer sends after it (a TLS client's
    /// `close_notify` answering the server's): less work, not the same work.
    NginxHalfClose,
}

impl Contender {
    pub const ALL: [Contender; 7] = [
        Contender::Direct,
        Contender::Tollgate,
        Contender::TollgateAccessLog,
        Contender::Haproxy,
        Contender::HaproxySplice,
        Contender::Nginx,
        Contender::NginxHalfClose,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Contender::Direct => "direct",
            Contender::Tollgate => "tollgate",
            Contender::TollgateAccessLog => "tollgate-access-log",
            Contender::Haproxy => "haproxy",
            Contender::HaproxySplice => "haproxy-splice",
            Contender::Nginx => "nginx",
            Contender::NginxHalfClose => "nginx-half-close",
        }
    }

    pub fn parse(name: &str) -> Option<Contender> {
        Contender::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl fmt::Display for Contender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// What the balancer listens for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Front {
    Tcp,
    /// A UDP listener; a session ends after `responses` replies (`None`: only when idle).
    Udp {
        responses: Option<u32>,
    },
    /// A TCP listener that routes TLS by the ClientHello's server name, without terminating
    /// it (tls-sni).
    Sni,
}

/// A started contender: clients connect to 127.0.0.1:`port`.
pub struct Running {
    pub contender: Contender,
    pub port: u16,
    /// The balancer's process; `None` for `direct`.
    pub proc: Option<Proc>,
    /// tollgate's admin API port.
    pub admin: Option<u16>,
    pub dir: PathBuf,
    /// Just before the balancer's process was spawned.
    pub spawned_at: Instant,
    backend: u16,
    max_conns: u64,
}

impl Running {
    /// The balancer's process, or an error for `direct`.
    pub fn balancer(&self) -> Result<&Proc> {
        self.proc
            .as_ref()
            .with_context(|| format!("{}: no balancer process", self.contender))
    }

    /// Stops the balancer (SIGTERM); an error if it had died or fails to exit cleanly.
    pub fn stop(self) -> Result<()> {
        self.proc.map_or(Ok(()), Proc::stop)
    }

    /// Rewrites tollgate's config file with the backend at `weight` (a harmless change).
    pub fn set_tollgate_weight(&self, weight: u32) -> Result<()> {
        let admin = self.admin.context("not tollgate")?;
        let mut text = tollgate_yaml(self.port, admin, self.backend, weight, self.max_conns);
        if self.contender == Contender::TollgateAccessLog {
            text += "logging:\n  access: true\n  access_rate: none\n";
        }
        let path = self.dir.join("tollgate.yaml");
        fs::write(&path, text).with_context(|| format!("rewriting {}", path.display()))
    }
}

/// Writes the config and spawns the contender's TCP front in front of 127.0.0.1:`backend`,
/// without waiting for it. `direct` starts nothing and points at the backend itself.
pub fn spawn(ctx: &Ctx, c: Contender, backend: u16) -> Result<Running> {
    spawn_front(ctx, c, Front::Tcp, backend)
}

/// [`spawn`] for either kind of front.
pub fn spawn_front(ctx: &Ctx, c: Contender, front: Front, backend: u16) -> Result<Running> {
    let dir = ctx.run_dir(c.name())?;
    let port = match front {
        Front::Tcp | Front::Sni => free_port()?,
        Front::Udp { .. } => free_udp_port()?,
    };
    let max_conns = ctx.max_conns();
    let mut running = Running {
        contender: c,
        port,
        proc: None,
        admin: None,
        dir: dir.clone(),
        spawned_at: Instant::now(),
        backend,
        max_conns,
    };
    let log = dir.join(format!("{c}.log"));
    let mut cmd = match c {
        Contender::Direct => {
            running.port = backend;
            return Ok(running);
        }
        Contender::TollgateAccessLog if front != Front::Tcp => {
            bail!("{c}: run on conns/s only")
        }
        Contender::Tollgate | Contender::TollgateAccessLog => {
            let admin = free_port()?;
            running.admin = Some(admin);
            match front {
                Front::Tcp => running.set_tollgate_weight(1)?,
                Front::Udp { responses } => {
                    let text = udp::tollgate_yaml(port, admin, backend, responses);
                    write(&dir, "tollgate.yaml", text)?;
                }
                Front::Sni => {
                    let text = tls::tollgate_yaml(port, admin, backend, max_conns);
                    write(&dir, "tollgate.yaml", text)?;
                }
            }
            let mut cmd = Command::new(&ctx.tollgate);
            cmd.arg("run").arg("-c").arg(dir.join("tollgate.yaml"));
            if c == Contender::TollgateAccessLog {
                cmd.args(["--log-format", "json"]);
            }
            cmd
        }
        Contender::Haproxy | Contender::HaproxySplice if matches!(front, Front::Udp { .. }) => {
            bail!("{c}: HAProxy community has no UDP proxy")
        }
        Contender::HaproxySplice if front == Front::Sni => {
            bail!("{c}: not run for tls-sni (a handshake has no bulk data to splice)")
        }
        Contender::Haproxy | Contender::HaproxySplice => {
            let splice = c == Contender::HaproxySplice;
            let text = match front {
                Front::Sni => tls::haproxy_cfg(port, backend, max_conns),
                _ => haproxy_cfg(&dir, port, backend, max_conns, splice),
            };
            let cfg = write(&dir, "haproxy.cfg", text)?;
            let mut cmd = Command::new("haproxy");
            cmd.arg("-db").arg("-f").arg(cfg);
            cmd
        }
        Contender::NginxHalfClose if matches!(front, Front::Udp { .. }) => {
            bail!("{c}: UDP has no half-close")
        }
        Contender::Nginx | Contender::NginxHalfClose => {
            let half_close = c == Contender::NginxHalfClose;
            let load = match &ctx.nginx_stream {
                Some(StreamModule::Dynamic(so)) => format!("load_module {};\n", so.display()),
                Some(StreamModule::Builtin) => String::new(),
                None => bail!("nginx: the stream module was not looked for"),
            };
            let nginx = Nginx {
                load: &load,
                dir: &dir,
                fd_limit: ctx.fd_limit,
                half_close,
            };
            let text = match front {
                Front::Tcp => nginx_stream_conf(&nginx, port, backend),
                Front::Sni => tls::nginx_conf(&nginx, port, backend),
                Front::Udp { responses } => udp::nginx_conf(&nginx, port, backend, responses),
            };
            let conf = write(&dir, "nginx.conf", text)?;
            let mut cmd = Command::new("nginx");
            cmd.arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(conf)
                .args(["-g", "daemon off;"]);
            cmd
        }
    };
    running.spawned_at = Instant::now();
    running.proc = Some(Proc::spawn(c.name(), &mut cmd, &log)?);
    Ok(running)
}

/// Spawns the contender and waits until it listens (and, for tollgate, its admin API too).
/// A port taken between picking and binding is retried with fresh ports.
pub fn start(ctx: &Ctx, c: Contender, backend: u16) -> Result<Running> {
    start_front(ctx, c, Front::Tcp, backend)
}

/// [`start`] for either kind of front: a UDP front is ready once its socket is bound (the
/// workloads then send a probe through it before measuring).
pub fn start_front(ctx: &Ctx, c: Contender, front: Front, backend: u16) -> Result<Running> {
    for attempt in 1..=ATTEMPTS {
        let mut running = spawn_front(ctx, c, front, backend)?;
        let (port, admin) = (running.port, running.admin);
        let Some(proc) = running.proc.as_mut() else {
            return Ok(running);
        };
        let ready = match front {
            Front::Tcp | Front::Sni => proc.wait_listening(port, READY_TIMEOUT),
            Front::Udp { .. } => proc.wait_udp_bound(port, READY_TIMEOUT),
        };
        match ready.and_then(|()| admin.map_or(Ok(()), |a| proc.wait_listening(a, READY_TIMEOUT))) {
            Ok(()) => return Ok(running),
            Err(_) if attempt < ATTEMPTS && port_clash(proc) => continue,
            Err(e) => return Err(e),
        }
    }
    bail!("{c}: could not bind a free port in {ATTEMPTS} attempts")
}

/// Whether a failed start was a port taken by someone else between picking and binding.
pub fn port_clash(proc: &mut Proc) -> bool {
    matches!(proc.poll(), Ok(Some(_))) && proc.log_contains("in use")
}

fn write(dir: &Path, name: &str, text: String) -> Result<PathBuf> {
    let path = dir.join(name);
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// tollgate's `shutdown.drain_timeout` (an upgrade's old process counts it from the
/// handover's last progress, so it does not cut a longer handover short).
pub const TOLLGATE_DRAIN: &str = "1s";

fn tollgate_yaml(port: u16, admin: u16, backend: u16, weight: u32, max_conns: u64) -> String {
    format!(
        "# generated by benches/compare\n\
         workers: auto\nforwarding: splice\n\
         admin:\n  bind: \"127.0.0.1:{admin}\"\n\
         shutdown:\n  drain_timeout: {TOLLGATE_DRAIN}\n\
         listeners:\n  bench:\n    bind: \"127.0.0.1:{port}\"\n    pool: backend\n\
         \x20   limits:\n      max_connections: {max_conns}\n\
         pools:\n  backend:\n    balance: round_robin\n    backends:\n\
         \x20     - address: \"127.0.0.1:{backend}\"\n        weight: {weight}\n"
    )
}

/// HAProxy in TCP mode with default options. Splice needs pipes, and HAProxy reserves file
/// descriptors for maxconn/4 of them by default, which would not fit the fd limit next to
/// ~9000 connections; `maxpipes 256` (far more than the 16 that 8 spliced streams use) keeps
/// both variants at the same maxconn.
fn haproxy_cfg(dir: &Path, port: u16, backend: u16, maxconn: u64, splice: bool) -> String {
    let splice = if splice {
        "    option splice-request\n    option splice-response\n"
    } else {
        ""
    };
    let sock = dir.join("haproxy.sock");
    format!(
        "global\n    nbthread 2\n    maxconn {maxconn}\n    maxpipes 256\n\
         \x20   stats socket {} mode 600 level admin\n\
         defaults\n    mode tcp\n    maxconn {maxconn}\n    timeout connect 5s\n\
         \x20   timeout client 10m\n    timeout server 10m\n{splice}\
         frontend bench\n    bind 127.0.0.1:{port}\n    default_backend backend\n\
         backend backend\n    server b1 127.0.0.1:{backend}\n",
        sock.display()
    )
}

/// What every nginx contender's config shares: how the stream module is loaded, the run's
/// directory, the fd limit, and whether half-closes are passed on (`nginx-half-close`).
pub struct Nginx<'a> {
    pub load: &'a str,
    pub dir: &'a Path,
    pub fd_limit: u64,
    pub half_close: bool,
}

impl Nginx<'_> {
    /// The config: two workers, with `stream` inside its `stream {}` block. Each worker may
    /// end up holding every connection (both legs), so worker_connections is nearly the
    /// whole fd limit.
    pub fn conf(&self, stream: &str) -> String {
        let Nginx { load, fd_limit, .. } = *self;
        let conns = fd_limit.saturating_sub(200);
        format!(
            "{load}worker_processes 2;\nworker_rlimit_nofile {fd_limit};\npid {}/nginx.pid;\n\
             error_log stderr warn;\n\
             events {{\n    worker_connections {conns};\n}}\n\
             stream {{\n{stream}}}\n",
            self.dir.display()
        )
    }

    /// The `server {}` line of `nginx-half-close` (empty for `nginx`).
    pub fn half_close_line(&self) -> &'static str {
        if self.half_close {
            "        proxy_half_close on;\n"
        } else {
            ""
        }
    }
}

/// nginx `stream {}` proxy to the backend.
fn nginx_stream_conf(nginx: &Nginx, port: u16, backend: u16) -> String {
    let half_close = nginx.half_close_line();
    nginx.conf(&format!(
        "    server {{\n        listen 127.0.0.1:{port};\n{half_close}\
         \x20       proxy_pass 127.0.0.1:{backend};\n    }}\n"
    ))
}

/// Fails at once, naming the tool and its Debian package, when something the chosen
/// workloads and contenders need is missing. Returns how nginx gets its stream module.
pub fn check_tools(s: &Settings) -> Result<Option<StreamModule>> {
    let uses = |w| s.workloads.contains(&w);
    let mut need: Vec<(&str, &str, &str)> = Vec::new();
    if uses(Workload::Bulk) {
        need.push(("iperf3", "--version", "iperf3"));
    }
    if uses(Workload::Conns) || uses(Workload::ReqResp) {
        need.push(("wrk", "--version", "wrk"));
        need.push(("nginx", "-v", "nginx-light (the HTTP backend)"));
    }
    if uses(Workload::TlsSni) {
        need.push(("h2load", "--version", "nghttp2-client (the TLS load)"));
        need.push(("openssl", "version", "openssl (the TLS certificate)"));
        need.push(("nginx", "-v", "nginx-light (the TLS backend)"));
    }
    if uses(Workload::UdpDns) {
        need.push(("dnsperf", "-h", "dnsperf"));
        need.push(("nsd", "-v", "nsd (the DNS backend; the bench runs its own)"));
    }
    if s.wants(Contender::Haproxy) || s.wants(Contender::HaproxySplice) {
        need.push(("haproxy", "-v", "haproxy"));
    }
    let nginx = s.wants(Contender::Nginx) || s.wants(Contender::NginxHalfClose);
    if nginx {
        need.push(("nginx", "-v", "nginx-light and libnginx-mod-stream"));
    }
    for (tool, arg, package) in need {
        if let Err(e) = Command::new(tool).arg(arg).output() {
            bail!("`{tool}` cannot run ({e}); install the Debian package {package}");
        }
    }
    match nginx {
        true => Ok(Some(nginx_stream_module()?)),
        false => Ok(None),
    }
}

/// How this nginx gets its stream module.
#[derive(Clone, Debug)]
pub enum StreamModule {
    Builtin,
    Dynamic(PathBuf),
}

/// Reads `nginx -V`: the stream module built in, or the dynamic module file that must exist.
pub fn nginx_stream_module() -> Result<StreamModule> {
    let out = Command::new("nginx")
        .arg("-V")
        .output()
        .context("nginx: cannot run `nginx -V` (Debian package nginx)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let args: Vec<&str> = text.split_whitespace().collect();
    if args.contains(&"--with-stream") {
        return Ok(StreamModule::Builtin);
    }
    if !args.contains(&"--with-stream=dynamic") {
        bail!("nginx was built without the stream module (`nginx -V` has no --with-stream)");
    }
    let modules = args
        .iter()
        .find_map(|a| a.strip_prefix("--modules-path="))
        .unwrap_or("/usr/lib/nginx/modules");
    let so = Path::new(modules).join("ngx_stream_module.so");
    if !so.is_file() {
        bail!(
            "nginx has no stream module: its build loads it from {}, which is missing. \
             Install the Debian package libnginx-mod-stream (nginx-full depends on it; \
             nginx-light does not)",
            so.display()
        );
    }
    Ok(StreamModule::Dynamic(so))
}

/// One HTTP/1.1 request to tollgate's admin API; returns the status, the body and the time
/// from sending the request to having read the whole response.
pub fn admin_request(port: u16, method: &str, path: &str) -> Result<(u16, String, Duration)> {
    let what = format!("tollgate admin {method} {path}");
    let mut s =
        TcpStream::connect(("127.0.0.1", port)).with_context(|| format!("{what}: connect"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .context("SO_RCVTIMEO")?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let start = Instant::now();
    s.write_all(request.as_bytes())
        .with_context(|| format!("{what}: send"))?;
    let mut response = Vec::new();
    s.read_to_end(&mut response)
        .with_context(|| format!("{what}: read"))?;
    let took = start.elapsed();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{what}: no HTTP status in {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body, took))
}
