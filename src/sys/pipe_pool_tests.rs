#![cfg(test)] // test code only: unwraps here fail a test, never a running tollgate
use super::*;
use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;

#[test]
fn pool_is_bounded_and_reuses_empty_pipes() {
    let pool = PipePool::new(2, 1, 65_536);
    let a = pool.take().unwrap();
    let b = pool.take().unwrap();
    assert!(pool.take().is_none(), "a third pipe exceeds max_open");
    drop(a);
    drop(b);
    assert_eq!(pool.open(), 1, "only max_idle pipes are kept");
    assert!(pool.take().is_some());
    let stats = pool.stats();
    assert_eq!(stats.created, 2, "the cached pipe was reused, not remade");
    assert_eq!(stats.fallbacks, [1, 0, 0], "one burst met the limit");
}

#[test]
fn a_pipe_that_still_holds_bytes_is_closed_not_reused() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    a.write_all(b"left behind").unwrap();
    let pool = PipePool::new(4, 4, 65_536);
    let mut pipe = pool.take().unwrap();
    while pipe.held() == 0 {
        let _ = pipe.fill_from(b.as_fd());
    }
    drop(pipe);
    assert_eq!(
        pool.open(),
        0,
        "the non-empty pipe was closed and uncounted"
    );
}

/// Each thread keeps its own empty pipes: what one worker gives back is not handed to
/// another (that would need a shared lock), the bound on pipes holds across threads, and a
/// thread that ends closes its cached pipes.
#[test]
fn each_thread_caches_its_own_pipes_under_one_bound() {
    let pool = PipePool::new(2, 4, 65_536);
    drop(pool.take().unwrap());
    assert_eq!(pool.open(), 1, "cached by this thread");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let other = pool.take().expect("a second pipe is within the bound");
                assert!(
                    pool.take().is_none(),
                    "this thread cannot take the first one"
                );
                drop(other);
                assert_eq!(pool.open(), 2);
            })
            .join()
            .unwrap();
    });
    assert_eq!(pool.open(), 1, "the ended thread closed its cached pipe");
    assert_eq!(pool.stats().created, 2);
    drop(pool.take().unwrap());
    assert_eq!(pool.stats().created, 2, "this thread reused its own pipe");
}

/// A refusal by the kernel is remembered for BACKOFF: bursts meanwhile copy without asking
/// the kernel again, and the first burst after it asks again.
#[test]
fn a_refused_pipe_is_not_asked_for_again_until_the_backoff_ends() {
    static ASKED: AtomicUsize = AtomicUsize::new(0);
    fn quota_exhausted(_: usize) -> Result<Pipe, PipeError> {
        ASKED.fetch_add(1, Relaxed);
        Err(PipeError::Small(8192))
    }
    let pool = PipePool::with_maker(16, 4, 131_072, quota_exhausted);
    let t0 = Instant::now();
    assert!(pool.take_with(|| t0).is_none());
    assert_eq!(ASKED.load(Relaxed), 1);
    for ms in [1, 10, 500, 999] {
        let at = t0 + Duration::from_millis(ms);
        assert!(pool.take_with(|| at).is_none());
    }
    assert_eq!(ASKED.load(Relaxed), 1, "not asked again while backing off");
    let later = t0 + BACKOFF + Duration::from_millis(1);
    assert!(pool.take_with(|| later).is_none());
    assert_eq!(
        ASKED.load(Relaxed),
        2,
        "asked again once the back-off ended"
    );
    let stats = pool.stats();
    assert_eq!(stats.open, 0);
    assert_eq!(stats.refused, [0, 2, 0], "two quota refusals");
    assert_eq!(
        stats.fallbacks,
        [0, 2, 4],
        "refused twice, backed off four times"
    );
}

/// Out of descriptors is remembered the same way, and pipes the pool already has are still
/// handed out while it backs off.
#[test]
fn cached_pipes_serve_while_the_pool_backs_off() {
    static ASKED: AtomicUsize = AtomicUsize::new(0);
    fn first_works(size: usize) -> Result<Pipe, PipeError> {
        match ASKED.fetch_add(1, Relaxed) {
            0 => Pipe::new(size),
            _ => Err(PipeError::Descriptors(io::Error::from_raw_os_error(
                libc::EMFILE,
            ))),
        }
    }
    let pool = PipePool::with_maker(16, 4, 65_536, first_works);
    let t0 = Instant::now();
    let held = pool.take_with(|| t0).unwrap();
    assert!(pool.take_with(|| t0).is_none(), "EMFILE");
    drop(held);
    let soon = t0 + Duration::from_millis(100);
    assert!(pool.take_with(|| soon).is_some(), "the cached pipe");
    assert_eq!(ASKED.load(Relaxed), 2);
    assert_eq!(pool.stats().refused, [1, 0, 0]);
}
