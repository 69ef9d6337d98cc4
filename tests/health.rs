//! Active health checks end to end: hysteresis (rise/fall) on a flapping backend, no new
//! connection to a backend while it is down, state in status and metrics, and health kept
//! across reloads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// A backend on `ip` that answers each connection with its one-byte id.
fn named_on(ip: &str, id: u8) -> SocketAddr {
    let l = TcpListener::bind(format!("{ip}:0")).unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.write_all(&[id]);
        }
    });
    addr
}

fn who(front: SocketAddr) -> u8 {
    let mut s = TcpStream::connect(front).unwrap();
    let mut id = Vec::new();
    s.read_to_end(&mut id).unwrap();
    id[0]
}

#[test]
fn a_flapping_backend_changes_state_only_after_rise_and_fall_and_takes_nothing_while_down() {
    // Stable backend on 127.0.0.2, flapping one on 127.0.0.3; both probed on the same port.
    let stable = named_on("127.0.0.2", 0);
    let flappy = named_on("127.0.0.3", 1);
    let health_stable = TcpListener::bind("127.0.0.2:0").unwrap();
    let hport = health_stable.local_addr().unwrap().port();
    let flappy_health = format!("127.0.0.3:{hport}");
    let pool = format!(
        "balance: round_robin\nhealth_check: {{ type: tcp, interval: 100ms, timeout: 90ms, rise: 2, fall: 3, port: {hport} }}"
    );
    let server = start(&config(&[(stable, 1), (flappy, 1)], "", &pool, ""));
    let front_addr = front(&server);
    let control = server.control().clone();

    let started = Instant::now();
    let toggles: Arc<Mutex<Vec<(Duration, bool)>>> = Arc::default();
    let states: Arc<Mutex<Vec<(Duration, bool)>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let toggler = {
        let toggles = toggles.clone();
        std::thread::spawn(move || {
            for _ in 0..6 {
                let l = TcpListener::bind(&flappy_health).unwrap();
                toggles.lock().unwrap().push((started.elapsed(), true));
                std::thread::sleep(Duration::from_millis(300));
                drop(l);
                toggles.lock().unwrap().push((started.elapsed(), false));
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let observer = {
        let (states, done, control) = (states.clone(), done.clone(), control.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let up = control.health_of("back", flappy).up;
                states.lock().unwrap().push((started.elapsed(), up));
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let mut served: Vec<(Duration, Duration, u8)> = Vec::new();
    while started.elapsed() < Duration::from_millis(3600) {
        let t0 = started.elapsed();
        let id = who(front_addr);
        served.push((t0, started.elapsed(), id));
        std::thread::sleep(Duration::from_millis(5));
    }
    toggler.join().unwrap();
    done.store(true, Ordering::Relaxed);
    observer.join().unwrap();
    drop(health_stable);

    let states = states.lock().unwrap().clone();
    let toggles = toggles.lock().unwrap().clone();
    let changes: Vec<(Duration, bool)> = states
        .windows(2)
        .filter(|w| w[0].1 != w[1].1)
        .map(|w| w[1])
        .collect();
    assert!(
        changes.iter().any(|c| !c.1) && changes.iter().any(|c| c.1),
        "it went down and up: {changes:?}"
    );
    for (at, up) in &changes {
        // The health port last went the same way (opened for up, closed for down) here.
        let (toggled, _) = toggles
            .iter()
            .rev()
            .find(|(t, open)| t < at && open == up)
            .copied()
            .unwrap();
        let since = *at - toggled;
        let need = if *up {
            Duration::from_millis(90)
        } else {
            Duration::from_millis(180)
        };
        assert!(
            since >= need,
            "{} only {since:?} after the toggle at {toggled:?}",
            if *up { "up" } else { "down" }
        );
    }
    // No connection made entirely while two consecutive observations said "down" reached it.
    for w in states.windows(2).filter(|w| !w[0].1 && !w[1].1) {
        for (t0, t1, id) in &served {
            if *t0 >= w[0].0 && *t1 <= w[1].0 {
                assert_eq!(*id, 0, "a connection at {t0:?} went to the down backend");
            }
        }
    }
    assert!(
        served.iter().any(|s| s.2 == 1),
        "the backend served while up"
    );
    server.shutdown();
}

#[test]
fn health_shows_in_status_and_metrics_and_survives_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    let (good, dead) = (echo_backend(), refused_addr());
    let pool = "health_check: { type: tcp, interval: 100ms, timeout: 50ms, rise: 1, fall: 1 }";
    let top = "admin:\n  bind: \"127.0.0.1:0\"";
    std::fs::write(&path, config(&[(good, 1), (dead, 1)], "", pool, top)).unwrap();
    let cfg = tollgate::config::load(&path).unwrap();
    let server = tollgate::app::Server::start_from(&cfg, Some(path.clone())).unwrap();
    let admin = server.admin_addr().unwrap();
    wait_for(
        "both backends checked, the dead one down",
        Duration::from_secs(5),
        || {
            let s = common::http::get(admin, "/api/v1/status").json();
            let b = &s["pools"][0]["backends"];
            b[1]["state"] == "down" && b[0]["last_check"]["result"] == "success"
        },
    );
    let status = common::http::get(admin, "/api/v1/status").json();
    assert_eq!(
        status["pools"][0]["backends"][1]["last_check"]["result"],
        "failure"
    );
    assert_eq!(
        status["pools"][0]["backends"][0]["last_check"]["result"],
        "success"
    );
    for i in 0..6u8 {
        assert_eq!(
            round_trip(front(&server), &[i]).unwrap(),
            [i],
            "every connection goes to the live backend"
        );
    }
    let snapshot = server.snapshot();
    assert_eq!(
        snapshot.pool("back").unwrap().backends[1].stats.failures(),
        0,
        "no connect was even tried on it"
    );
    let metrics = common::http::get(admin, "/metrics").body;
    let dead_up = format!("tollgate_backend_up{{pool=\"back\",backend=\"{dead}\"}} 0");
    assert!(metrics.contains(&dead_up), "{metrics}");
    assert!(
        metrics.contains("tollgate_health_checks_total{"),
        "{metrics}"
    );
    // A reload that keeps the backend keeps its health: it does not come back up for a moment.
    std::fs::write(&path, config(&[(good, 2), (dead, 1)], "", pool, top)).unwrap();
    server.control().reload_blocking().unwrap();
    assert!(
        !server.control().health_of("back", dead).up,
        "health carried over"
    );
    // Without a check, a backend is up again.
    std::fs::write(&path, config(&[(good, 1), (dead, 1)], "", "", top)).unwrap();
    server.control().reload_blocking().unwrap();
    assert!(server.control().health_of("back", dead).up);
    server.shutdown();
}

#[test]
fn checks_stop_for_backends_a_reload_removes() {
    // A health peer that counts the probes it receives.
    let probes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peer = TcpListener::bind("127.0.0.1:0").unwrap();
    let checked = peer.local_addr().unwrap();
    let counter = probes.clone();
    std::thread::spawn(move || {
        for s in peer.incoming() {
            counter.fetch_add(1, Ordering::Relaxed);
            drop(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    let pool = "health_check: { type: tcp, interval: 50ms, timeout: 40ms }";
    let keep = echo_backend();
    std::fs::write(&path, config(&[(keep, 1), (checked, 1)], "", pool, "")).unwrap();
    let cfg = tollgate::config::load(&path).unwrap();
    let server = tollgate::app::Server::start_from(&cfg, Some(path.clone())).unwrap();
    wait_for(
        "the backend is being probed",
        Duration::from_secs(5),
        || probes.load(Ordering::Relaxed) >= 3,
    );
    std::fs::write(&path, config(&[(keep, 1)], "", pool, "")).unwrap();
    server.control().reload_blocking().unwrap();
    std::thread::sleep(Duration::from_millis(100)); // let a probe already in flight land
    let after = probes.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        probes.load(Ordering::Relaxed),
        after,
        "no probe after the backend left the config"
    );
    server.shutdown();
}
