//! `/metrics`: valid Prometheus text exposition (checked by a parser, and by `promtool check
//! metrics` where it is installed), with counters that move when they should and series
//! that leave with their backends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

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
    let refused = refused_addr();
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
        "listener", "pool", "backend", "side", "reason", "result", "version", "le",
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
    promtool_check(&text);
    server.shutdown();
}

#[test]
fn a_rejected_connection_is_counted_with_its_reason() {
    let top = "admin:\n  bind: \"127.0.0.1:0\"";
    let server = start(&config(
        &[(refused_addr(), 1)],
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

/// `promtool check metrics` (installed by .ci/run) lints the exposition; skipped where absent.
fn promtool_check(text: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not installed; skipping its lint");
        return;
    };
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{report}"
    );
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
    promtool_check(&text);
    server.shutdown();
}
