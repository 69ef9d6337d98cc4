//! Per-source connection rates over loopback, with clients bound to distinct 127.x.y.z
//! sources: a source offered at five times its rate gets `rate × time + burst` through, a
//! quieter source at the same time is untouched, every worker shares one limit, and a
//! refused source is logged once per interval, not once per connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::sources::{loopback, probe_from};
use common::*;

fn per_source(lines: &str) -> String {
    let mut s = "limits:\n  per_source:\n".to_owned();
    for l in lines.lines() {
        s.push_str(&format!("    {l}\n"));
    }
    s
}

#[test]
fn a_source_at_five_times_its_rate_gets_rate_times_time_plus_burst() {
    let echo = echo_backend();
    let yaml = config(
        &[(echo, 1)],
        &per_source("connection_rate: 20/s\nburst: 10"),
        "",
        "",
    );
    let server = start(&yaml);
    let front = front(&server);
    let (hot, quiet) = (loopback(1, 2), loopback(1, 3));
    // 100 attempts a second for two seconds from `hot`, 10 a second from `quiet`.
    let start = Instant::now();
    let (mut hot_in, mut quiet_in, mut last) = (0u32, 0u32, start);
    for i in 0..200u32 {
        let due = start + Duration::from_millis(u64::from(i) * 10);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait); // pacing the offered load, not waiting for a result
        }
        last = Instant::now();
        if probe_from(hot, front).is_some() {
            hot_in += 1;
        }
        if i % 10 == 0 {
            assert!(
                probe_from(quiet, front).is_some(),
                "the quiet source at {i}"
            );
            quiet_in += 1;
        }
    }
    let span = (last - start).as_secs_f64();
    let expected = 20.0 * span + 10.0 + 1.0;
    let got = f64::from(hot_in);
    eprintln!("{hot_in} admitted over {span:.3} s; expected {expected:.1}");
    assert!(
        (got - expected).abs() <= expected * 0.10,
        "{hot_in} admitted over {span:.2} s; expected {expected:.1} ± 10%"
    );
    let spec = server.snapshot().listener("front").unwrap().clone();
    wait_for("every refusal counted", Duration::from_secs(5), || {
        spec.live.rejected_rate_limit.load(Relaxed) == u64::from(200 - hot_in)
    });
    assert_eq!(
        spec.live.accepted.load(Relaxed),
        u64::from(hot_in + quiet_in),
        "only admitted connections are accepted"
    );
    assert_eq!(
        spec.pool.as_ref().unwrap().backends[0]
            .stats
            .connections
            .load(Relaxed),
        u64::from(hot_in + quiet_in),
        "refused connections never reached the backend"
    );
}

#[test]
fn all_workers_together_honour_one_limit() {
    let echo = echo_backend();
    let yaml = config(
        &[(echo, 1)],
        &per_source("connection_rate: 1/m\nburst: 29"),
        "",
        "",
    )
    .replace("workers: 2", "workers: 4");
    let server = start(&yaml);
    let front = front(&server);
    let source = loopback(1, 4);
    // 8 clients at once, 25 connections each: SO_REUSEPORT spreads them over the 4
    // workers, and together they must still get exactly burst + 1.
    let admitted: usize = std::thread::scope(|s| {
        let clients: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(move || {
                    (0..25)
                        .filter(|_| probe_from(source, front).is_some())
                        .count()
                })
            })
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).sum()
    });
    assert_eq!(admitted, 30, "one limit for all workers, not one each");
    let spec = server.snapshot().listener("front").unwrap().clone();
    wait_for("refusals counted", Duration::from_secs(5), || {
        spec.live.rejected_rate_limit.load(Relaxed) == 170
    });
}

#[test]
fn a_refused_source_is_logged_once_per_interval() {
    let echo = echo_backend();
    let yaml = config(
        &[(echo, 1)],
        &per_source("connection_rate: 1/m\nburst: 0"),
        "",
        "",
    );
    let running = binary::spawn(&yaml, None);
    let front = running.addr();
    let sources = [loopback(2, 1), loopback(2, 2)];
    for source in sources {
        for i in 0..30 {
            let admitted = probe_from(source, front).is_some();
            assert_eq!(admitted, i == 0, "attempt {i} from {source}");
        }
    }
    for source in sources {
        running.wait_log(&format!("\"client\":\"{source}:"), Duration::from_secs(5));
    }
    let logs = running.logs.lock().unwrap().clone();
    for source in sources {
        let lines: Vec<&String> = logs
            .iter()
            .filter(|l| l.contains("source refused") && l.contains(&format!("{source}:")))
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "29 refusals of {source}, one line: {lines:#?}"
        );
        assert!(
            lines[0].contains("\"reason\":\"rate_limit\""),
            "{}",
            lines[0]
        );
    }
}
