//! Binary upgrade, established connections: idle ones and transfers in flight both ways
//! (some half-closed) move to the new process byte for byte and the old one exits while
//! they are open; one the new config cannot serve stays with the old process; a new process
//! that dies taking them leaves every one with the old process, and so do those the new
//! process has no descriptors for.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::binary;
use common::upgrade::*;
use common::*;

const ACCEPTED: &str = "tollgate_listener_connections_accepted_total{listener=\"front\"}";

/// Established connections move to the new process: 5 000 idle held ones, and 20 echo
/// transfers in flight both ways (half of them half-closed), byte for byte, with a churn
/// of short connections; the old process exits within 5 s while they are all still open,
/// and the new one serves them to their end.
#[test]
fn established_connections_move_to_the_new_process() {
    const HELD: usize = 5_000;
    // Both ends of every connection are in this process.
    raise_own_nofile(2 * HELD as u64 + 512);
    let install = Install::new(&yaml_with(&[echo_backend(), echo_backend()]));
    let mut old = install.start();
    let front = old.addr();
    let admin = admin_of(&old);
    let mut held: Vec<std::net::TcpStream> = (0..HELD).map(|i| held_echo(front, i as u8)).collect();
    const LEN: u64 = 16 * 1024 * 1024;
    let transfers: Vec<_> = (0..20)
        .map(|i| (i, paced_echo(front, 100 + i, LEN, i % 2 == 1)))
        .collect();
    let churn = Churn::start(front);
    std::thread::sleep(Duration::from_millis(300));
    let accepted = metric(admin, ACCEPTED);
    assert!(accepted >= (HELD + 20) as f64, "{accepted} accepted");
    let answer = upgrade(admin);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let new = Adopted::of(&answer);
    // The old process owns nothing once its connections are handed over: it exits while
    // every one of them is still open.
    let code = old.wait_exit(Duration::from_secs(5));
    assert_eq!(code.code(), Some(0));
    assert_transfers_exact(transfers, 100, LEN);
    assert_held_echo(&mut held, 9);
    churn.finish_clean();
    let moved = metric(admin, "tollgate_upgrade_connections_handed_over_total");
    assert!(moved >= HELD as f64, "{moved} connections handed over");
    // The count continues from the old process's (and the churn kept adding to it).
    let now = metric(admin, ACCEPTED);
    assert!(now > accepted, "accepted {accepted} before, {now} after");
    old.wait_log(
        "this process's connections are handed over or finished",
        Duration::from_secs(1),
    );
    drop(held);
    new.stop(Duration::from_secs(10));
}

/// A connection whose backend the new config does not have stays with the old process,
/// which finishes it and only then exits; until then the new process starts no upgrade of
/// its own.
#[test]
fn a_connection_the_new_config_cannot_serve_stays_with_the_old_process() {
    let (gone, kept) = (echo_backend(), echo_backend());
    let install = Install::new(&yaml(gone));
    let mut old = install.start();
    let front = old.addr();
    let admin = admin_of(&old);
    let mut held = held_echo(front, 5);
    std::fs::write(install.config(), yaml(kept)).unwrap();
    let answer = upgrade(admin);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let new = Adopted::of(&answer);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        old.child.try_wait().unwrap().is_none(),
        "the old process still serves it; logs:\n{}",
        old.logs().join("\n")
    );
    held.write_all(b"still").unwrap();
    let mut b = [0u8; 5];
    held.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"still");
    // New connections reach the new config's backend.
    assert_eq!(round_trip(front, b"new").unwrap(), b"new");
    // The new process upgrades in turn only once the old one has finished.
    let refused = upgrade(admin);
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(
        refused.body.contains("still handing its connections over"),
        "{}",
        refused.body
    );
    drop(held);
    assert_eq!(old.wait_exit(Duration::from_secs(5)).code(), Some(0));
    let again = upgrade(admin);
    assert_eq!(again.status, 200, "{}", again.body);
    let third = Adopted::of(&again);
    wait_for("the second process to exit", Duration::from_secs(5), || {
        !new.alive()
    });
    third.stop(Duration::from_secs(10));
}

/// A new process that crashes as the established connections come (after it said it
/// serves): the old process keeps every one of them, and they go on to their end, byte for
/// byte (`upgrade.rs` checks that it then serves again).
#[test]
fn a_new_process_that_dies_taking_connections_leaves_them_with_the_old_one() {
    let install = Install::new(&yaml_with(&[echo_backend(), echo_backend()]));
    let mut old = binary::spawn_exe_env(
        &install.exe(),
        &install.config(),
        &[(tollgate::upgrade::new::FAILPOINT, "connections")],
    );
    let front = old.addr();
    let admin = admin_of(&old);
    let mut held: Vec<std::net::TcpStream> = (0..50).map(|i| held_echo(front, i as u8)).collect();
    const LEN: u64 = 8 * 1024 * 1024;
    let transfers: Vec<_> = (0..2)
        .map(|i| (i, paced_echo(front, 200 + i, LEN, i == 1)))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let answer = upgrade(admin);
    assert_eq!(answer.status, 200, "{}", answer.body);
    old.wait_log(
        "handing connections over failed; the rest finish here",
        Duration::from_secs(10),
    );
    assert_transfers_exact(transfers, 200, LEN);
    assert_held_echo(&mut held, 2);
    assert!(
        old.child.try_wait().unwrap().is_none(),
        "the old process still serves them"
    );
    // It serves new clients too: the new process died before the handover settled.
    assert_eq!(common::round_trip(front, b"new").unwrap(), b"new");
    old.signal(libc::SIGTERM);
    drop(held);
    assert_eq!(old.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

/// The new process takes no more descriptors than its open-file limit leaves room for
/// (less a reserve for new clients): with both processes under a limit of 1 024 and the old
/// one holding connections up to near it, the new one takes what fits and the rest stay
/// with the old process, which serves them on; every one still echoes.
#[test]
fn connections_the_new_process_has_no_descriptors_for_stay_with_the_old_one() {
    const LIMIT: u64 = 1024;
    raise_own_nofile(4 * LIMIT);
    let yaml = yaml(echo_backend()).replace(
        "    pool: back\n",
        "    pool: back\n    limits: { max_connections: 4000 }\n",
    );
    let install = Install::new(&yaml);
    let mut old = binary::spawn_exe_nofile(&install.exe(), &install.config(), LIMIT);
    let front = old.addr();
    let admin = admin_of(&old);
    // Up to 24 descriptors short of the limit: two per connection.
    let mut held = Vec::new();
    while open_descriptors(old.pid()) + 24 < LIMIT && held.len() < 600 {
        held.push(held_echo(front, held.len() as u8));
    }
    assert!(held.len() > 300, "only {} connections fit", held.len());
    let answer = upgrade(admin);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let new = Adopted::of(&answer);
    old.wait_log(
        "the new process's open-file limit leaves no room for more connections",
        Duration::from_secs(10),
    );
    let moved = metric(admin, "tollgate_upgrade_connections_handed_over_total") as usize;
    assert!(
        moved > held.len() / 2 && moved < held.len(),
        "{moved} of {} handed over",
        held.len()
    );
    assert_held_echo(&mut held, 7);
    assert!(
        old.child.try_wait().unwrap().is_none(),
        "the old process still serves what it kept"
    );
    drop(held);
    assert_eq!(old.wait_exit(Duration::from_secs(10)).code(), Some(0));
    new.stop(Duration::from_secs(10));
}

fn open_descriptors(pid: i32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64
}

/// This test process holds both ends of every connection: its own limit must fit them.
fn raise_own_nofile(want: u64) {
    let lim = tollgate::sys::raise_nofile_limit().unwrap();
    assert!(
        lim.soft >= want,
        "this test needs an open-file limit of {want}: {lim:?}"
    );
}

/// Ten upgrades in a row under the same load (held connections, transfers both ways, one
/// half-closed, and a churn of short connections): each previous process is gone within
/// 5 s, no client sees a failure, every byte is exact and every held connection still
/// echoes, having moved ten times; the accepted count only grows.
#[test]
fn ten_upgrades_in_a_row_under_load_lose_nothing() {
    let install = Install::new(&yaml_with(&[echo_backend(), echo_backend()]));
    let mut first = install.start();
    let front = first.addr();
    let admin = admin_of(&first);
    let mut held: Vec<std::net::TcpStream> = (0..100).map(|i| held_echo(front, i as u8)).collect();
    const LEN: u64 = 40 * 1024 * 1024;
    let transfers: Vec<_> = (0..2)
        .map(|i| (i, paced_echo(front, 300 + i, LEN, i == 1)))
        .collect();
    let churn = Churn::start(front);
    let mut accepted = metric(admin, ACCEPTED);
    let mut previous: Option<Adopted> = None;
    for round in 0..10 {
        let answer = upgrade(admin);
        assert_eq!(answer.status, 200, "upgrade {round}: {}", answer.body);
        let pid = u32::try_from(answer.json()["pid"].as_u64().unwrap()).unwrap();
        match previous.take() {
            None => assert_eq!(first.wait_exit(Duration::from_secs(5)).code(), Some(0)),
            Some(old) => wait_for(
                "the previous process to exit",
                Duration::from_secs(5),
                || !old.alive(),
            ),
        }
        let now = metric(admin, ACCEPTED);
        assert!(
            now >= accepted,
            "upgrade {round}: accepted {accepted} then {now}"
        );
        accepted = now;
        previous = Some(Adopted(pid));
    }
    assert_transfers_exact(transfers, 300, LEN);
    assert_held_echo(&mut held, 3);
    churn.finish_clean();
    let moved = metric(admin, "tollgate_upgrade_connections_handed_over_total");
    assert!(
        moved >= 1000.0,
        "{moved} connections handed over in ten upgrades"
    );
    assert_eq!(
        metric(admin, "tollgate_upgrades_total{result=\"success\"}"),
        10.0
    );
    drop(held);
    if let Some(last) = previous {
        last.stop(Duration::from_secs(10));
    }
}
