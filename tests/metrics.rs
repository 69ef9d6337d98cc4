//! `/metrics`: valid Prometheus text exposition (checked by a parser, and by `promtool check
//! metrics` where it is installed), with counters that move when they should and series
//! that leave with their backends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::http::get;
use common::*;
use prometheus_parse::{Scrape, Value};

fn scrape(admin: SocketAddr) -> (String, Scrape) {
    let a = get(admin, "/metrics");
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("content-type").as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let parsed = Scrape::parse(a.body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    (a.body, parsed)
}

fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(h) => h.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => f64::NAN,
        })
}

#[test]
fn exposition_parses_and_counters_move() {
    let echo = echo_backend();
    let refused = reserved_refused_addr();
    let top = "admin:\n  bind: \"127.0.0.1:0\"";
    let server = start(&config(&[(echo, 1), (refused, 1)], "", "", top));
    let admin = server.admin_addr().unwrap();
    let (_, before) = scrape(admin);
    let (e, r) = (echo.to_string(), refused.to_string());
    assert_eq!(
        value(
            &before,
            "tollgate_listener_connections_accepted_total",
            &[("listener", "front")]
        ),
        Some(0.0)
    );
    assert_eq!(value(&before, "tollgate_config_generation", &[]), Some(1.0));
    assert_eq!(
        value(&before, "tollgate_backend_up", &[("backend", &e)]),
        Some(1.0)
    );
    for i in 0..4u8 {
        assert_eq!(round_trip(front(&server), &[i; 10]).unwrap(), vec![i; 10]);
    }
    let (text, after) = scrape(admin);
    assert_eq!(
        value(
            &after,
            "tollgate_listener_connections_accepted_total",
            &[("listener", "front")]
        ),
        Some(4.0)
    );
    wait_for(
        "connections close and bytes are counted",
        Duration::from_secs(5),
        || {
            let (_, s) = scrape(admin);
            value(&s, "tollgate_backend_sent_bytes_total", &[("backend", &e)]) == Some(40.0)
                && value(
                    &s,
                    "tollgate_backend_connections_active",
                    &[("backend", &e)],
                ) == Some(0.0)
        },
    );
    assert_eq!(
        value(
            &after,
            "tollgate_backend_connections_total",
            &[("backend", &e)]
        ),
        Some(4.0)
    );
    let refusals = value(
        &after,
        "tollgate_backend_connect_failures_total",
        &[("backend", &r), ("reason", "refused")],
    );
    assert_eq!(
        refusals,
        Some(2.0),
        "every other pick hits the refused backend first"
    );
    assert_eq!(
        value(
            &after,
            "tollgate_backend_connect_duration_seconds",
            &[("pool", "back")]
        ),
        Some(4.0)
    );
    assert!(
        text.contains("process_cpu_seconds_total"),
        "the process collector is registered"
    );
    // Labels stay bounded: only these names appear on tollgate's series, never a client's.
    let allowed = [
        "listener", "pool", "backend", "side", "reason", "result", "version", "rustc", "commit",
        "le",
    ];
    for line in text.lines().filter(|l| l.starts_with("tollgate_")) {
        if let Some((_, rest)) = line.split_once('{') {
            for pair in rest.split_once('}').map_or("", |(l, _)| l).split(',') {
                let name = pair.split('=').next().unwrap_or_default();
                assert!(
                    allowed.contains(&name),
                    "unexpected label `{name}` in {line}"
                );
            }
        }
    }
    common::promtool::check(&text);
    server.shutdown();
}

#[test]
fn a_rejected_connection_is_counted_with_its_reason() {
    let top = "admin:\n  bind: \"127.0.0.1:0\"";
    let server = start(&config(
        &[(reserved_refused_addr(), 1)],
        "",
        "connect_retries: 0",
        top,
    ));
    let mut c = TcpStream::connect(front(&server)).unwrap();
    assert!(closed_within(&mut c, Duration::from_secs(5)));
    let admin = server.admin_addr().unwrap();
    wait_for("the rejection is counted", Duration::from_secs(5), || {
        let (_, s) = scrape(admin);
        value(
            &s,
            "tollgate_listener_connections_rejected_total",
            &[("listener", "front"), ("reason", "no_backend")],
        ) == Some(1.0)
    });
    server.shutdown();
}

#[test]
fn a_backend_that_leaves_the_config_loses_its_series() {
    let (a, b) = (echo_backend(), echo_backend());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    let top = "admin:\n  bind: \"127.0.0.1:0\"";
    std::fs::write(&path, config(&[(a, 1), (b, 1)], "", "", top)).unwrap();
    let cfg = tollgate::config::load(&path).unwrap();
    let server = tollgate::app::Server::start_from(&cfg, Some(path.clone())).unwrap();
    let admin = server.admin_addr().unwrap();
    let (_, s) = scrape(admin);
    assert_eq!(
        value(&s, "tollgate_backend_up", &[("backend", &b.to_string())]),
        Some(1.0)
    );
    std::fs::write(&path, config(&[(a, 1)], "", "", top)).unwrap();
    assert_eq!(server.control().reload_blocking().unwrap(), 2);
    let (text, s) = scrape(admin);
    assert!(!text.contains(&b.to_string()), "{text}");
    assert_eq!(
        value(&s, "tollgate_backend_up", &[("backend", &a.to_string())]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "tollgate_config_reloads_total",
            &[("result", "success")]
        ),
        Some(1.0)
    );
    assert_eq!(value(&s, "tollgate_config_generation", &[]), Some(2.0));
    server.shutdown();
}

/// Pipes show in the metrics: made when bulk data is spliced, none refused on a host with
/// descriptors and quota to spare, every reason's series present from the start.
#[test]
fn spliced_bulk_data_shows_in_the_pipe_metrics() {
    let echo = echo_backend();
    let top = "forwarding: splice\nadmin:\n  bind: \"127.0.0.1:0\"";
    let server = start(&config(&[(echo, 1)], "", "", top));
    let admin = server.admin_addr().unwrap();
    let (_, before) = scrape(admin);
    assert_eq!(
        value(&before, "tollgate_pipes_created_total", &[]),
        Some(0.0)
    );
    let payload = vec![7u8; 1 << 20];
    assert_eq!(round_trip(front(&server), &payload).unwrap(), payload);
    let (text, after) = scrape(admin);
    let created = value(&after, "tollgate_pipes_created_total", &[]).unwrap();
    assert!(created >= 1.0, "bulk data was spliced through a pipe");
    assert!(value(&after, "tollgate_pipes_open", &[]).is_some());
    for reason in ["descriptors", "quota", "error"] {
        let refused = value(
            &after,
            "tollgate_pipes_refused_total",
            &[("reason", reason)],
        );
        assert_eq!(refused, Some(0.0), "refused: {reason}");
    }
    for reason in ["limit", "refused", "backoff"] {
        let fell_back = value(
            &after,
            "tollgate_pipe_fallbacks_total",
            &[("reason", reason)],
        );
        assert_eq!(fell_back, Some(0.0), "fallback: {reason}");
    }
    common::promtool::check(&text);
    server.shutdown();
}

/// The commit build.rs should have found: `TOLLGATE_COMMIT` when the build was given one,
/// else HEAD when this package is the top of a git checkout, else `unknown`.
fn built_from() -> String {
    if let Ok(commit) = std::env::var("TOLLGATE_COMMIT")
        && !commit.trim().is_empty()
    {
        return commit.trim().to_owned();
    }
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let top = git(&["rev-parse", "--show-toplevel"]).and_then(|t| std::fs::canonicalize(t).ok());
    if top != std::fs::canonicalize(dir).ok() {
        return "unknown".to_owned();
    }
    git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
}

/// `tollgate_build_info` names the compiler and the commit it was built from: the checkout's
/// HEAD when built from git (as these tests are), `unknown` otherwise.
#[test]
fn build_info_names_the_compiler_and_the_commit() {
    let top = "admin:\n  bind: \"127.0.0.1:0\"";
    let server = start(&config(&[(echo_backend(), 1)], "", "", top));
    let (text, s) = scrape(server.admin_addr().unwrap());
    let info = s
        .samples
        .iter()
        .find(|x| x.metric == "tollgate_build_info")
        .expect("tollgate_build_info");
    assert_eq!(info.labels.get("version"), Some(env!("CARGO_PKG_VERSION")));
    let rustc = info.labels.get("rustc").expect("a rustc label");
    let numbers: Vec<&str> = rustc.split('-').next().unwrap().split('.').collect();
    assert!(
        numbers.len() == 3 && numbers.iter().all(|n| n.parse::<u32>().is_ok()),
        "rustc=\"{rustc}\" is a compiler version"
    );
    let head = built_from();
    assert_eq!(info.labels.get("commit"), Some(head.as_str()));
    common::promtool::check(&text);
    server.shutdown();
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The last reload's outcome: 1 and the time of the load in force from start-up on; a refused
/// file turns the first to 0 and leaves the time of the config that stays; the next good
/// file sets both again.
#[test]
fn the_last_reload_shows_whether_it_worked_and_when_the_config_in_force_was_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    let top = "admin:\n  bind: \"127.0.0.1:0\"";
    let good = config(&[(echo_backend(), 1)], "", "", top);
    let before_start = unix_now();
    let server = start_file(&path, &good);
    let after_start = unix_now();
    let admin = server.admin_addr().unwrap();
    let gauges = || {
        let (text, s) = scrape(admin);
        common::promtool::check(&text);
        let ok = value(&s, "tollgate_config_last_reload_successful", &[]).unwrap();
        let at = value(
            &s,
            "tollgate_config_last_reload_success_timestamp_seconds",
            &[],
        )
        .unwrap();
        let failed = value(
            &s,
            "tollgate_config_reloads_total",
            &[("result", "failure")],
        );
        (ok, at, failed.unwrap())
    };
    let (ok, started, failed) = gauges();
    assert_eq!(
        (ok, failed),
        (1.0, 0.0),
        "start-up counts as a successful load"
    );
    assert!(
        (before_start..=after_start).contains(&started),
        "{before_start} <= {started} <= {after_start}"
    );
    std::fs::write(&path, good.replace("pools:", "pools:\n  typo: 1")).unwrap();
    assert!(server.control().reload_blocking().is_err());
    assert_eq!(
        gauges(),
        (0.0, started, 1.0),
        "refused: the old load's time stays"
    );
    let before_reload = unix_now();
    std::fs::write(&path, &good).unwrap();
    assert_eq!(server.control().reload_blocking().unwrap(), 2);
    let (ok, reloaded, failed) = gauges();
    assert_eq!((ok, failed), (1.0, 1.0));
    assert!(
        (before_reload..=unix_now()).contains(&reloaded),
        "the successful reload's time: {reloaded}"
    );
    server.shutdown();
}

/// The (upper bound, cumulative count) of every finite bucket of the connect histogram.
fn connect_buckets(s: &Scrape) -> Vec<(f64, f64)> {
    let sample = s
        .samples
        .iter()
        .find(|x| x.metric == "tollgate_backend_connect_duration_seconds")
        .expect("the connect histogram");
    let Value::Histogram(buckets) = &sample.value else {
        panic!("not a histogram: {:?}", sample.value);
    };
    buckets
        .iter()
        .filter(|b| b.less_than.is_finite())
        .map(|b| (b.less_than, b.count))
        .collect()
}

/// Every connect that succeeds within its timeout lands in a finite bucket: the largest one
/// shown reaches the longest `timeouts.connect` (default 3 s: 5), follows a reload that
/// lengthens it (45 s: 50), and the new bounds count the connects made before.
#[test]
fn connect_buckets_reach_the_longest_connect_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    let top = "admin:\n  bind: \"127.0.0.1:0\"";
    let echo = echo_backend();
    let server = start_file(&path, &config(&[(echo, 1)], "", "", top));
    let admin = server.admin_addr().unwrap();
    for i in 0..3u8 {
        assert_eq!(round_trip(front(&server), &[i]).unwrap(), vec![i]);
    }
    let (text, s) = scrape(admin);
    common::promtool::check(&text);
    let buckets = connect_buckets(&s);
    assert_eq!(buckets.last(), Some(&(5.0, 3.0)), "{buckets:?}");
    let longer = config(&[(echo, 1)], "timeouts: { connect: 45s }", "", top);
    std::fs::write(&path, longer).unwrap();
    assert_eq!(server.control().reload_blocking().unwrap(), 2);
    let (text, s) = scrape(admin);
    common::promtool::check(&text);
    let buckets = connect_buckets(&s);
    assert_eq!(buckets.last(), Some(&(50.0, 3.0)), "{buckets:?}");
    assert!(buckets.contains(&(25.0, 3.0)), "{buckets:?}");
    server.shutdown();
}

/// `process_cpu_seconds_total` follows the CPU the process uses on all its threads: it agrees
/// with the kernel's account in /proc/PID/stat before and after a bulk transfer that only
/// the workers carry (the crate's collector showed whole seconds, 0 until the first).
#[test]
fn process_cpu_seconds_follow_the_cpu_used_by_every_thread() {
    let top = "forwarding: copy\nadmin:\n  bind: \"127.0.0.1:0\"";
    let lb = binary::spawn(&config(&[(echo_backend(), 1)], "", "", top), None);
    let front = lb.logged_addr(&["listener bound"]);
    let admin = lb.logged_addr(&["admin API listening"]);
    // The kernel's account read just before and after a scrape bounds what the scrape says.
    // /proc/PID/stat truncates user and system time to ticks of 10 ms each: the later
    // reading may be up to two ticks short.
    let bracketed = || {
        let below = lb.cpu_time().as_secs_f64();
        let (text, s) = scrape(admin);
        let above = lb.cpu_time().as_secs_f64() + 0.02;
        let cpu = value(&s, "process_cpu_seconds_total", &[]).expect("process_cpu_seconds_total");
        assert!(
            below <= cpu && cpu <= above,
            "process_cpu_seconds_total {cpu} outside /proc/PID/stat's [{below}, {above}]"
        );
        common::promtool::check(&text);
        cpu
    };
    let before = bracketed();
    echo_exact(&mut TcpStream::connect(front).unwrap(), 3, 256 << 20);
    let after = bracketed();
    // Copying 2 x 256 MiB costs tollgate about 0.1 s of CPU here; three ticks of it at
    // least on any machine.
    assert!(
        after >= before + 0.03,
        "copying 2 x 256 MiB moved the CPU counter from {before} to {after} only"
    );
}
