//! `tollgate demo`: a newcomer's first minute. Two tiny HTTP backends on loopback answer with
//! their own name; tollgate balances `127.0.0.1:8080` over them with the same code path as
//! `run` (the config is YAML, loaded and validated like any file). Nothing else depends on
//! this module.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::app::Server;
use crate::config;

pub const DEMO_LISTEN: &str = "127.0.0.1:8080";
pub const DEMO_ADMIN: &str = "127.0.0.1:9100";

pub fn run() -> Result<()> {
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the demo runtime")?;
    control.block_on(async {
        let a = start_backend("demo-backend-1").await?;
        let b = start_backend("demo-backend-2").await?;
        let yaml = demo_config(a, b);
        let cfg =
            config::load_str(&yaml, "<demo>").map_err(|e| anyhow::anyhow!("demo config: {e}"))?;
        let server = Server::start(&cfg).with_context(|| {
            format!("cannot start the demo on {DEMO_LISTEN} and {DEMO_ADMIN} (in use?)")
        })?;
        print_welcome(a, b);
        wait_for_stop().await?;
        println!("stopping the demo");
        server.shutdown();
        Ok(())
    })
}

fn demo_config(a: SocketAddr, b: SocketAddr) -> String {
    format!(
        "workers: 2\n\
         admin:\n  bind: \"{DEMO_ADMIN}\"\n\
         shutdown:\n  drain_timeout: 2s\n\
         listeners:\n  demo:\n    bind: \"{DEMO_LISTEN}\"\n    pool: demo\n    limits:\n      max_connections: 1000\n\
         \x20     per_source: {{ connection_rate: 10/s, burst: 20, max_connections: 50 }}\n\
         pools:\n  demo:\n    balance: round_robin\n    health_check: {{ type: http, interval: 1s }}\n    backends:\n      - address: \"{a}\"\n      - address: \"{b}\"\n"
    )
}

fn print_welcome(a: SocketAddr, b: SocketAddr) {
    let a_enc = a.to_string().replace(':', "%3A");
    println!(
        "\ntollgate demo is running.\n\n\
         \x20 balancer   http://{DEMO_LISTEN}  (round robin over two backends)\n\
         \x20 backends   demo-backend-1 on {a}, demo-backend-2 on {b}\n\
         \x20 admin      http://{DEMO_ADMIN}  (status, metrics, runtime control)\n\n\
         Try:\n\
         \x20 for i in 1 2 3 4; do curl -s http://{DEMO_LISTEN}/; done     # answers alternate\n\
         \x20 curl -s http://{DEMO_ADMIN}/api/v1/status                     # pools, backends, counters\n\
         \x20 curl -s http://{DEMO_ADMIN}/metrics | grep tollgate_backend     # Prometheus metrics\n\
         \x20 curl -s http://{DEMO_ADMIN}/readyz                             # ready: a backend up in every pool\n\
         \x20 curl -s -X POST http://{DEMO_ADMIN}/api/v1/pools/demo/backends/{a_enc}/drain\n\
         \x20                                              # then only demo-backend-2 answers\n\
         \x20 for i in $(seq 40); do curl -s -o /dev/null -w '%{{http_code}} ' http://{DEMO_LISTEN}/; done\n\
         \x20                                              # 10/s per source, burst 20: then 000 (refused)\n\
         \x20 curl -s http://{DEMO_ADMIN}/api/v1/listeners/demo/sources/127.0.0.1   # why, and tokens left\n\
         \x20 TOLLGATE_LOG=debug cargo run --release -- demo              # see every connection\n\n\
         Press Ctrl-C to stop (tollgate drains open connections first).\n"
    );
}

/// Until Ctrl-C or SIGTERM; SIGHUP and SIGUSR2 are answered, never fatal.
async fn wait_for_stop() -> Result<()> {
    let mut signals = crate::signals::Signals::new()?;
    loop {
        match signals.next().await {
            crate::signals::Asked::Stop => return Ok(()),
            crate::signals::Asked::Reload => {
                println!("the demo has no config file to reload; edit one and use `tollgate run`")
            }
            crate::signals::Asked::Upgrade => {
                println!(
                    "the demo cannot upgrade its binary; `tollgate run` can (SIGUSR2, `tollgate upgrade`)"
                )
            }
        }
    }
}

/// A minimal HTTP/1.1 responder: reads one request head (bounded) and answers with its name.
async fn start_backend(name: &'static str) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind a demo backend")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => drop(tokio::spawn(answer(stream, name))),
                // Out of descriptors: back off instead of spinning.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    });
    Ok(addr)
}

async fn answer(mut stream: TcpStream, name: &str) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let body = format!("hello from {name}\n");
    let reply = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}
