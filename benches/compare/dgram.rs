//! The datagram side of udp-bulk and udp-memory: a UDP echo backend and a load generator.
//!
//! The echo backend is this bench binary re-executed with `TOLLGATE_COMPARE_UDP_ECHO_PORT`
//! set (like the TCP echo server, so it dies with the harness): one thread per core, each
//! with its own `SO_REUSEPORT` socket, echoing every datagram to its sender with batched
//! `recvmmsg` / `sendmmsg` (tollgate's `sys::udp`, offloads off), so the backend is cheap
//! next to the balancer it measures.
//!
//! The load generator runs in the harness: `sockets` connected client sockets over two
//! threads, each socket keeping up to `window` datagrams of `size` bytes in flight and
//! sending one more per echo received, for a fixed time. Closed loop, so it measures what
//! the balancer can carry rather than how fast the kernel drops an open-loop flood; a
//! window that stays silent for 50 ms is presumed lost and refilled. Every datagram sent and
//! every echo received is counted; the difference is the loss.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};
use std::{env, thread};

use anyhow::{Context, Result, anyhow};
use tollgate::sys::udp::{self, MAX_BATCH, OffloadState, Offloads, RecvBatch, Route, SendBatch};

use crate::Ctx;
use crate::backends::Backend;
use crate::procs::{Proc, free_udp_port};

/// Set (to the port) in the environment of the re-executed bench binary that echoes UDP.
pub const UDP_ECHO_ENV: &str = "TOLLGATE_COMPARE_UDP_ECHO_PORT";

const READY_TIMEOUT: Duration = Duration::from_secs(15);
const ATTEMPTS: usize = 3;
/// A socket's window with no echo for this long is presumed lost.
const LOSS_WAIT: Duration = Duration::from_millis(50);
/// After the sending time, echoes still in flight are waited for this long.
const DRAIN_WAIT: Duration = Duration::from_millis(200);
const GENERATOR_THREADS: usize = 2;

/// The echo probe's payload, answered byte for byte.
pub const PROBE: &[u8] = b"tollgate-compare-probe";

/// Starts the UDP echo backend on a fresh port and waits until it echoes.
pub fn echo(ctx: &Ctx) -> Result<Backend> {
    let exe = env::current_exe().context("finding the bench binary to run the UDP echo")?;
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let (dir, port) = (ctx.run_dir("udp-echo")?, free_udp_port()?);
        let mut cmd = Command::new(&exe);
        cmd.env(UDP_ECHO_ENV, port.to_string());
        let mut proc = Proc::spawn("udp-echo", &mut cmd, &dir.join("udp-echo.log"))?;
        match proc.wait_udp_bound(port, READY_TIMEOUT) {
            Ok(()) => {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                crate::udp::probe(addr, PROBE, |r| r == PROBE, READY_TIMEOUT)
                    .map_err(|e| proc.failure(format!("{e:#}")))?;
                return Ok(Backend { proc, port });
            }
            Err(e) if crate::contenders::port_clash(&mut proc) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.map_or_else(
        || anyhow!("udp-echo: not started"),
        |e| e.context(format!("udp-echo: no free port in {ATTEMPTS} attempts")),
    ))
}

/// Entry point of the re-executed binary: echoes on 127.0.0.1:`port` until killed or until
/// the harness that started it is gone.
pub fn echo_main(port: &str) -> ExitCode {
    match serve_echo(port) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("udp echo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve_echo(port: &str) -> Result<()> {
    let port: u16 = port
        .trim()
        .parse()
        .with_context(|| format!("{UDP_ECHO_ENV}={port:?}"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let threads = thread::available_parallelism().map_or(2, |n| n.get().min(4));
    // Every socket is bound before any serves, so a port clash fails the start cleanly.
    let mut sockets = Vec::new();
    for _ in 0..threads {
        let bound =
            udp::bind_listener(addr, Offloads::NONE).with_context(|| format!("binding {addr}"))?;
        bound
            .socket
            .set_nonblocking(false)
            .context("making the echo socket blocking")?;
        sockets.push(bound.socket);
    }
    eprintln!("udp echo: {threads} thread(s) on {addr}");
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
    let handles: Vec<_> = sockets
        .into_iter()
        .map(|s| thread::spawn(move || echo_loop(&s)))
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| anyhow!("an echo thread panicked"))?
            .context("echo thread")?;
    }
    Ok(())
}

/// Receives a batch (blocking until at least one datagram) and sends every datagram back to
/// its source. A reply the kernel refuses is dropped: UDP, and the client counts it lost.
fn echo_loop(socket: &UdpSocket) -> io::Result<()> {
    let mut recv = RecvBatch::new(MAX_BATCH);
    let mut send = SendBatch::new(MAX_BATCH, MAX_BATCH * udp::MAX_UDP_PAYLOAD);
    let offload = OffloadState::none();
    loop {
        match udp::recv_batch(socket.as_fd(), &mut recv) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for d in recv.iter() {
            let Some(source) = d.source else { continue };
            let route = Route {
                dst: Some(source),
                src: None,
            };
            for segment in d.segments() {
                if !send.push(segment, route) {
                    flush(socket, &mut send, &offload);
                    send.push(segment, route);
                }
            }
        }
        flush(socket, &mut send, &offload);
    }
}

fn flush(socket: &UdpSocket, send: &mut SendBatch, offload: &OffloadState) {
    while !send.is_empty() {
        match udp::send_batch(socket.as_fd(), send, offload) {
            Ok(_) => {}
            // The refused datagram has been dropped from the batch; go on with the rest.
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    send.clear();
}

/// The shape of a load run.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub sockets: usize,
    /// Datagrams in flight per socket at most.
    pub window: usize,
    /// Payload bytes per datagram.
    pub size: usize,
    pub duration: Duration,
}

/// What a load run counted.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub sent: u64,
    pub received: u64,
}

/// Runs `load` against `target` and returns the totals once every socket has drained.
pub fn generate(target: SocketAddr, load: Load) -> Result<Counts> {
    let deadline = Instant::now() + load.duration;
    let threads = GENERATOR_THREADS.min(load.sockets).max(1);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            // Sockets spread over the threads, the first ones taking the remainder.
            let n = load.sockets / threads + usize::from(t < load.sockets % threads);
            thread::spawn(move || generator_thread(target, n, load, deadline))
        })
        .collect();
    let mut total = Counts::default();
    for h in handles {
        let c = h
            .join()
            .map_err(|_| anyhow!("a load generator thread panicked"))??;
        total.sent += c.sent;
        total.received += c.received;
    }
    Ok(total)
}

fn generator_thread(
    target: SocketAddr,
    sockets: usize,
    load: Load,
    deadline: Instant,
) -> Result<Counts> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a load generator runtime")?;
    rt.block_on(async move {
        let mut flows = tokio::task::JoinSet::new();
        for _ in 0..sockets {
            let socket = UdpSocket::bind("127.0.0.1:0").context("binding a client socket")?;
            socket
                .connect(target)
                .with_context(|| format!("connecting a client socket to {target}"))?;
            socket.set_nonblocking(true).context("O_NONBLOCK")?;
            let socket = tokio::net::UdpSocket::from_std(socket).context("registering")?;
            flows.spawn(flow(socket, load, deadline));
        }
        let mut total = Counts::default();
        while let Some(done) = flows.join_next().await {
            let c = done
                .context("a flow task failed")?
                .context("a client socket failed")?;
            total.sent += c.sent;
            total.received += c.received;
        }
        Ok(total)
    })
}

/// One client socket: keeps up to `window` datagrams in flight until `deadline`, then waits
/// for the last echoes.
async fn flow(socket: tokio::net::UdpSocket, load: Load, deadline: Instant) -> io::Result<Counts> {
    let payload = vec![0x5a_u8; load.size];
    let mut buf = vec![0u8; load.size.max(64) + 1];
    let mut c = Counts::default();
    let mut in_flight = 0usize;
    socket.writable().await?;
    loop {
        let sending = Instant::now() < deadline;
        while sending && in_flight < load.window {
            match socket.try_send(&payload) {
                Ok(_) => {
                    c.sent += 1;
                    in_flight += 1;
                }
                // A full buffer, or an ICMP error left by an earlier datagram: try later.
                Err(e) if is_transient(&e) => break,
                Err(e) => return Err(e),
            }
        }
        if !sending && in_flight == 0 {
            return Ok(c);
        }
        let wait = if sending { LOSS_WAIT } else { DRAIN_WAIT };
        match tokio::time::timeout(wait, socket.recv(&mut buf)).await {
            Ok(Ok(_)) => {
                c.received += 1;
                in_flight = in_flight.saturating_sub(1);
                // Whatever else is queued, without waiting again.
                while socket.try_recv(&mut buf).is_ok() {
                    c.received += 1;
                    in_flight = in_flight.saturating_sub(1);
                }
            }
            // Nothing listens (ICMP): bounded by the deadline, then given up.
            Ok(Err(e)) if is_transient(&e) && sending => {}
            Ok(Err(e)) if is_transient(&e) => return Ok(c),
            Ok(Err(e)) => return Err(e),
            Err(_) if sending => in_flight = 0,
            Err(_) => return Ok(c),
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::ConnectionRefused
    )
}
