//! Listening sockets: several bind addresses per listener, IPv4 and IPv6 (v6-only), every
//! worker sharing one kernel-chosen port for a port-0 bind, and a bind that fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpListener;

use common::*;

#[test]
fn one_listener_serves_ipv4_and_ipv6_addresses() {
    let echo = echo_backend();
    let yaml = format!(
        "workers: 2\nlisteners:\n  dual:\n    bind: [\"127.0.0.1:0\", \"[::1]:0\"]\n    pool: back\n\
         pools:\n  back:\n    backends:\n      - address: \"{echo}\"\n"
    );
    let server = start(&yaml);
    let addrs = server.addrs("dual").to_vec();
    assert_eq!(addrs.len(), 2);
    assert!(addrs[0].is_ipv4() && addrs[1].is_ipv6());
    assert!(
        addrs.iter().all(|a| a.port() != 0),
        "real ports are reported: {addrs:?}"
    );
    for addr in addrs {
        for i in 0..4u8 {
            assert_eq!(
                round_trip(addr, &[i; 10]).unwrap(),
                vec![i; 10],
                "via {addr}"
            );
        }
    }
    server.shutdown();
}

#[test]
fn an_ipv6_backend_is_reached_from_an_ipv4_listener() {
    let l = TcpListener::bind("[::1]:0").unwrap();
    let v6 = l.local_addr().unwrap();
    drop(l);
    let echo6 = backend_on(v6);
    let server = start(&config(&[(echo6, 1)], "", "", ""));
    assert_eq!(round_trip(front(&server), b"over v6").unwrap(), b"over v6");
    server.shutdown();
}

#[test]
fn a_bind_that_fails_fails_the_start_with_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let yaml = format!(
        "listeners:\n  busy:\n    bind: \"{addr}\"\n    pool: back\npools:\n  back:\n    backends:\n      - address: \"127.0.0.1:9\"\n"
    );
    let err = start_error(&yaml);
    assert!(
        err.contains(&addr.to_string())
            && err.contains("busy")
            && err.ends_with("is another process using it?"),
        "{err}"
    );
}

/// A port below 1024 refused to a user without `CAP_NET_BIND_SERVICE` says so, and how to
/// grant it under systemd: "is another process using it?" would send the operator astray.
#[test]
fn a_privileged_port_refused_for_want_of_the_capability_says_so() {
    let yaml = "listeners:\n  web:\n    bind: \"127.0.0.1:81\"\n    pool: back\npools:\n  back:\n    backends:\n      - address: \"127.0.0.1:9\"\n";
    let (_dir, path) = netns::config_for_nobody(yaml);
    let out = netns::run_as_nobody(&["run", "-c", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("listener web: cannot bind 127.0.0.1:81: Permission denied (os error 13): ports below 1024 need the CAP_NET_BIND_SERVICE capability")
            && stderr.contains("AmbientCapabilities=CAP_NET_BIND_SERVICE")
            && !stderr.contains("another process"),
        "{stderr}"
    );
}

/// The error that ends the process is printed whatever the log filter lets through: with
/// logging off, or a filter that names only another target.
#[test]
fn a_fatal_error_is_printed_whatever_the_log_level() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    let yaml = format!(
        "listeners:\n  busy:\n    bind: \"{addr}\"\n    pool: back\npools:\n  back:\n    backends:\n      - address: \"127.0.0.1:9\"\n"
    );
    std::fs::write(&path, yaml).unwrap();
    for (flag, env) in [
        ("off", None),
        ("error", None),
        ("info", Some("hyper=debug")),
    ] {
        let mut cmd = std::process::Command::new(binary::bin());
        cmd.args(["--log-level", flag, "run", "-c"]).arg(&path);
        match env {
            Some(v) => cmd.env("TOLLGATE_LOG", v),
            None => cmd.env_remove("TOLLGATE_LOG"),
        };
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flag} {env:?}: {stderr}");
        assert!(
            stderr.contains(&format!("listener busy: cannot bind {addr}"))
                && stderr.contains("is another process using it?"),
            "{flag} {env:?}: nothing said why:\n{stderr}"
        );
    }
}

/// The error of a start that must fail (for example, a port that is already taken).
fn start_error(yaml: &str) -> String {
    let config = tollgate::config::load_str(yaml, "t.yaml").unwrap();
    match tollgate::app::Server::start(&config) {
        Ok(_) => panic!("the start must fail: the address is taken"),
        Err(e) => format!("{e:#}"),
    }
}

/// An echo backend on a specific address.
fn backend_on(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    let listener = TcpListener::bind(addr).unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
            });
        }
    });
    addr
}

#[test]
fn a_second_instance_cannot_share_the_port() {
    let echo = echo_backend();
    let first = start(&config(&[(echo, 1)], "", "", ""));
    let addr = front(&first);
    let yaml = format!(
        "listeners:\n  again:\n    bind: \"{addr}\"\n    pool: back\npools:\n  back:\n    backends:\n      - address: \"{echo}\"\n"
    );
    let err = start_error(&yaml);
    assert!(err.contains(&addr.to_string()), "{err}");
    first.shutdown();
}
