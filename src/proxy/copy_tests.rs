//! Forwarding with real sockets on loopback: bytes, half-closes, counters, pipes, and a
//! forwarding frozen and resumed.
#![cfg(test)] // test code only: unwraps here fail a test, never a running tollgate

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A connected pair of loopback sockets.
async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (b, _) = l.accept().await.unwrap();
    (a, b)
}

/// Splice mode with a pool that has no pipe to give must still move every byte, through
/// the buffered copy.
#[tokio::test]
async fn splice_mode_falls_back_to_copy_when_no_pipe_can_be_had() {
    let (mut client_end, client) = pair().await;
    let (backend, mut backend_end) = pair().await;
    let empty_pool = PipePool::new(0, 0, 65_536);
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let expected = payload.clone();
    let peer = tokio::spawn(async move {
        client_end.write_all(&payload).await.unwrap();
        client_end.shutdown().await.unwrap();
        let mut back = Vec::new();
        client_end.read_to_end(&mut back).await.unwrap();
        back
    });
    let echo = tokio::spawn(async move {
        let mut got = Vec::new();
        backend_end.read_to_end(&mut got).await.unwrap();
        backend_end.write_all(&got[..1000]).await.unwrap();
        got
    });
    let idle = Duration::from_secs(10);
    let stats = BackendStats::default();
    let handoff = Handoff::default();
    let (result, moved) = forward(
        (&client, &backend),
        Start::Fresh { sent: 0 },
        idle,
        ForwardMode::Splice,
        &empty_pool,
        (&stats, None),
        Some(&handoff),
    )
    .await;
    result.unwrap();
    drop((client, backend));
    assert_eq!(echo.await.unwrap(), expected);
    assert_eq!(peer.await.unwrap(), expected[..1000]);
    assert_eq!(
        moved,
        Transfer {
            to_backend: 300_000,
            to_client: 1000,
            first_fin: Some(Side::Client),
        }
    );
    assert_eq!(empty_pool.open(), 0, "no pipe was made");
    assert_eq!(
        counted(&stats),
        (300_000, 1000),
        "the counters got every byte"
    );
}

/// (sent, received) bytes on the backend's counters.
fn counted(stats: &BackendStats) -> (u64, u64) {
    (
        stats.sent_bytes.load(Ordering::Relaxed),
        stats.received_bytes.load(Ordering::Relaxed),
    )
}

/// The counters follow a connection that stays open (within about `FLUSH_EVERY`), and a
/// connection whose future is dropped (a worker cut at the drain deadline) still counts
/// the bytes it delivered since the last flush.
#[tokio::test]
async fn bytes_count_while_open_and_when_dropped() {
    let (mut client_end, client) = pair().await;
    let (backend, mut backend_end) = pair().await;
    let pipes = PipePool::new(0, 0, 65_536);
    let stats = BackendStats::default();
    let idle = Duration::from_secs(60);
    let handoff = Handoff::default();
    let mut forwarding = Box::pin(forward(
        (&client, &backend),
        Start::Fresh { sent: 0 },
        idle,
        ForwardMode::Copy,
        &pipes,
        (&stats, None),
        Some(&handoff),
    ));
    let peers = async {
        let mut buf = [0u8; 1000];
        client_end.write_all(&[1; 1000]).await.unwrap();
        backend_end.read_exact(&mut buf).await.unwrap();
        backend_end.write_all(&[2; 300]).await.unwrap();
        client_end.read_exact(&mut buf[..300]).await.unwrap();
        let deadline = Instant::now() + FLUSH_EVERY * 5;
        while counted(&stats) != (1000, 300) {
            assert!(Instant::now() < deadline, "counted {:?}", counted(&stats));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Delivered after the flush above, and dropped well before the next one is due
        // (no assertion on that: it would be one on timing), so the drop counts these.
        client_end.write_all(&[3; 50]).await.unwrap();
        backend_end.read_exact(&mut buf[..50]).await.unwrap();
    };
    tokio::select! {
        r = &mut forwarding => panic!("forwarding ended while both peers were open: {r:?}"),
        () = peers => {}
    }
    drop(forwarding);
    assert_eq!(counted(&stats), (1050, 300));
}

/// A forwarding frozen in the middle of a transfer (as a binary upgrade freezes it) and
/// resumed from its state delivers every byte exactly once, in order, and passes the FIN on;
/// the bytes it moved before count once.
#[tokio::test]
async fn a_frozen_forwarding_resumes_where_it_stood() {
    let (mut client_end, client) = pair().await;
    let (backend, mut backend_end) = pair().await;
    let pipes = PipePool::new(16, 4, 65_536);
    let stats = BackendStats::default();
    let handoff = Handoff::default();
    const LEN: usize = 3_000_000;
    let payload: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    let expected = payload.clone();
    let writer = tokio::spawn(async move {
        // Paced, so that the freeze comes in the middle.
        for chunk in payload.chunks(64 * 1024) {
            client_end.write_all(chunk).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        client_end.shutdown().await.unwrap();
        client_end
    });
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        backend_end.read_to_end(&mut got).await.unwrap();
        backend_end.shutdown().await.unwrap();
        got
    });
    let idle = Duration::from_secs(10);
    let mut forwarding = Box::pin(forward(
        (&client, &backend),
        Start::Fresh { sent: 0 },
        idle,
        ForwardMode::Splice,
        &pipes,
        (&stats, None),
        Some(&handoff),
    ));
    tokio::select! {
        r = &mut forwarding => panic!("ended before the freeze: {r:?}"),
        () = tokio::time::sleep(Duration::from_millis(20)) => {}
    }
    let _taken = handoff.start();
    let (result, before) = forwarding.await;
    let Err(ForwardError::Frozen(frozen)) = result else {
        panic!("not frozen: {result:?}");
    };
    assert!(
        before.to_backend > 0 && before.to_backend < LEN as u64,
        "frozen in the middle: {before:?}"
    );
    handoff.stop();
    let (result, after) = forward(
        (&client, &backend),
        Start::Thawed(frozen),
        idle,
        ForwardMode::Splice,
        &pipes,
        (&stats, None),
        Some(&handoff),
    )
    .await;
    result.unwrap();
    assert_eq!(
        after.to_backend, LEN as u64,
        "moved counts on from the frozen state"
    );
    let _client_end = writer.await.unwrap();
    assert!(
        reader.await.unwrap() == expected,
        "every byte once, in order"
    );
    assert_eq!(counted(&stats), (LEN as u64, 0), "each byte counted once");
}
