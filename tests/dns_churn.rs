//! A `host:` answer that changes every 60 ms (TTL 0, `min_ttl: 50ms`) while connections
//! arrive about once a millisecond: every snapshot published from a DNS round must leave a
//! backend to pick, so no connection is refused while the answer moves, and every address
//! that comes and goes serves in turn.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::dns::{DnsServer, answer_or_zero, id_backends_on_one_port, lo, start_host};
use common::*;

#[test]
fn answers_changing_under_load_refuse_no_connection() {
    let dns = DnsServer::start();
    let port = id_backends_on_one_port(&[(lo(121), 1), (lo(122), 2), (lo(123), 3)]);
    dns.set_a("churn.test", 0, &[lo(121), lo(122)]);
    let resolver = "min_ttl: 50ms";
    let server = start_host(&dns, resolver, "", "churn.test", port);
    let front = front(&server);
    wait_for("resolved", Duration::from_secs(10), || {
        answer_or_zero(front) != 0
    });
    let done = Arc::new(AtomicBool::new(false));
    let flipper = {
        let done = done.clone();
        std::thread::spawn(move || {
            let sets = [[lo(121), lo(122)], [lo(122), lo(123)], [lo(123), lo(121)]];
            let mut flips = 0;
            while !done.load(Ordering::Relaxed) && flips < 200 {
                dns.set_a("churn.test", 0, &sets[flips % 3]);
                flips += 1;
                std::thread::sleep(Duration::from_millis(60));
            }
            flips
        })
    };
    // A connection every millisecond or so for 2 s (at most 3000, to spare ephemeral ports)
    // while the answer changes every 60 ms.
    let started = Instant::now();
    let mut seen = BTreeSet::new();
    let mut made = 0;
    while started.elapsed() < Duration::from_secs(2) && made < 3000 {
        let id = answer_or_zero(front);
        assert_ne!(
            id, 0,
            "connection {made} was refused while the answer changed"
        );
        seen.insert(id);
        made += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    eprintln!("{made} connections over changing answers, none refused");
    done.store(true, Ordering::Relaxed);
    let flips = flipper.join().unwrap();
    assert!(flips >= 5, "the answer changed {flips} times");
    assert_eq!(
        seen,
        BTreeSet::from([1, 2, 3]),
        "every address served in turn"
    );
}
