//! Binary upgrade (`POST /api/v1/upgrade`, SIGUSR2, `tollgate upgrade`) with the built
//! binary, run from a copy that a test may replace: the listening sockets, the admin API and
//! the control state move to the new process with no client refused, counters continue, and
//! the old process exits; a new binary that refuses the config, crashes at start or halfway,
//! never answers or is missing leaves the old one serving as before. The established
//! connections' side is `tests/upgrade_connections.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::binary;
use common::http::{get, request};
use common::upgrade::*;
use common::*;

const ACCEPTED: &str = "tollgate_listener_connections_accepted_total{listener=\"front\"}";

#[test]
fn an_upgrade_moves_the_listeners_admin_api_and_connections_without_refusing_anyone() {
    let (a, b) = (echo_backend(), echo_backend());
    let install = Install::new(&yaml_with(&[a, b]));
    let mut old = install.start();
    let front = old.addr();
    let admin = admin_of(&old);
    // What the operator set through the API moves with the upgrade.
    let drain = format!(
        "/api/v1/pools/back/backends/{}/drain",
        b.to_string().replace(':', "%3A")
    );
    assert_eq!(request(admin, "POST", &drain, None, "").status, 200);
    let deny = "/api/v1/listeners/front/deny/10.9.0.0%2F16";
    assert_eq!(request(admin, "POST", deny, None, "").status, 200);
    // A connection open before the upgrade: it moves with the rest.
    let mut held = held_echo(front, 7);
    let churn = Churn::start(front);
    wait_for("some churn", Duration::from_secs(10), || churn.made() > 100);
    let before = metric(admin, ACCEPTED);
    let answer = upgrade(admin);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let body = answer.json();
    let new = Adopted::pid(&body);
    assert_ne!(new.0, old.child.id());
    assert_eq!(
        body["previous_pid"].as_u64(),
        Some(u64::from(old.child.id()))
    );
    // Keep the churn going through the new process for a while.
    let made = churn.made();
    wait_for("churn after the upgrade", Duration::from_secs(10), || {
        churn.made() > made + 200
    });
    // The admin API is the new process's now, and its counters went on from the old ones.
    let status = get(admin, "/api/v1/status").json();
    assert_eq!(status["pid"].as_u64(), Some(u64::from(new.0)));
    let backends = status["pools"][0]["backends"].as_array().unwrap();
    let state_of = |addr: SocketAddr| {
        backends
            .iter()
            .find(|x| x["address"] == addr.to_string())
            .map(|x| x["state"].clone())
    };
    assert_eq!(state_of(b), Some("draining".into()), "{status}");
    assert_eq!(state_of(a), Some("up".into()), "{status}");
    assert_eq!(
        status["listeners"][0]["deny"],
        serde_json::json!(["10.9.0.0/16"])
    );
    let after = metric(admin, ACCEPTED);
    assert!(
        after >= before + 200.0,
        "accepted {before} before, {after} after"
    );
    assert_eq!(
        metric(admin, "tollgate_upgrades_total{result=\"success\"}"),
        1.0
    );
    churn.finish_clean();
    // The held connection moved to the new process with the rest: the old one exits while
    // it is open, and the bytes it moves from now on count in the new one.
    let exited = Instant::now();
    let code = old.wait_exit(Duration::from_secs(5));
    assert_eq!(code.code(), Some(0));
    let sent_bytes = || -> f64 {
        let body = get(admin, "/metrics").body;
        body.lines()
            .filter(|l| l.starts_with("tollgate_backend_sent_bytes_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let before = sent_bytes();
    let chunk = vec![b'y'; 50_000];
    held.write_all(&chunk).unwrap();
    let mut back = vec![0u8; chunk.len()];
    held.read_exact(&mut back).unwrap();
    assert_eq!(back, chunk);
    drop(held);
    wait_for(
        "the moved connection's bytes",
        Duration::from_secs(5),
        || sent_bytes() >= before + 50_000.0,
    );
    old.wait_log(
        "binary upgrade: the new process serves",
        Duration::from_secs(1),
    );
    assert!(exited.elapsed() < Duration::from_secs(5));
    // The new process serves on alone, and stops cleanly.
    assert_eq!(round_trip(front, b"after").unwrap(), b"after");
    new.stop(Duration::from_secs(10));
}

#[test]
fn upgrades_can_follow_one_another_and_sigusr2_and_the_cli_ask_for_one() {
    let install = Install::new(&yaml(echo_backend()));
    let mut first = install.start();
    let front = first.addr();
    let admin = admin_of(&first);
    let churn = Churn::start(front);
    // SIGUSR2 upgrades the process that got it.
    first.signal(libc::SIGUSR2);
    first.wait_log(
        "binary upgrade: the new process serves",
        Duration::from_secs(20),
    );
    assert_eq!(first.wait_exit(Duration::from_secs(5)).code(), Some(0));
    let mut pids = vec![get(admin, "/api/v1/status").json()["pid"].as_u64().unwrap()];
    // Then `tollgate upgrade`, three times in a row, each to a process of its own.
    for _ in 0..3 {
        let out = std::process::Command::new(install.exe())
            .arg("upgrade")
            .arg("-c")
            .arg(install.config())
            // The file binds the admin API to port 0: name the port it got.
            .arg("--admin")
            .arg(admin.to_string())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(said.starts_with("upgraded: process "), "{said}");
        let pid = get(admin, "/api/v1/status").json()["pid"].as_u64().unwrap();
        assert!(said.contains(&format!("process {pid} serves")), "{said}");
        let previous = Adopted(u32::try_from(*pids.last().unwrap()).unwrap());
        wait_for(
            "the previous process to exit",
            Duration::from_secs(5),
            || !previous.alive(),
        );
        pids.push(pid);
    }
    assert_eq!(
        metric(admin, "tollgate_upgrades_total{result=\"success\"}"),
        4.0
    );
    churn.finish_clean();
    Adopted(u32::try_from(*pids.last().unwrap()).unwrap()).stop(Duration::from_secs(10));
}

#[test]
fn a_new_binary_that_refuses_the_config_or_crashes_leaves_the_old_one_serving() {
    let backend = echo_backend();
    let install = Install::new(&yaml(backend));
    let mut lb = install.start();
    let front = lb.addr();
    let admin = admin_of(&lb);
    let churn = Churn::start(front);
    let pid = u64::from(lb.child.id());
    // The config on disk is now invalid: the new process says why and exits.
    std::fs::write(
        install.config(),
        yaml(backend).replace("pool: back", "pool: nowhere"),
    )
    .unwrap();
    let answer = upgrade(admin);
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(answer.body.contains("nowhere"), "{}", answer.body);
    assert_eq!(answer.json()["result"], "refused");
    std::fs::write(install.config(), yaml(backend)).unwrap();
    // A binary that crashes at start.
    install.replace_with_script("echo 'cannot start' >&2; exit 3");
    let answer = upgrade(admin);
    assert_eq!(answer.status, 500, "{}", answer.body);
    assert!(answer.body.contains("exit status: 3"), "{}", answer.body);
    // A binary that starts and never answers: given up after 10 s, and killed.
    install.replace_with_script("exec sleep 60");
    let asked = Instant::now();
    let answer = upgrade(admin);
    assert_eq!(answer.status, 500, "{}", answer.body);
    assert!(answer.body.contains("timed out"), "{}", answer.body);
    assert!(asked.elapsed() < Duration::from_secs(15));
    // A binary that is not there at all.
    std::fs::remove_file(install.exe()).unwrap();
    let answer = upgrade(admin);
    assert_eq!(answer.status, 500, "{}", answer.body);
    assert!(
        answer.body.contains("cannot start the new binary"),
        "{}",
        answer.body
    );
    // Through all of it the old process served, and counted every attempt.
    assert_eq!(
        get(admin, "/api/v1/status").json()["pid"].as_u64(),
        Some(pid)
    );
    assert_eq!(
        metric(admin, "tollgate_upgrades_total{result=\"refused\"}"),
        1.0
    );
    assert_eq!(
        metric(admin, "tollgate_upgrades_total{result=\"failed\"}"),
        3.0
    );
    // Fixed, the same instance upgrades after all.
    install.restore();
    let answer = upgrade(admin);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let new = Adopted::of(&answer);
    assert_eq!(lb.wait_exit(Duration::from_secs(5)).code(), Some(0));
    churn.finish_clean();
    new.stop(Duration::from_secs(10));
}

/// A new process that crashes in the middle of the handover: after saying hello (the old
/// one has paused its listeners and is sending them), or once it holds every socket (the
/// old one waits for it to serve). Either way the old process resumes its listeners, no
/// client fails, and the old process upgrades once the new binary behaves.
#[test]
fn a_new_process_killed_halfway_leaves_every_connection_with_the_old_one() {
    for step in ["hello", "sockets"] {
        let (a, b) = (echo_backend(), echo_backend());
        let install = Install::new(&yaml_with(&[a, b]));
        let mut lb = binary::spawn_exe_env(
            &install.exe(),
            &install.config(),
            &[(tollgate::upgrade::new::FAILPOINT, step)],
        );
        let front = lb.addr();
        let admin = admin_of(&lb);
        let mut held = held_echo(front, 3);
        let churn = Churn::start(front);
        wait_for("some churn", Duration::from_secs(10), || churn.made() > 50);
        let answer = upgrade(admin);
        assert_eq!(answer.status, 500, "{step}: {}", answer.body);
        assert!(answer.body.contains("signal: 6"), "{step}: {}", answer.body);
        let made = churn.made();
        wait_for(
            "churn after the failed upgrade",
            Duration::from_secs(10),
            || churn.made() > made + 50,
        );
        let (made, errors) = churn.finish();
        assert!(
            errors.is_empty(),
            "{step}: {} of {made} connections failed: {errors:?}",
            errors.len()
        );
        held.write_all(b"z").unwrap();
        let mut x = [0u8; 1];
        held.read_exact(&mut x).unwrap();
        assert_eq!(&x, b"z", "{step}: the held connection still echoes");
        assert_eq!(
            get(admin, "/api/v1/status").json()["pid"].as_u64(),
            Some(u64::from(lb.child.id()))
        );
        lb.signal(libc::SIGTERM);
        drop(held);
        assert_eq!(lb.wait_exit(Duration::from_secs(10)).code(), Some(0));
    }
}

/// A new process that dies after it said it serves, before the handover settled: right
/// after `Ready` (no connection is across yet: the old process sees it gone once no
/// connection came for a moment), or as the first established connections come (a send
/// fails). The old process keeps every connection it still has, takes its listeners and
/// admin API back, and serves new clients as before.
#[test]
fn a_new_process_that_dies_after_it_took_over_leaves_the_old_one_serving() {
    for step in ["ready", "connections"] {
        let dir = tempfile::tempdir().unwrap();
        let socket_path = dir.path().join("notify.sock");
        let notes = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
        let install = Install::new(&yaml_with(&[echo_backend(), echo_backend()]));
        let mut lb = binary::spawn_exe_env(
            &install.exe(),
            &install.config(),
            &[
                (tollgate::upgrade::new::FAILPOINT, step),
                ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ],
        );
        let front = lb.addr();
        let admin = admin_of(&lb);
        let mut held: Vec<_> = (0..20).map(|i| held_echo(front, i)).collect();
        let answer = upgrade(admin);
        assert_eq!(answer.status, 200, "{step}: {}", answer.body);
        let new_pid = answer.json()["pid"].as_u64().unwrap();
        lb.wait_log(
            "the new process died after it took over; this process serves again",
            Duration::from_secs(10),
        );
        // systemd never heard of the dead process as the main one.
        let mut said = Vec::new();
        notes
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 4096];
        while let Ok(n) = notes.recv(&mut buf) {
            said.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert!(
            !said
                .iter()
                .any(|m| m.contains(&format!("MAINPID={new_pid}"))),
            "{step}: {said:?}"
        );
        assert_held_echo(&mut held, 1);
        for i in 0..20u8 {
            assert_eq!(
                round_trip(front, &[i]).unwrap(),
                [i],
                "{step}: new client {i}"
            );
        }
        let status = get(admin, "/api/v1/status");
        assert_eq!(status.status, 200, "{step}: the admin API answers again");
        assert_eq!(
            status.json()["pid"].as_u64(),
            Some(u64::from(lb.child.id())),
            "{step}"
        );
        assert_eq!(
            metric(admin, "tollgate_upgrades_total{result=\"failed\"}"),
            1.0,
            "{step}"
        );
        assert!(
            lb.child.try_wait().unwrap().is_none(),
            "{step}: it serves on"
        );
        lb.signal(libc::SIGTERM);
        drop(held);
        assert_eq!(
            lb.wait_exit(Duration::from_secs(10)).code(),
            Some(0),
            "{step}"
        );
    }
}

/// The connections a failed handover left with the old process move at its next upgrade,
/// like any other: nothing stays behind to be cut at the end of a drain.
#[test]
fn connections_kept_after_a_failed_handover_move_at_the_next_upgrade() {
    let install = Install::new(&yaml(echo_backend()));
    let mut old = install.start();
    let front = old.addr();
    let admin = admin_of(&old);
    let mut held: Vec<_> = (0..20).map(|i| held_echo(front, i)).collect();
    // A package whose binary dies as the connections come.
    install.replace_with_script(&format!(
        "{}=connections exec '{}' \"$@\"",
        tollgate::upgrade::new::FAILPOINT,
        binary::bin()
    ));
    let answer = upgrade(admin);
    assert_eq!(answer.status, 200, "{}", answer.body);
    old.wait_log(
        "the new process died after it took over; this process serves again",
        Duration::from_secs(10),
    );
    // A good one: every connection moves, and the old process exits at once (its drain
    // timeout is 20 s).
    install.restore();
    let answer = upgrade(admin);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let new = Adopted::of(&answer);
    assert_eq!(old.wait_exit(Duration::from_secs(5)).code(), Some(0));
    assert_held_echo(&mut held, 2);
    assert_eq!(
        metric(admin, "tollgate_upgrade_connections_handed_over_total"),
        20.0
    );
    drop(held);
    new.stop(Duration::from_secs(10));
}

/// Under systemd: the new process says `READY=1`, the old one says `MAINPID=` (the new one)
/// once the handover has settled, so the service follows the new process, and the old one,
/// which only hands over and exits, never says `STOPPING=1`.
#[test]
fn systemd_follows_the_new_process_once_the_handover_settles() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let notes = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    let next = |within: Duration| -> Option<String> {
        notes.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 4096];
        let n = notes.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned())
    };
    let install = Install::new(&yaml(echo_backend()));
    let mut old = binary::spawn_exe_env(
        &install.exe(),
        &install.config(),
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
    );
    let admin = admin_of(&old);
    let ready = next(Duration::from_secs(15)).expect("READY=1 from the first process");
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    let answer = upgrade(admin);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let new = Adopted::of(&answer);
    // In either order: the new process is ready when its first health round is in, the
    // old one names it when the handover has settled.
    let mut two: Vec<String> = (0..2)
        .map(|_| next(Duration::from_secs(15)).expect("READY=1 and MAINPID="))
        .collect();
    two.sort();
    assert_eq!(two[0], format!("MAINPID={}", new.0), "{two:?}");
    assert!(two[1].starts_with("READY=1\n"), "{two:?}");
    assert_eq!(old.wait_exit(Duration::from_secs(5)).code(), Some(0));
    assert_eq!(
        next(Duration::from_millis(300)),
        None,
        "the old process said nothing more"
    );
    new.stop(Duration::from_secs(10));
}
