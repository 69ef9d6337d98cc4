//! `tollgate check`: a good file passes with a summary of what tollgate will do with it
//! (limits, timeouts, health checks, DNS names); each kind of bad file exits 78 with
//! `PATH:LINE:COLUMN: key.path: message` on stderr, quickly, whatever the file holds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::binary::bin;

fn check(yaml: &str) -> (Output, String, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    std::fs::write(&path, yaml).unwrap();
    let started = Instant::now();
    let out = Command::new(bin())
        .arg("check")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr =
        String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "t.yaml");
    (out, stderr, took)
}

/// Asserts exit 78 and a first error line that starts with `prefix` (`t.yaml:LINE:COL: key`).
fn rejected(yaml: &str, prefix: &str, words: &str) {
    let (out, stderr, took) = check(yaml);
    assert_eq!(out.status.code(), Some(78), "stderr: {stderr}");
    assert!(
        stderr.starts_with(prefix),
        "expected {prefix:?} first, got:\n{stderr}"
    );
    assert!(stderr.contains(words), "expected {words:?} in:\n{stderr}");
    assert!(took < Duration::from_secs(5), "check took {took:?}");
}

const GOOD: &str = "listeners:\n  web:\n    bind: \"127.0.0.1:8080\"\n    pool: web\npools:\n  web:\n    backends:\n      - address: \"127.0.0.1:9001\"\n";

#[test]
fn the_example_config_passes() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/tollgate.example.yaml");
    let out = Command::new(bin())
        .args(["check", "-c", path])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("listeners (1)") && stdout.contains("127.0.0.1:9002 weight 2"),
        "{stdout}"
    );
}

/// The summary says what tollgate will do with the file, not only what it serves: each
/// listener's limits and timeouts, each pool's health check and failure policy, and the DNS
/// names it resolves, durations written as in the file.
#[test]
fn the_summary_covers_limits_health_checks_and_dns_names() {
    let yaml = "listeners:\n  web:\n    bind: \"127.0.0.1:8080\"\n    pool: web\n    limits:\n      max_connections: 5000\n      per_source: { connection_rate: 10/s, burst: 5, max_connections: 64 }\n    timeouts: { connect: 500ms, idle: 2m }\n  plain:\n    bind: \"127.0.0.1:8081\"\n    pool: dns\npools:\n  web:\n    balance: least_connections\n    slow_start: 30s\n    when_all_down: use_all\n    passive: { consecutive_failures: 7 }\n    health_check:\n      type: http\n      interval: 5s\n      port: 9000\n      http: { path: /ready, host: app.internal, expect_status: \"200,204\" }\n    backends:\n      - address: \"127.0.0.1:9001\"\n  dns:\n    health_check: { type: send_expect, send: \"PING\\r\\n\", expect: \"PONG\" }\n    backends:\n      - { host: app.internal, port: 8080, weight: 3 }\n      - srv: _app._tcp.example.com\n";
    let (out, stderr, _) = check(yaml);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "  web tcp 127.0.0.1:8080 -> pool web",
        "    limits: at most 5000 connections open at once",
        "    per source (/32 IPv4, /64 IPv6): 10/s burst 5, at most 64 open, 0 exempt block(s), 1000000 sources tracked at most",
        "    timeouts: connect 500ms, idle 2m",
        "    per source: no limits",
        "    timeouts: connect 3s, idle 10m",
        "  web least_connections, 1 backend(s), 2 connect retries",
        "    health check: http GET /ready (Host: app.internal), status 200,204, on port 9000, every 5s (timeout 1s, rise 2, fall 3)",
        "    when all down: use_all; slow start: 30s; passive: down after 7 connect failures in a row",
        "    health check: send_expect \"PING\\r\\n\", reply starts \"PONG\", every 2s (timeout 1s, rise 2, fall 3)",
        "    when all down: reject; slow start: off; passive: down after 5 connect failures in a row",
        "    host app.internal port 8080 weight 3",
        "    srv _app._tcp.example.com (weights and ports from DNS)",
        "resolver (2 DNS name(s)): from /etc/resolv.conf; TTL clamped to 1s-5m; negative answers held 30s; query timeout 2s",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no line {line:?} in:\n{stdout}"
        );
    }
    let without_check = GOOD;
    let (out, _, _) = check(without_check);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("    health check: none (backends are up unless passive checks fail)"),
        "a pool without a check says so"
    );
}

#[test]
fn a_minimal_config_passes() {
    let (out, stderr, _) = check(GOOD);
    assert!(out.status.success(), "{stderr}");
}

#[test]
fn unknown_key() {
    rejected(
        &GOOD.replace("    pool: web\n", "    pool: web\n    pol: x\n"),
        "t.yaml:5:5: listeners.web.pol:",
        "unknown field `pol`",
    );
}

#[test]
fn duplicate_key() {
    rejected(
        &GOOD.replace("    pool: web\n", "    pool: web\n    pool: web\n"),
        "t.yaml:5:5: listeners.web.pool:",
        "duplicate",
    );
}

#[test]
fn wrong_type() {
    rejected(
        &format!("{GOOD}workers: [1, 2]\n"),
        "t.yaml:9:10: workers:",
        "invalid type",
    );
}

#[test]
fn port_out_of_range() {
    rejected(
        &GOOD.replace("127.0.0.1:9001", "127.0.0.1:65536"),
        "t.yaml:8:18: pools.web.backends[0].address:",
        "out of range",
    );
}

#[test]
fn negative_duration() {
    rejected(
        &format!("{GOOD}shutdown:\n  drain_timeout: -5s\n"),
        "t.yaml:10:18: shutdown.drain_timeout:",
        "negative",
    );
}

#[test]
fn billion_laughs_alias_bomb() {
    let mut yaml = String::from(
        "listeners:\n  web:\n    bind: &a [\"1.1.1.1:1\",\"1.1.1.1:1\",\"1.1.1.1:1\",\"1.1.1.1:1\",\"1.1.1.1:1\",\"1.1.1.1:1\",\"1.1.1.1:1\",\"1.1.1.1:1\",\"1.1.1.1:1\"]\n",
    );
    let mut prev = 'a';
    for name in ['b', 'c', 'd', 'e', 'f', 'g', 'h', 'i'] {
        let refs = vec![format!("*{prev}"); 9].join(",");
        yaml.push_str(&format!("    x{name}: &{name} [{refs}]\n"));
        prev = name;
    }
    yaml.push_str(&format!("    pool: *{prev}\n"));
    let (out, stderr, took) = check(&yaml);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.starts_with("t.yaml:")
            && stderr
                .split(':')
                .nth(1)
                .is_some_and(|l| l.parse::<u32>().is_ok()),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(5), "an alias bomb took {took:?}");
}

#[test]
fn every_error_is_reported_at_once_in_file_order() {
    let yaml = "workers: 0\nlisteners:\n  web:\n    bind: \"1.2.3.4:99999\"\n    pool: nope\n    timeouts: { idle: 5 }\npools:\n  web:\n    backends: []\n";
    let (out, stderr, _) = check(yaml);
    assert_eq!(out.status.code(), Some(78));
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 5, "{stderr}");
    assert!(lines[0].starts_with("t.yaml:1:10: workers:"), "{stderr}");
    assert!(
        lines[1].starts_with("t.yaml:4:11: listeners.web.bind:"),
        "{stderr}"
    );
    assert!(
        lines[2].starts_with("t.yaml:5:11: listeners.web.pool: no pool named `nope`"),
        "{stderr}"
    );
    assert!(
        lines[3].starts_with("t.yaml:6:23: listeners.web.timeouts.idle:"),
        "{stderr}"
    );
    assert!(
        lines[4].starts_with("t.yaml:9:15: pools.web.backends: at least one backend"),
        "{stderr}"
    );
}

/// What a protocol cannot carry is refused, not ignored: a v1 PROXY header has no datagram
/// family.
#[test]
fn what_cannot_apply_is_refused_not_ignored() {
    rejected(
        &GOOD.replace(
            "    pool: web\n",
            "    pool: web\n    protocol: udp\n    proxy_protocol: { send: v1 }\n",
        ),
        "t.yaml:6:29: listeners.web.proxy_protocol.send:",
        "takes a v2 header (v1 has no datagram family)",
    );
}

/// `proxy_protocol.send` is served: the summary says what each backend connection gets.
#[test]
fn the_summary_shows_the_proxy_header_sent() {
    let (out, stderr, _) = check(&GOOD.replace(
        "    pool: web\n",
        "    pool: web\n    proxy_protocol: { send: v1 }\n",
    ));
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "    proxy protocol: a v1 header with the client's address to each backend\n"
        ),
        "{stdout}"
    );
}

/// `protocol: udp` is served: the summary shows the listener's sessions.
#[test]
fn a_udp_listener_passes_and_its_sessions_are_summarised() {
    let (out, stderr, _) = check(&GOOD.replace(
        "    pool: web\n",
        "    pool: web\n    protocol: udp\n    udp: { max_sessions: 100, responses: 1 }\n",
    ));
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("  web udp 127.0.0.1:8080 -> pool web\n    sessions: at most 100 at once; each ends after 30s without a datagram, or after 1 reply"),
        "{stdout}"
    );
    // Connect retries and passive checks are TCP notions: a UDP-only pool shows neither.
    assert!(
        stdout.contains("  web round_robin, 1 backend(s)\n    health check: none (backends are up)\n    when all down: reject; slow start: off\n"),
        "{stdout}"
    );
}

#[test]
fn dns_backends_and_the_resolver_are_checked_without_asking_dns() {
    let dns = GOOD.replace(
        "      - address: \"127.0.0.1:9001\"\n",
        "      - host: app.internal\n        port: 8080\n      - srv: _app._tcp.example.com\n        backup: true\n",
    );
    let (out, stderr, _) = check(&format!(
        "{dns}resolver:\n  nameservers: [\"192.0.2.53\"]\n"
    ));
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("host app.internal port 8080 weight 1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("srv _app._tcp.example.com (weights and ports from DNS), backup"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "resolver (2 DNS name(s)): 192.0.2.53:53; TTL clamped to 1s-5m; negative answers held 30s"
        ),
        "{stdout}"
    );
    rejected(
        &dns.replace("        port: 8080\n", ""),
        "t.yaml:8:15: pools.web.backends[0].port: `host` needs a `port`",
        "port",
    );
    rejected(
        &dns.replace("_app._tcp.example.com", "app.example.com"),
        "t.yaml:10:14: pools.web.backends[1].srv:",
        "_service._proto",
    );
    rejected(
        &format!("{dns}resolver:\n  min_ttl: 1m\n  max_ttl: 1s\n"),
        "t.yaml:",
        "resolver.max_ttl: max_ttl (1s) is below min_ttl (60s)",
    );
}

/// A file that cannot be read has no line or column to point at (no made-up `:0:0:`), and
/// the usual cause is the path: the message says where it comes from.
#[test]
fn a_missing_file_is_a_config_error_that_names_the_path_and_where_it_comes_from() {
    let out = Command::new(bin())
        .args(["check", "-c", "/nonexistent/tollgate.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end(),
        "/nonexistent/tollgate.yaml: cannot read: No such file or directory (os error 2); \
         the config file is named with -c PATH (default /etc/tollgate/tollgate.yaml)"
    );
}

/// Unknown keys, wrong types and bad values of one file, all in one run, each on its own
/// line with its place and key path: four typos are four lines, not four runs.
#[test]
fn every_error_of_a_file_is_reported_in_one_run() {
    let yaml = "workers: [2]\nlisteners:\n  web:\n    bindd: \"127.0.0.1:8080\"\n    pool: web\n    timout: { idle: 5m }\n    limits: { max_connections: lots }\npools:\n  web:\n    balanse: least_connections\n    backends:\n      - address: \"127.0.0.1:9001\"\n        wieght: 2\n      - address: \"127.0.0.1:99999\"\n";
    let (out, stderr, _) = check(yaml);
    assert_eq!(out.status.code(), Some(78));
    let lines: Vec<&str> = stderr.lines().collect();
    let expected = [
        "t.yaml:1:10: workers: invalid type: a sequence, expected `auto` or a number of worker threads",
        "t.yaml:4:5: listeners.web.bindd: unknown field `bindd`; did you mean `bind`? (valid keys: `protocol`, `bind`, `pool`, `sni`, `proxy_protocol`, `access`, `limits`, `timeouts`, `udp`)",
        "t.yaml:6:5: listeners.web.timout: unknown field `timout`; did you mean `timeouts`?",
        "t.yaml:7:32: listeners.web.limits.max_connections: invalid type: the string \"lots\", expected a whole number",
        "t.yaml:10:5: pools.web.balanse: unknown field `balanse`; did you mean `balance`?",
        "t.yaml:13:9: pools.web.backends[0].wieght: unknown field `wieght`; did you mean `weight`?",
        "t.yaml:14:18: pools.web.backends[1].address: `127.0.0.1:99999`: port 99999 is out of range",
    ];
    assert_eq!(lines.len(), expected.len(), "{stderr}");
    for (line, want) in lines.iter().zip(expected) {
        assert!(line.starts_with(want), "expected {want:?}, got:\n{stderr}");
    }
}

/// A tab in the indentation is a YAML error; it is reported at the tab, under the key the
/// author meant (what an editor shows), and says what to do.
#[test]
fn a_tab_is_reported_at_its_place_and_key() {
    rejected(
        &GOOD.replace("    bind:", "\tbind:"),
        "t.yaml:3:1: listeners.web.bind: ",
        "YAML indents with spaces, never tabs",
    );
    rejected(
        &GOOD.replace("    pool: web\n", "\tpool: web\n"),
        "t.yaml:4:1: listeners.web.pool: ",
        "tab",
    );
}

#[test]
fn an_unknown_pool_names_the_pools_that_exist() {
    let two = format!("{GOOD}  api:\n    backends:\n      - address: \"127.0.0.1:9002\"\n");
    rejected(
        &two.replace("pool: web", "pool: wbe"),
        "t.yaml:4:11: listeners.web.pool: no pool named `wbe` is defined; did you mean `web`? (the pools: `api`, `web`)",
        "wbe",
    );
    rejected(
        &two.replace("pool: web", "pool: images"),
        "t.yaml:4:11: listeners.web.pool: no pool named `images` is defined (the pools: `api`, `web`)",
        "images",
    );
}

/// `--log-level` takes what `TOLLGATE_LOG` takes — levels and `target=level` directives —
/// and anything else is bad usage (64) with the list, not a filter that hides every line.
#[test]
fn log_level_accepts_only_levels_and_directives() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    std::fs::write(&path, GOOD).unwrap();
    let run = |level: &str, env: Option<&str>| {
        let mut cmd = Command::new(bin());
        cmd.args(["--log-level", level, "check", "-c"]).arg(&path);
        match env {
            Some(v) => cmd.env("TOLLGATE_LOG", v),
            None => cmd.env_remove("TOLLGATE_LOG"),
        };
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for good in ["error", "off", "TRACE", "tollgate=debug,warn"] {
        let (code, stderr) = run(good, None);
        assert_eq!(code, Some(0), "--log-level {good}: {stderr}");
    }
    for bad in ["verbose", "tollgate=loud", ""] {
        let (code, stderr) = run(bad, None);
        assert_eq!(code, Some(64), "--log-level {bad:?}: {stderr}");
        assert!(
            stderr.contains("--log-level")
                && stderr.contains("error, warn, info, debug, trace, off"),
            "--log-level {bad:?}: {stderr}"
        );
    }
    let (code, stderr) = run("info", Some("verbose"));
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.starts_with("tollgate: TOLLGATE_LOG `verbose`: `verbose` is not a level")
            && stderr.contains("error, warn, info, debug, trace, off"),
        "{stderr}"
    );
}

/// `check` may run as another user than the service; a port below 1024 that this user could
/// not bind is a warning (exit 0), naming the capability and the systemd setting.
#[test]
fn check_warns_when_this_user_could_not_bind_a_privileged_port() {
    let (_dir, path) =
        common::netns::config_for_nobody(&GOOD.replace("127.0.0.1:8080", "127.0.0.1:81"));
    let path_str = path.to_str().unwrap();
    let out = common::netns::run_as_nobody(&["check", "-c", path_str]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.starts_with(&format!("{path_str}: listeners.web.bind: warning: 127.0.0.1:81 is below port 1024, and this process (uid 65534) lacks CAP_NET_BIND_SERVICE")),
        "{stderr}"
    );
    assert!(
        stderr.contains("AmbientCapabilities=CAP_NET_BIND_SERVICE"),
        "{stderr}"
    );
    // Root (these tests' user) has the capability: no warning.
    let out = Command::new(bin())
        .args(["check", "-c", path_str])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_usage_exits_64() {
    let out = Command::new(bin()).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(bin()).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn backends_that_would_loop_or_are_not_one_host_are_refused() {
    let own = GOOD.replace("127.0.0.1:9001", "127.0.0.1:8080");
    rejected(
        &own,
        "t.yaml:8:18: pools.web.backends[0].address:",
        "loop back",
    );
    let wild = GOOD.replace("\"127.0.0.1:8080\"", "\"0.0.0.0:8080\"");
    rejected(
        &wild.replace("127.0.0.1:9001", "127.0.0.1:8080"),
        "t.yaml:8:18:",
        "loop back",
    );
    rejected(
        &GOOD.replace("127.0.0.1:9001", "0.0.0.0:9001"),
        "t.yaml:8:18:",
        "not a single host",
    );
    rejected(
        &GOOD.replace("127.0.0.1:9001", "224.0.0.1:9001"),
        "t.yaml:8:18:",
        "not a single host",
    );
}

#[test]
fn a_pool_of_only_zero_weights_is_refused() {
    let zero = GOOD.replace(
        "\"127.0.0.1:9001\"\n",
        "\"127.0.0.1:9001\"\n        weight: 0\n",
    );
    rejected(&zero, "t.yaml:8:7: pools.web.backends:", "weight 0");
}

#[test]
fn overlapping_binds_are_refused() {
    let yaml = GOOD.replace(
        "    bind: \"127.0.0.1:8080\"\n",
        "    bind: [\"0.0.0.0:8080\", \"127.0.0.1:8080\"]\n",
    );
    rejected(
        &yaml,
        "t.yaml:3:5: listeners.web.bind:",
        "overlaps 0.0.0.0:8080",
    );
}

#[test]
fn control_characters_in_names_cannot_split_an_error_line() {
    let yaml = GOOD.replace(
        "    pool: web\n",
        "    pool: \"web\\nt.yaml:1:1: forged\"\n",
    );
    let (out, stderr, _) = check(&yaml);
    assert_eq!(out.status.code(), Some(78));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("web\\nt.yaml"), "{stderr}");
}

#[test]
fn hash_is_only_for_maglev() {
    let rr = GOOD.replace("    backends:\n", "    hash: source_ip\n    backends:\n");
    rejected(
        &rr,
        "t.yaml:7:11: pools.web.hash:",
        "applies only to `balance: maglev`",
    );
    let maglev = GOOD.replace(
        "    backends:\n",
        "    balance: maglev\n    hash: source_ip_port\n    backends:\n",
    );
    let (out, stderr, _) = check(&maglev);
    assert!(out.status.success(), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("web maglev"),
        "the summary names the algorithm"
    );
}

/// A YAML tag asks the loader for something tollgate never does (build an object, run a
/// constructor): it is an error at its place, never silently dropped.
#[test]
fn unknown_yaml_tags_are_refused_with_their_place() {
    rejected(
        &GOOD.replace(
            "pool: web\n",
            "pool: !!python/object/apply:os.system [\"id\"]\n",
        ),
        "t.yaml:4:",
        "listeners.web.pool: unsupported tag `!!python/object/apply:os.system`",
    );
    rejected(
        &GOOD.replace("    backends:\n", "    backends: !custom\n"),
        "t.yaml:",
        "unsupported tag `!custom`",
    );
}

#[test]
fn admin_allowed_hosts_are_checked_and_summarised() {
    let admin = "admin:\n  bind: \"127.0.0.1:9100\"\n  allowed_hosts: [\"tollgate.internal\", \"LB.example:8443\"]\n";
    let (out, stderr, _) = check(&format!("{admin}{GOOD}"));
    assert!(out.status.success(), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("allowed hosts: tollgate.internal, lb.example:8443"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    rejected(
        &format!("{}{GOOD}", admin.replace("LB.example:8443", "*.example")),
        "t.yaml:3:40: admin.allowed_hosts[1]:",
        "wildcards are not supported",
    );
    rejected(
        &format!("{}{GOOD}", admin.replace("LB.example:8443", "lb:0")),
        "t.yaml:3:40: admin.allowed_hosts[1]:",
        "port 0",
    );
    rejected(
        &format!("{}{GOOD}", admin.replace("\"LB.example:8443\"", "\"a b\"")),
        "t.yaml:3:40: admin.allowed_hosts[1]:",
        "not a host or host:port",
    );
}

/// The README's example of a bad file and what `check` prints for it are the real thing.
#[test]
fn the_readme_error_example_is_what_check_prints() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block_after = |opening: &str| {
        let start = readme
            .find(opening)
            .unwrap_or_else(|| panic!("no {opening:?}"))
            + opening.len();
        let end = start + readme[start..].find("```").unwrap();
        readme[start..end].to_owned()
    };
    let yaml = block_after("```yaml\n# bad.yaml\n");
    let shown = block_after("```text\n$ tollgate check -c bad.yaml\n");
    let expected: String = shown
        .lines()
        .take_while(|l| !l.starts_with("$ "))
        .map(|l| format!("{l}\n"))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.yaml"), yaml).unwrap();
    let out = Command::new(bin())
        .args(["check", "-c", "bad.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert_eq!(String::from_utf8_lossy(&out.stderr), expected);
}

#[test]
fn logging_settings_are_checked_and_summarised() {
    rejected(
        &format!("{GOOD}logging:\n  access: yes please\n"),
        "t.yaml:10:11: logging.access:",
        "true or false",
    );
    rejected(
        &format!("{GOOD}logging:\n  access: true\n  access_rate: 0/s\n"),
        "t.yaml:11:16: logging.access_rate:",
        "would write no line; set logging.access: false",
    );
    rejected(
        &format!("{GOOD}logging:\n  access_rate: 100\n"),
        "t.yaml:10:16: logging.access_rate:",
        "write N/s, N/m or N/h",
    );
    rejected(
        &format!("{GOOD}logging:\n  acces: true\n"),
        "t.yaml:10:3: logging.acces:",
        "access",
    );
    let (out, stderr, _) = check(GOOD);
    assert!(out.status.success(), "{stderr}");
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(summary.contains("access log: off\n"), "{summary}");
    let (out, stderr, _) = check(&format!("{GOOD}logging: {{ access: true }}\n"));
    assert!(out.status.success(), "{stderr}");
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        summary.contains("access log: on, up to 1000/s (lines beyond are counted, not written)\n"),
        "{summary}"
    );
}
