//! `tollgate check --diff`: against a running instance, it lists what a reload of the file
//! would change and how many open connections that touches, and the operator overrides that
//! would mask a change; with no instance it says so. The README's example is this output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::binary::{self, bin};
use common::http::get;
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
    // The access log is a reloadable setting like any other.
    let logging = "logging: { access: true, access_rate: 50/s }\n";
    let same = yaml("127.0.0.1:0", &[(a, 1), (b, 1)], "10m", true);
    std::fs::write(&path, format!("{logging}{same}")).unwrap();
    let out = check_diff(&path, Some(admin));
    assert!(out.contains("~ logging.access: false -> true"), "{out}");
    assert!(
        out.contains("~ logging.access_rate: 1000/s -> 50/s"),
        "{out}"
    );
    // The same file as running: nothing to change.
    std::fs::write(&path, same).unwrap();
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

fn enc(addr: SocketAddr) -> String {
    addr.to_string().replace(':', "%3A")
}

/// A weight set through the API outlives reloads: when the file changes that weight, the
/// diff says the override masks it and which call drops it; a drain masks any change of the
/// entry the same way. Once the override is dropped, nothing is masked.
#[test]
fn overrides_that_mask_a_changed_value_are_named_with_the_call_that_drops_them() {
    let (a, b) = (echo_backend(), echo_backend());
    let server = start(&yaml("127.0.0.1:0", &[(a, 1), (b, 1)], "10m", false));
    let admin = server.admin_addr().unwrap();
    let base = |x: SocketAddr| format!("/api/v1/pools/back/backends/{}", enc(x));
    let put = common::http::request(
        admin,
        "PUT",
        &format!("{}/weight", base(a)),
        None,
        r#"{"weight": 5}"#,
    );
    assert_eq!(put.status, 200, "{}", put.body);
    let drain = common::http::request(admin, "POST", &format!("{}/drain", base(b)), None, "");
    assert_eq!(drain.status, 200, "{}", drain.body);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("next.yaml");
    std::fs::write(&path, yaml("127.0.0.1:0", &[(a, 3), (b, 2)], "10m", false)).unwrap();
    let out = check_diff(&path, Some(admin));
    let weight = format!(
        "! pool back: backend {a}: the file changes weight 1 -> 3, but the weight override 5 set through the API stays; `DELETE {}/weight` drops it",
        base(a)
    );
    let drained = format!(
        "! pool back: backend {b}: the file changes weight 1 -> 2, but the backend stays draining through the API; `POST {}/enable` drops it",
        base(b)
    );
    assert!(out.contains(&weight), "{out}");
    assert!(out.contains(&drained), "{out}");
    // A change the override does not mask (the weight is the same) is not flagged.
    std::fs::write(&path, yaml("127.0.0.1:0", &[(a, 1), (b, 1)], "5m", false)).unwrap();
    assert!(!check_diff(&path, Some(admin)).contains("! pool"));
    // Dropped overrides mask nothing.
    let delete = common::http::request(admin, "DELETE", &format!("{}/weight", base(a)), None, "");
    assert_eq!(delete.status, 200, "{}", delete.body);
    let enable = common::http::request(admin, "POST", &format!("{}/enable", base(b)), None, "");
    assert_eq!(enable.status, 200, "{}", enable.body);
    std::fs::write(&path, yaml("127.0.0.1:0", &[(a, 3), (b, 2)], "10m", false)).unwrap();
    let out = check_diff(&path, Some(admin));
    assert!(
        out.contains(&format!("~ pool back: backend {a}: weight: 1 -> 3"))
            && !out.contains("! pool"),
        "{out}"
    );
    server.shutdown();
}

/// A pool's health check, failure policy and slow start are compared too, not only its
/// balance and backends.
#[test]
fn pool_health_checks_and_policies_are_compared() {
    let echo = echo_backend();
    let running = tollgate::config::load_str(
        &yaml("127.0.0.1:9100", &[(echo, 1)], "10m", false),
        "t.yaml",
    )
    .unwrap();
    let next = yaml("127.0.0.1:9100", &[(echo, 1)], "10m", false).replace(
        "pools:\n  back:\n",
        "pools:\n  back:\n    health_check: { type: http, interval: 5s }\n    when_all_down: use_all\n    slow_start: 30s\n",
    );
    let next = tollgate::config::load_str(&next, "t.yaml").unwrap();
    let status = serde_json::json!({"workers": 1, "listeners": [], "pools": []});
    let lines = tollgate::diff::describe(&running.to_json(), &status, &next);
    for expected in [
        "~ pool back: health_check: null -> {",
        "~ pool back: when_all_down: reject -> use_all",
        "~ pool back: slow_start: 0ms -> 30s",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(expected)),
            "{expected}: {lines:?}"
        );
    }
    // An instance that predates these keys in its config is not reported as changed.
    let mut older = running.to_json();
    for key in ["health_check", "when_all_down", "slow_start", "passive"] {
        older["pools"][0].as_object_mut().unwrap().remove(key);
    }
    let lines = tollgate::diff::describe(&older, &status, &next);
    assert!(lines.is_empty(), "{lines:?}");
}

/// The text of the fenced block after `<!-- example NAME` in the README.
fn readme_block(readme: &str, name: &str) -> String {
    let marker = format!("<!-- example {name}");
    let at = readme
        .find(&marker)
        .unwrap_or_else(|| panic!("README has no {marker}"));
    let fence = at + readme[at..].find("```").unwrap();
    let start = fence + readme[fence..].find('\n').unwrap() + 1;
    let end = start + readme[start..].find("```").unwrap();
    readme[start..end].to_owned()
}

/// The `addr=IP:PORT` field of a text log line.
fn text_addr(line: &str) -> SocketAddr {
    let start = line.find("addr=").unwrap() + 5;
    line[start..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// `text` with the README's values replaced by this test's (`map`: README value, ours).
fn ours(map: &[(String, String)], text: &str) -> String {
    map.iter()
        .fold(text.to_owned(), |t, (r, o)| t.replace(r, o))
}

/// `text` with this test's values replaced by the README's.
fn readmes(map: &[(String, String)], text: &str) -> String {
    map.iter()
        .fold(text.to_owned(), |t, (r, o)| t.replace(o, r))
}

/// A text log line without its timestamp.
fn untimed(line: &str) -> &str {
    line.trim()
        .split_once(' ')
        .map_or("", |(_, rest)| rest.trim_start())
}

/// The README's `check --diff` example, run for real: its running file, its API call, two
/// clients on the backend it removes, its edited file, and the reload after, with the
/// README's addresses mapped onto loopback. What `check --diff` prints and what the reload
/// logs must be the README's text, so the README cannot drift from the real output.
#[test]
fn the_readme_diff_example_is_what_tollgate_prints() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let (a, b, c) = (echo_backend(), echo_backend(), echo_backend());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    // The README's values and this test's: the admin API and the listener on loopback
    // addresses of their own (port 0: a free port), the backends on echo servers.
    let mut map: Vec<(String, String)> = vec![
        (
            "/etc/tollgate/tollgate.yaml".into(),
            path.display().to_string(),
        ),
        ("127.0.0.1:9100".into(), "127.0.0.2:0".into()),
        ("127.0.0.1:8080".into(), "127.0.0.1:0".into()),
    ];
    for (readme_addr, ours) in [("10.0.0.11", a), ("10.0.0.12", b), ("10.0.0.13", c)] {
        map.push((format!("{readme_addr}:8080"), ours.to_string()));
        map.push((format!("{readme_addr}%3A8080"), enc(ours)));
    }
    std::fs::write(&path, ours(&map, &readme_block(&readme, "diff:running"))).unwrap();
    let lb = binary::spawn_file_text(&path);
    let admin = text_addr(&lb.wait_log("admin API listening", Duration::from_secs(20)));
    let front = text_addr(&lb.wait_log("listener bound", Duration::from_secs(20)));
    // What tollgate prints of its admin API is its real address.
    let mut back = map.clone();
    back.insert(0, ("127.0.0.1:9100".into(), admin.to_string()));
    wait_for("admin answers", Duration::from_secs(10), || {
        std::panic::catch_unwind(|| get(admin, "/healthz").status == 200).unwrap_or(false)
    });
    // The README's API call, as curl makes it.
    let curl = readme_block(&readme, "diff:override");
    let body = curl
        .split("-d '")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap();
    let url = curl
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap();
    let call = ours(&map, &url[url.find("/api/").unwrap()..]);
    let put = common::http::request(admin, "PUT", &call, None, body);
    assert_eq!(put.status, 200, "{}", put.body);
    // Two clients on 10.0.0.12.
    let on_b = || {
        let status = get(admin, "/api/v1/status").json();
        let backends = status["pools"][0]["backends"].as_array().unwrap().clone();
        let b = backends
            .iter()
            .find(|x| x["address"] == b.to_string())
            .unwrap();
        b["connections_active"].as_u64().unwrap()
    };
    let mut held = Vec::new();
    while on_b() < 2 {
        assert!(held.len() < 200, "two connections reach {b}");
        held.push(held_echo(front, 1));
    }
    std::fs::write(&path, ours(&map, &readme_block(&readme, "diff:next"))).unwrap();
    let expected = readme_block(&readme, "diff:output");
    let (command, expected) = expected.split_once('\n').unwrap();
    assert_eq!(
        command,
        "$ tollgate check --diff -c /etc/tollgate/tollgate.yaml"
    );
    let cores = std::thread::available_parallelism().unwrap();
    let printed = readmes(&back, &check_diff(&path, Some(admin)))
        .replace(&format!("workers: auto ({cores})"), "workers: auto (2)");
    assert_eq!(
        printed, expected,
        "the README's check --diff example (left: printed, right: README)"
    );
    lb.signal(libc::SIGHUP);
    let logged = readmes(
        &map,
        &lb.wait_log("config reloaded", Duration::from_secs(20)),
    );
    let expected = readme_block(&readme, "diff:reload-log");
    assert_eq!(
        untimed(&logged),
        untimed(&expected),
        "the README's reload log line (left: logged, right: README)"
    );
    drop(held);
}
