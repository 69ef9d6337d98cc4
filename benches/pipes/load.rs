//! The load of the pipes benchmark: many parallel streams from one client thread to a sink
//! thread, both on current-thread tokio runtimes, so thousands of connections cost two
//! threads and a 64 KiB buffer each side rather than a thread and a buffer per stream.
//!
//! Each client stream sends its bytes, half-closes, and waits for the end of stream; the sink
//! reads each connection to its end, reports its byte count and closes it. Everything is
//! bounded by the run's deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::child::{Ctx, Res};
use super::streams;

const BUF: usize = 64 * 1024;
/// The sink's listen backlog: every stream connects at once.
const BACKLOG: u32 = 4096;
/// The sink's receive buffer (`SO_RCVBUF`, which also turns off its autotuning): small, like
/// a slow client's, so that tollgate's sends to it fill up and its pumps wait holding a
/// full pipe, as they do in front of many slow receivers. Each such wait holds a pipe.
const SINK_RCVBUF: u32 = 64 * 1024;

fn runtime() -> Res<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ctx("building a runtime")
}

/// A server that reads every connection to its end and reports how many bytes it got.
pub struct Sink {
    pub addr: SocketAddr,
    done: Receiver<Res<u64>>,
}

impl Sink {
    pub fn start() -> Res<Sink> {
        let (tx, done) = mpsc::channel();
        let (ready_tx, ready) = mpsc::channel();
        thread::Builder::new()
            .name("sink".into())
            .spawn(move || serve(tx, ready_tx))
            .ctx("starting the sink")?;
        let addr = ready
            .recv_timeout(Duration::from_secs(10))
            .ctx("the sink did not start")??;
        Ok(Sink { addr, done })
    }

    /// Forgets reports of an earlier run.
    pub fn drain_stale(&self) {
        while self.done.try_recv().is_ok() {}
    }

    /// Waits until `streams` connections each delivered exactly `per_stream` bytes.
    pub fn wait_for(&self, streams: usize, per_stream: u64, deadline: Instant) -> Res<()> {
        streams::wait_for(&self.done, streams, per_stream, deadline)
    }
}

fn serve(tx: Sender<Res<u64>>, ready: Sender<Res<SocketAddr>>) {
    let listening = runtime().and_then(|rt| {
        let socket = TcpSocket::new_v4().ctx("sink socket")?;
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        socket.bind(any).ctx("sink bind")?;
        socket
            .set_recv_buffer_size(SINK_RCVBUF)
            .ctx("sink SO_RCVBUF")?;
        let listener = rt
            .block_on(async { socket.listen(BACKLOG) })
            .ctx("sink listen")?;
        let addr = listener.local_addr().ctx("sink address")?;
        Ok((rt, listener, addr))
    });
    let (rt, listener) = match listening {
        Ok((rt, listener, addr)) => {
            let _ = ready.send(Ok(addr));
            (rt, listener)
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let tx = tx.clone();
                    tokio::spawn(async move { drop(tx.send(discard(stream).await)) });
                }
                Err(e) => drop(tx.send(Err(format!("sink accept: {e}")))),
            }
        }
    });
}

async fn discard(mut stream: TcpStream) -> Res<u64> {
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) => return Err(format!("sink read after {total} bytes: {e}")),
        }
    }
}

/// Starts `streams` clients to `to`, each sending `per_stream` bytes; the thread's result
/// is the first failure, if any.
pub fn clients(
    to: SocketAddr,
    streams: usize,
    per_stream: u64,
    deadline: Instant,
) -> thread::JoinHandle<Res<()>> {
    thread::spawn(move || {
        let rt = runtime()?;
        let data: Arc<[u8]> = (0..BUF).map(|i| (i % 251) as u8 + 1).collect();
        rt.block_on(async move {
            let tasks: Vec<_> = (0..streams)
                .map(|_| tokio::spawn(client(to, per_stream, data.clone())))
                .collect();
            let all = async {
                for task in tasks {
                    task.await.ctx("client task")??;
                }
                Ok(())
            };
            let deadline = tokio::time::Instant::from_std(deadline);
            tokio::time::timeout_at(deadline, all)
                .await
                .ctx("clients: deadline")?
        })
    })
}

/// Sends `bytes` bytes, half-closes, then waits for the peer's end of stream.
async fn client(to: SocketAddr, bytes: u64, data: Arc<[u8]>) -> Res<()> {
    let mut stream = TcpStream::connect(to).await.ctx(format!("connect {to}"))?;
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left).map_or(data.len(), |l| l.min(data.len()));
        stream.write_all(&data[..n]).await.ctx("client write")?;
        left -= n as u64;
    }
    stream.shutdown().await.ctx("client shutdown")?;
    match stream
        .read(&mut [0u8; 64])
        .await
        .ctx("client waiting for EOF")?
    {
        0 => Ok(()),
        n => Err(format!("client got {n} unexpected bytes back")),
    }
}
