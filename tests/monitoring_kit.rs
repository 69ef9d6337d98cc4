//! The monitoring kit in `config/`: the Prometheus alerting rules pass `promtool check rules`
//! and their unit tests (`promtool test rules`), every query of the Grafana dashboard is
//! valid PromQL (checked by promtool as rules), and every tollgate metric the rules and the
//! dashboard name is exported by a live instance with a TCP and a UDP listener and a DNS
//! pool. promtool comes from Debian's prometheus package (`.ci/run` installs it); a missing
//! promtool fails these tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::dns::{DnsServer, dns_config, lo};
use common::http::get;
use common::*;

fn kit(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(path)
}

/// Runs promtool with `args`; panics with its output unless it succeeds.
fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool is installed (apt-get install prometheus; .ci/run does)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{report}");
    report
}

fn rules_text() -> String {
    std::fs::read_to_string(kit("prometheus/tollgate-alerts.yml")).unwrap()
}

/// Every query of the dashboard, with Grafana's variables put in as a query would have them.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(kit("grafana/tollgate-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut queries = Vec::new();
    let mut ids = BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        let id = panel["id"].as_u64().unwrap();
        assert!(ids.insert(id), "panel id {id} is used twice");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            queries.push(
                expr.replace("$__rate_interval", "1m")
                    .replace("$instance", ".*")
                    .replace("$job", "tollgate"),
            );
        }
    }
    assert!(
        queries.len() > 20,
        "the dashboard has {} queries",
        queries.len()
    );
    queries
}

/// The metric names an expression mentions (ours and the process collector's).
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if boundary && (rest.starts_with("tollgate_") || rest.starts_with("process_")) {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.insert(rest[..len].to_owned());
            i += len;
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = kit("prometheus");
    let checked = promtool(&["check", "rules", "tollgate-alerts.yml"], &dir);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "tollgate-alerts.test.yml"], &dir);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alert has a unit test.
    let tests = std::fs::read_to_string(dir.join("tollgate-alerts.test.yml")).unwrap();
    for line in rules_text().lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            assert!(
                tests.contains(&format!("alertname: {name}")),
                "{name} has no unit test"
            );
        }
    }
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in dashboard_queries().iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(q).unwrap()
        ));
    }
    std::fs::write(dir.path().join("dashboard.yml"), rules).unwrap();
    promtool(&["check", "rules", "dashboard.yml"], dir.path());
}

#[test]
fn every_metric_the_kit_names_is_exported() {
    // A TCP and a UDP listener and a pool from DNS, so that every family has samples.
    let dns = DnsServer::start();
    dns.set_a("kit.test", 30, &[lo(1)]);
    let backend = echo_backend();
    let mut yaml = dns_config(
        dns.addr(),
        "",
        "",
        &format!("- {{ host: kit.test, port: {} }}", backend.port()),
    );
    yaml = yaml.replace(
        "pools:\n",
        "  dgram:\n    protocol: udp\n    bind: \"127.0.0.1:0\"\n    pool: back\npools:\n",
    );
    let server = start(&yaml);
    let admin = server.admin_addr().unwrap();
    wait_for("the DNS answer", Duration::from_secs(10), || {
        get(admin, "/metrics")
            .body
            .contains("tollgate_dns_answer_age_seconds{")
    });
    let body = get(admin, "/metrics").body;
    let exported: BTreeSet<&str> = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();
    let dashboard = dashboard_queries().join("\n");
    let mut named = names_in(&rules_text());
    named.extend(names_in(&dashboard));
    assert!(named.len() > 25, "the kit names {named:?}");
    let missing: Vec<&String> = named
        .iter()
        .filter(|n| !exported.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "named by the kit but not exported: {missing:?}"
    );
    server.shutdown();
}
