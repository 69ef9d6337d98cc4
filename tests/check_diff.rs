//! `tollgate check --diff`: against a running instance, it lists what a reload of the file
//! would change and how many open connections that touches; with no instance it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::Command;

use common::binary::bin;
use common::*;

fn yaml(admin: &str, backends: &[(SocketAddr, u32)], idle: &str, extra: bool) -> String {
    let mut y = format!(
        "workers: 1\nadmin:\n  bind: \"{admin}\"\nlisteners:\n  front:\n    bind: \"127.0.0.1:0\"\n    pool: back\n    timeouts: {{ idle: {idle} }}\n"
    );
    if extra {
        y.push_str("  side:\n    bind: \"127.0.0.1:0\"\n    pool: back\n");
    }
    y.push_str("pools:\n  back:\n    backends:\n");
    for (b, w) in backends {
        y.push_str(&format!("      - {{ address: \"{b}\", weight: {w} }}\n"));
    }
    y
}

fn check_diff(path: &std::path::Path, admin: Option<SocketAddr>) -> String {
    let mut cmd = Command::new(bin());
    cmd.args(["check", "--diff", "-c"]).arg(path);
    if let Some(a) = admin {
        cmd.arg("--admin").arg(a.to_string());
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn diff_lists_changes_and_the_connections_they_touch() {
    let (a, b, c) = (echo_backend(), echo_backend(), echo_backend());
    let server = start(&yaml("127.0.0.1:0", &[(a, 1), (b, 1)], "10m", true));
    let admin = server.admin_addr().unwrap();
    // Two open connections: one lands on a, one on b.
    let held: Vec<TcpStream> = (0..2u8).map(|i| held_echo(front(&server), i)).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("next.yaml");
    std::fs::write(&path, yaml("127.0.0.1:0", &[(a, 3), (c, 1)], "5m", false)).unwrap();
    let out = check_diff(&path, Some(admin));
    assert!(
        out.contains("~ listener front: timeouts.idle: 10m -> 5m"),
        "{out}"
    );
    assert!(
        out.contains("- listener side (0 open connection(s) drain)"),
        "{out}"
    );
    assert!(
        out.contains(&format!("~ pool back: backend {a}: weight: 1 -> 3")),
        "{out}"
    );
    assert!(out.contains(&format!("+ pool back: backend {c}")), "{out}");
    assert!(
        out.contains(&format!(
            "- pool back: backend {b} (1 open connection(s) drain)"
        )),
        "{out}"
    );
    // The same file as running: nothing to change.
    std::fs::write(&path, yaml("127.0.0.1:0", &[(a, 1), (b, 1)], "10m", true)).unwrap();
    assert!(check_diff(&path, Some(admin)).contains("a reload would change nothing"));
    drop(held);
    server.shutdown();
}

#[test]
fn dns_entries_and_the_resolver_are_compared_as_written() {
    let dns = common::dns::DnsServer::start();
    let port = common::dns::id_backends_on_one_port(&[(common::dns::lo(101), 1)]);
    dns.set_a("app.test", 60, &[common::dns::lo(101)]);
    let backends = format!("- {{ host: app.test, port: {port} }}\n- {{ srv: _x._tcp.app.test }}");
    let server = start(&common::dns::dns_config(dns.addr(), "", "", &backends));
    let admin = server.admin_addr().unwrap();
    wait_for("resolved", std::time::Duration::from_secs(10), || {
        common::dns::answer_or_zero(front(&server)) == 1
    });
    let held = TcpStream::connect(front(&server)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("next.yaml");
    let next = format!(
        "- {{ host: app.test, port: {port}, weight: 4 }}\n- {{ host: other.test, port: 80 }}"
    );
    std::fs::write(
        &path,
        common::dns::dns_config(dns.addr(), "min_ttl: 2s", "", &next).replace(
            "admin:\n  bind: \"127.0.0.1:0\"",
            &format!("admin:\n  bind: \"{admin}\""),
        ),
    )
    .unwrap();
    let out = check_diff(&path, Some(admin));
    assert!(
        out.contains(&format!(
            "~ pool back: backend host app.test port {port}: weight: 1 -> 4"
        )),
        "{out}"
    );
    assert!(
        out.contains("+ pool back: backend host other.test port 80"),
        "{out}"
    );
    assert!(
        out.contains("- pool back: backend srv _x._tcp.app.test (0 open connection(s) drain)"),
        "{out}"
    );
    assert!(out.contains("~ resolver.min_ttl: 1s -> 2s"), "{out}");
    drop(held);
}

#[test]
fn without_a_running_instance_it_only_validates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("next.yaml");
    let nobody = refused_addr();
    std::fs::write(
        &path,
        yaml(&nobody.to_string(), &[(echo_backend(), 1)], "10m", false),
    )
    .unwrap();
    let out = check_diff(&path, None);
    assert!(
        out.contains(": ok") && out.contains("cannot be reached"),
        "{out}"
    );
}

/// `admin.allowed_hosts` is compared like any value, and an instance from before the key
/// existed is not reported as changed while the file leaves it empty.
#[test]
fn allowed_hosts_are_compared_and_an_older_instance_is_not_flagged() {
    let echo = echo_backend();
    let base = yaml("127.0.0.1:9100", &[(echo, 1)], "10m", false);
    let cfg = tollgate::config::load_str(&base, "t.yaml").unwrap();
    let status = serde_json::json!({"listeners": [], "pools": []});
    let mut older = cfg.to_json();
    older["admin"]
        .as_object_mut()
        .unwrap()
        .remove("allowed_hosts");
    let lines = tollgate::diff::describe(&older, &status, &cfg);
    assert!(
        !lines.iter().any(|l| l.contains("allowed_hosts")),
        "{lines:?}"
    );
    let named = base.replace(
        "  bind: \"127.0.0.1:9100\"\n",
        "  bind: \"127.0.0.1:9100\"\n  allowed_hosts: [\"lb.internal\"]\n",
    );
    let next = tollgate::config::load_str(&named, "t.yaml").unwrap();
    let lines = tollgate::diff::describe(&cfg.to_json(), &status, &next);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("admin.allowed_hosts") && l.contains("lb.internal")),
        "{lines:?}"
    );
}
