//! Reload, through the API and SIGHUP, is all or nothing and drops nothing: unchanged
//! listeners keep their sockets, new ones are bound, removed ones stop accepting while their
//! connections finish, overrides and counters carry over, and a bad file changes nothing.
//! Each reload answers (and logs) what it changed and the overrides that mask the file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use common::binary;
use common::http::{get, request};
use common::*;

/// A config with listener `front` over `backends`, plus listener `extra` when asked.
fn yaml(backends: &[SocketAddr], extra: bool) -> String {
    let mut y = String::from(
        "workers: 2\nadmin:\n  bind: \"127.0.0.1:0\"\nshutdown: { drain_timeout: 5s }\nlisteners:\n",
    );
    y.push_str("  front:\n    bind: \"127.0.0.1:0\"\n    pool: back\n");
    if extra {
        y.push_str("  extra:\n    bind: \"127.0.0.1:0\"\n    pool: back\n");
    }
    y.push_str("pools:\n  back:\n    backends:\n");
    for b in backends {
        y.push_str(&format!("      - address: \"{b}\"\n"));
    }
    y
}

#[test]
fn reload_adds_and_removes_listeners_and_backends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    let (a, b) = (echo_backend(), echo_backend());
    let server = start_file(&path, &yaml(&[a], true));
    let admin = server.admin_addr().unwrap();
    let front_addr = front(&server);
    let extra = server.addrs("extra")[0];
    // A connection on `extra` stays open across its removal.
    let mut on_extra = TcpStream::connect(extra).unwrap();
    on_extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    on_extra.write_all(b"1").unwrap();
    let mut one = [0u8; 1];
    on_extra.read_exact(&mut one).unwrap();
    std::fs::write(&path, yaml(&[a, b], false)).unwrap();
    let r = request(admin, "POST", "/api/v1/reload", None, "");
    assert_eq!(
        (r.status, r.json()["generation"].clone()),
        (200, 2.into()),
        "{}",
        r.body
    );
    assert_eq!(
        front(&server),
        front_addr,
        "an unchanged listener keeps its socket"
    );
    wait_for(
        "the removed listener refuses new connections",
        Duration::from_secs(5),
        || TcpStream::connect(extra).is_err(),
    );
    on_extra.write_all(b"2").unwrap();
    on_extra.read_exact(&mut one).unwrap();
    assert_eq!(&one, b"2", "its open connection still works");
    let status = get(admin, "/api/v1/status").json();
    assert_eq!(status["pools"][0]["backends"].as_array().unwrap().len(), 2);
    assert_eq!(status["listeners"].as_array().unwrap().len(), 1);
    for i in 0..4u8 {
        assert_eq!(round_trip(front_addr, &[i]).unwrap(), [i]);
    }
    let stats = server.snapshot();
    let served_by_b = stats.pool("back").unwrap().backends[1]
        .stats
        .connections
        .load(Ordering::Relaxed);
    assert!(served_by_b >= 2, "the added backend takes its share");
    std::fs::write(&path, yaml(&[a], true)).unwrap();
    assert_eq!(server.control().reload_blocking().unwrap(), 3);
    let extra_again = server.addrs("extra")[0];
    assert_eq!(
        round_trip(extra_again, b"x").unwrap(),
        b"x",
        "an added listener serves"
    );
    server.shutdown();
}

#[test]
fn a_bad_file_changes_nothing_and_returns_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    let a = echo_backend();
    let server = start_file(&path, &yaml(&[a], false));
    let admin = server.admin_addr().unwrap();
    std::fs::write(
        &path,
        "workers: 2\nlisteners:\n  front:\n    bind: \"1.2.3.4:99999\"\n    pool: nope\n",
    )
    .unwrap();
    let r = request(admin, "POST", "/api/v1/reload", None, "");
    assert_eq!(r.status, 400, "{}", r.body);
    let errors = r.json()["errors"].as_array().unwrap().clone();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0]
            .as_str()
            .unwrap()
            .contains(":4:11: listeners.front.bind"),
        "{errors:?}"
    );
    assert_eq!(round_trip(front(&server), b"still").unwrap(), b"still");
    assert_eq!(get(admin, "/api/v1/status").json()["generation"], 1);
    let metrics = get(admin, "/metrics").body;
    assert!(
        metrics.contains("tollgate_config_reloads_total{result=\"failure\"} 1"),
        "{metrics}"
    );
    // A change of workers is refused with its reason.
    std::fs::write(&path, yaml(&[a], false).replace("workers: 2", "workers: 3")).unwrap();
    let r = request(admin, "POST", "/api/v1/reload", None, "");
    assert_eq!(
        r.status, 409,
        "a valid file that cannot be applied by a reload is a conflict"
    );
    assert!(r.body.contains("workers"), "{}", r.body);
    server.shutdown();
}

#[test]
fn overrides_and_counters_survive_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    let (a, b) = (echo_backend(), echo_backend());
    let server = start_file(&path, &yaml(&[a, b], false));
    let admin = server.admin_addr().unwrap();
    for i in 0..4u8 {
        round_trip(front(&server), &[i]).unwrap();
    }
    let enc_b = b.to_string().replace(':', "%3A");
    let r = request(
        admin,
        "POST",
        &format!("/api/v1/pools/back/backends/{enc_b}/disable"),
        None,
        "",
    );
    assert_eq!(r.status, 200);
    std::fs::write(&path, yaml(&[a, b], true)).unwrap();
    assert_eq!(server.control().reload_blocking().unwrap(), 2);
    let status = get(admin, "/api/v1/status").json();
    let backends = status["pools"][0]["backends"].as_array().unwrap().clone();
    assert_eq!(
        backends[1]["state"], "disabled",
        "the override carried over"
    );
    assert_eq!(backends[0]["connections_total"], 2, "counters carried over");
    for i in 0..4u8 {
        round_trip(front(&server), &[i]).unwrap();
    }
    let status = get(admin, "/api/v1/status").json();
    assert_eq!(
        status["pools"][0]["backends"][1]["connections_total"], 2,
        "the disabled backend took nothing new"
    );
    server.shutdown();
}

/// The reload's answer says what changed, in counts, and names the override that keeps the
/// file's new weight from applying, with the call that drops it; once dropped, the file's
/// weight is in force.
#[test]
fn a_reload_says_what_changed_and_which_override_masks_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    let (a, b, c) = (echo_backend(), echo_backend(), echo_backend());
    let server = start_file(&path, &yaml(&[a, b], true));
    let admin = server.admin_addr().unwrap();
    let weight = format!(
        "/api/v1/pools/back/backends/{}/weight",
        a.to_string().replace(':', "%3A")
    );
    assert_eq!(
        request(admin, "PUT", &weight, None, r#"{"weight": 5}"#).status,
        200
    );
    // `extra` goes, b goes, c comes, a's weight becomes 4.
    let next = yaml(&[a, c], false).replace(
        &format!("      - address: \"{a}\"\n"),
        &format!("      - address: \"{a}\"\n        weight: 4\n"),
    );
    std::fs::write(&path, next).unwrap();
    let r = request(admin, "POST", "/api/v1/reload", None, "");
    assert_eq!(r.status, 200, "{}", r.body);
    let answer = r.json();
    assert_eq!(answer["generation"], 2);
    assert_eq!(
        answer["changes"],
        serde_json::json!({
            "listeners": {"added": 0, "removed": 1, "changed": 0},
            "pools": {"added": 0, "removed": 0, "changed": 0},
            "backends": {"added": 1, "removed": 1, "changed": 1},
        })
    );
    assert_eq!(
        answer["masked_by_overrides"],
        serde_json::json!([{
            "pool": "back", "backend": a.to_string(), "change": "weight 1 -> 4",
            "override": {"weight": 5}, "drop_with": format!("DELETE {weight}"),
        }])
    );
    let backend = || get(admin, "/api/v1/status").json()["pools"][0]["backends"][0].clone();
    let x = backend();
    assert_eq!(
        (
            x["configured_weight"].clone(),
            x["effective_weight"].clone()
        ),
        (4.into(), 5.0.into()),
        "the override stays in force: {x}"
    );
    assert_eq!(request(admin, "DELETE", &weight, None, "").status, 200);
    assert_eq!(
        backend()["effective_weight"],
        4.0,
        "the file's weight applies"
    );
    // Nothing changed, nothing masked.
    let r = request(admin, "POST", "/api/v1/reload", None, "");
    let zero = serde_json::json!({"added": 0, "removed": 0, "changed": 0});
    assert_eq!(
        r.json()["changes"],
        serde_json::json!({"listeners": zero, "pools": zero, "backends": zero})
    );
    assert_eq!(r.json()["masked_by_overrides"], serde_json::json!([]));
    server.shutdown();
}

#[test]
fn drain_via_the_api_lets_open_connections_finish() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    let (a, b) = (echo_backend(), echo_backend());
    let server = start_file(&path, &yaml(&[a, b], false));
    let admin = server.admin_addr().unwrap();
    // One open connection on each backend.
    let mut open: Vec<TcpStream> = (0..2u8).map(|i| held_echo(front(&server), i)).collect();
    let enc_a = a.to_string().replace(':', "%3A");
    let r = request(
        admin,
        "POST",
        &format!("/api/v1/pools/back/backends/{enc_a}/drain"),
        None,
        "",
    );
    assert_eq!(
        (
            r.status,
            r.json()["state"].clone(),
            r.json()["connections_active"].clone()
        ),
        (200, "draining".into(), 1.into())
    );
    for i in 0..6u8 {
        round_trip(front(&server), &[i]).unwrap();
    }
    let snapshot = server.snapshot();
    let pool = snapshot.pool("back").unwrap();
    assert_eq!(
        pool.backends[0].stats.connections.load(Ordering::Relaxed),
        1,
        "the drained backend got no new connection"
    );
    for s in &mut open {
        s.write_all(b"z").unwrap();
        let mut x = [0u8; 1];
        s.read_exact(&mut x).unwrap();
        assert_eq!(
            &x, b"z",
            "open connections on the drained backend still work"
        );
    }
    drop(open);
    wait_for(
        "status shows none left on the drained backend",
        Duration::from_secs(5),
        || {
            get(admin, "/api/v1/status").json()["pools"][0]["backends"][0]["connections_active"]
                == 0
        },
    );
    server.shutdown();
}

/// 20 reloads 250 ms apart, alternating SIGHUP and the API, adding and removing a backend and
/// a listener (and one invalid file), while short connections run at ~300/s and 20 long
/// transfers stream: no client-visible failure, every transfer byte-exact, sockets back to
/// their baseline.
#[test]
fn reloads_under_load_drop_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    let (a, b) = (echo_backend(), echo_backend());
    std::fs::write(&path, yaml(&[a], false)).unwrap();
    let lb = binary::spawn_file(&path);
    let front_addr = lb.logged_addr(&["listener bound", "\"listener\":\"front\""]);
    let admin = lb.logged_addr(&["admin API listening"]);
    wait_for("admin answers", Duration::from_secs(10), || {
        std::panic::catch_unwind(|| get(admin, "/healthz").status == 200).unwrap_or(false)
    });
    let baseline = lb.sockets();
    let stop = Arc::new(AtomicBool::new(false));
    let short_ok = Arc::new(AtomicU64::new(0));
    let (fail_tx, fail_rx) = mpsc::channel::<String>();
    let shorts: Vec<_> = (0..2)
        .map(|t| {
            let (stop, ok, fail) = (stop.clone(), short_ok.clone(), fail_tx.clone());
            std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let msg = (t * 1_000_000 + i).to_be_bytes();
                    match round_trip(front_addr, &msg) {
                        Ok(got) if got == msg => drop(ok.fetch_add(1, Ordering::Relaxed)),
                        other => drop(fail.send(format!("short connection {t}/{i}: {other:?}"))),
                    }
                    i += 1;
                    std::thread::sleep(Duration::from_millis(6));
                }
            })
        })
        .collect();
    let longs: Vec<_> = (0..20u64)
        .map(|n| std::thread::spawn(move || long_transfer(front_addr, n)))
        .collect();
    for round in 0..20u32 {
        let started = Instant::now();
        let generation = get(admin, "/api/v1/status").json()["generation"]
            .as_u64()
            .unwrap();
        if round == 10 {
            std::fs::write(&path, "listeners: [oops").unwrap();
            let r = request(admin, "POST", "/api/v1/reload", None, "");
            assert_eq!(r.status, 400, "an invalid file is refused");
        }
        // Even rounds add backend b and listener `extra`, odd ones (the last included) remove them.
        let grow = round % 2 == 0;
        let backends = if grow { vec![a, b] } else { vec![a] };
        std::fs::write(&path, yaml(&backends, grow)).unwrap();
        if round % 2 == 0 {
            lb.signal(libc::SIGHUP);
        } else {
            assert_eq!(
                request(admin, "POST", "/api/v1/reload", None, "").status,
                200
            );
        }
        wait_for("the reload is applied", Duration::from_secs(5), || {
            get(admin, "/api/v1/status").json()["generation"].as_u64() == Some(generation + 1)
        });
        std::thread::sleep(Duration::from_millis(250).saturating_sub(started.elapsed()));
    }
    for l in longs {
        l.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for s in shorts {
        s.join().unwrap();
    }
    drop(fail_tx);
    let failures: Vec<String> = fail_rx.iter().collect();
    assert!(
        failures.is_empty(),
        "{} client-visible failures, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(
        short_ok.load(Ordering::Relaxed) > 500,
        "the short-connection load ran"
    );
    // The final config has no `extra` listener and one backend, like the first.
    wait_for("sockets back to baseline", Duration::from_secs(10), || {
        lb.sockets() <= baseline
    });
}

/// Streams 6 MiB through the balancer to an echo backend over ~5 s and checks the echo.
fn long_transfer(front: SocketAddr, seed: u64) {
    const LEN: u64 = 6 << 20;
    let mut s = TcpStream::connect(front).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut reader = s.try_clone().unwrap();
    let receiving = std::thread::spawn(move || read_digest(&mut reader).unwrap());
    let mut p = Pattern::new(seed + 100, LEN);
    let mut buf = vec![0u8; 64 * 1024];
    while p.fill(&mut buf) > 0 {
        s.write_all(&buf).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let (n, digest) = receiving.join().unwrap();
    assert_eq!(
        (n, digest),
        (LEN, digest_of(seed + 100, LEN)),
        "long transfer {seed} is byte-exact"
    );
}
