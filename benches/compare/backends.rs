//! The backends that every contender forwards to, each a child process on 127.0.0.1.
//!
//! Owns the iperf3 server (bulk), the nginx HTTP responder that answers `ok` (conns/s and
//! req/resp), its HTTPS twin that terminates TLS (tls-sni), and the echo server that holds
//! connections open (memory, startup, reload, upgrade).
//! The echo server is this same bench binary re-executed with `TOLLGATE_COMPARE_ECHO_PORT`
//! set, so that its ~9000 sockets do not count against the harness's own descriptor budget
//! and it dies with the harness.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Duration;
use std::{env, fs, thread};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::Ctx;
use crate::procs::{Proc, free_port};

/// Set (to the port) in the environment of the re-executed bench binary that serves echo.
pub const ECHO_ENV: &str = "TOLLGATE_COMPARE_ECHO_PORT";

const READY_TIMEOUT: Duration = Duration::from_secs(15);
const ATTEMPTS: usize = 3;

/// A backend process listening on 127.0.0.1:`port`.
pub struct Backend {
    pub proc: Proc,
    pub port: u16,
}

impl Backend {
    /// SIGTERM; the exit status is not checked (iperf3 exits 1 on it), a death before is.
    pub fn stop(mut self) -> Result<()> {
        self.proc.terminate().map(drop)
    }
}

/// `iperf3 -s` bound to 127.0.0.1, serving one test after another.
pub fn iperf3(ctx: &Ctx) -> Result<Backend> {
    start(ctx, "iperf3-server", |_dir, port| {
        let mut cmd = Command::new("iperf3");
        cmd.args(["-s", "-B", "127.0.0.1", "-p", &port.to_string()]);
        Ok(cmd)
    })
}

/// nginx (http core only) with one worker that answers every request `200 ok\n`, with no
/// access log and keep-alive allowed without a per-connection request cap.
pub fn http(ctx: &Ctx) -> Result<Backend> {
    start(ctx, "http-backend", |dir, port| {
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log stderr warn;\n\
             events {{\n    worker_connections 4096;\n}}\n\
             http {{\n    access_log off;\n    keepalive_requests 1000000;\n\
             \x20   keepalive_timeout 75s;\n\
             \x20   client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n\
             \x20   fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n\
             \x20   scgi_temp_path {d}/scgi;\n\
             \x20   server {{\n        listen 127.0.0.1:{port};\n\
             \x20       location / {{\n            default_type text/plain;\n\
             \x20           return 200 \"ok\\n\";\n        }}\n    }}\n}}\n"
        );
        let path = dir.join("nginx-http.conf");
        nginx_command(dir, &path, &conf)
    })
}

/// nginx (http core and ssl) with two workers terminating TLS for the tls-sni workload: a
/// fresh self-signed P-256 certificate for `bench.example`, TLS 1.2 and 1.3 (nginx 1.22's
/// default list lacks 1.3), no session cache and no tickets (so that every connection is a
/// full handshake), `Connection: close` after each response (`keepalive_timeout 0`), and 421
/// to a ClientHello that did not name `bench.example`.
pub fn tls(ctx: &Ctx) -> Result<Backend> {
    start(ctx, "tls-backend", |dir, port| {
        let (cert, key) = crate::tls::make_cert(dir)?;
        let d = dir.display();
        let name = crate::tls::SERVER_NAME;
        let conf = format!(
            "worker_processes 2;\npid {d}/nginx.pid;\nerror_log stderr warn;\n\
             events {{\n    worker_connections 4096;\n}}\n\
             http {{\n    access_log off;\n    keepalive_timeout 0;\n\
             \x20   ssl_protocols TLSv1.2 TLSv1.3;\n\
             \x20   ssl_session_cache off;\n    ssl_session_tickets off;\n\
             \x20   ssl_certificate {};\n    ssl_certificate_key {};\n\
             \x20   client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n\
             \x20   fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n\
             \x20   scgi_temp_path {d}/scgi;\n\
             \x20   server {{\n        listen 127.0.0.1:{port} ssl;\n\
             \x20       location / {{\n            default_type text/plain;\n\
             \x20           if ($ssl_server_name != \"{name}\") {{\n                return 421;\n            }}\n\
             \x20           return 200 \"ok\\n\";\n        }}\n    }}\n}}\n",
            cert.display(),
            key.display()
        );
        let path = dir.join("nginx-tls.conf");
        nginx_command(dir, &path, &conf)
    })
}

/// This binary as an echo server that holds every connection until the peer closes it.
pub fn echo(ctx: &Ctx) -> Result<Backend> {
    let exe = env::current_exe().context("finding the bench binary to run the echo server")?;
    start(ctx, "echo-backend", |_dir, port| {
        let mut cmd = Command::new(&exe);
        cmd.env(ECHO_ENV, port.to_string());
        Ok(cmd)
    })
}

/// Starts a backend on a fresh port and waits until it listens; a port taken meanwhile is
/// retried with another.
fn start(
    ctx: &Ctx,
    name: &str,
    command: impl Fn(&Path, u16) -> Result<Command>,
) -> Result<Backend> {
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let (dir, port) = (ctx.run_dir(name)?, free_port()?);
        let mut cmd = command(&dir, port)?;
        let mut proc = Proc::spawn(name, &mut cmd, &dir.join(format!("{name}.log")))?;
        match proc.wait_listening(port, READY_TIMEOUT) {
            Ok(()) => return Ok(Backend { proc, port }),
            Err(e) if crate::contenders::port_clash(&mut proc) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.map_or_else(
        || anyhow::anyhow!("{name}: not started"),
        |e| e.context(format!("{name}: no free port in {ATTEMPTS} attempts")),
    ))
}

/// Entry point of the re-executed binary: serves echo on 127.0.0.1:`port` until killed or
/// until the harness that started it is gone.
pub fn echo_main(port: &str) -> ExitCode {
    match serve_echo(port) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve_echo(port: &str) -> Result<()> {
    let port: u16 = port
        .trim()
        .parse()
        .with_context(|| format!("{ECHO_ENV}={port:?}"))?;
    let limit = tollgate::sys::raise_nofile_limit().context("raising the open-file limit")?;
    eprintln!("echo server: fd limit {}", limit.soft);
    // If the harness dies without killing us (SIGKILL), we are re-parented: exit then.
    let parent = std::os::unix::process::parent_id();
    thread::spawn(move || {
        loop {
            thread::sleep(Duration::from_millis(500));
            if std::os::unix::process::parent_id() != parent {
                std::process::exit(0);
            }
        }
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the echo server's runtime")?;
    rt.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("binding 127.0.0.1:{port}"))?;
        eprintln!("echo server: listening on 127.0.0.1:{port}");
        let mut failures = 0u64;
        loop {
            match listener.accept().await {
                Ok((conn, _)) => drop(tokio::spawn(echo_conn(conn))),
                Err(e) => {
                    // Out of descriptors, most likely: say so once in a while, back off.
                    failures += 1;
                    if failures.is_power_of_two() {
                        eprintln!("echo server: accept failed ({failures} times): {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    })
}

/// Echoes every byte back until the peer closes (or the connection fails). The buffer
/// starts small, since thousands of held connections each keep one, and grows to 64 KiB the
/// first time a read fills it: a stream (the upgrade workload's transfers) would otherwise
/// cost a read and a write per 512 bytes, and the backend's CPU would blur the balancer's
/// stalls.
async fn echo_conn(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let mut buf = vec![0u8; 512];
    loop {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                if n == buf.len() && buf.len() < 64 * 1024 {
                    buf.resize(64 * 1024, 0);
                }
            }
        }
    }
}

/// Writes `conf` to `path` and the command that runs nginx on it in the foreground, with
/// `dir` as its prefix.
fn nginx_command(dir: &Path, path: &Path, conf: &str) -> Result<Command> {
    fs::write(path, conf).with_context(|| format!("writing {}", path.display()))?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(path)
        .args(["-g", "daemon off;"]);
    Ok(cmd)
}
