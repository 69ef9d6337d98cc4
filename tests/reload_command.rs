//! `tollgate reload` (the unit's `ExecReload`), the built binary against a running instance:
//! an applied reload exits 0 and says the new generation and what changed; a refused file
//! exits 78 with every error (and the instance records the refusal); a wrong token and an
//! instance that cannot be reached exit 1 saying why. A file at `-c` that cannot be read or
//! parsed (and no `--admin`) makes `tollgate reload` and `tollgate upgrade` exit 78 with that
//! error, naming the file. Also `tollgate completions` and `tollgate man`, generated from the
//! same clap definitions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};

use common::*;

const TOKEN: &str = "reload-test-token";

fn config(token_file: &Path, backend: SocketAddr, extra: &str) -> String {
    format!(
        "admin:\n  bind: \"127.0.0.1:0\"\n  token_file: \"{}\"\nlisteners:\n  web:\n    bind: \"127.0.0.1:0\"\n    pool: back\n{extra}pools:\n  back:\n    backends: [{{ address: \"{backend}\" }}]\n",
        token_file.display()
    )
}

fn reload(file: &Path, admin: SocketAddr) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["reload", "-c"])
        .arg(file)
        .args(["--admin", &admin.to_string()])
        .output()
        .unwrap()
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn reload_exits_0_when_applied_and_78_with_every_error_when_refused() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let file = dir.path().join("tollgate.yaml");
    let backend = echo_backend();
    let server = start_file(&file, &config(&token_file, backend, ""));
    let admin = server.admin_addr().unwrap();

    // Applied: a listener added.
    let added = "  more:\n    bind: \"127.0.0.1:0\"\n    pool: back\n";
    std::fs::write(&file, config(&token_file, backend, added)).unwrap();
    let out = reload(&file, admin);
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{said}{}", text(&out.stderr));
    assert!(said.contains("runs generation 2"), "{said}");
    assert!(said.contains("listeners: 1 added, 0 removed"), "{said}");
    assert_eq!(round_trip(server.addrs("more")[0], b"hi").unwrap(), b"hi");

    // Refused: two errors in the file, both reported, the instance unchanged.
    let bad = config(&token_file, backend, added)
        .replace("pool: back\npools", "pool: nope\npools")
        .replace(
            "bind: \"127.0.0.1:0\"\n    pool: back\n  more",
            "bind: \"nowhere\"\n    pool: back\n  more",
        );
    std::fs::write(&file, &bad).unwrap();
    let out = reload(&file, admin);
    let errors = text(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{errors}");
    assert!(
        errors.contains("listeners.more.pool: no pool named `nope`"),
        "{errors}"
    );
    assert!(errors.contains("listeners.web.bind"), "{errors}");
    assert!(
        errors.contains("refused the file and keeps its running config"),
        "{errors}"
    );
    assert!(out.stdout.is_empty());
    let metrics = common::http::get(admin, "/metrics").body;
    assert!(
        metrics.contains("\ntollgate_config_last_reload_successful 0\n"),
        "the instance recorded it"
    );
    assert!(metrics.contains("\ntollgate_config_generation 2\n"));
    assert_eq!(
        round_trip(server.addrs("more")[0], b"still").unwrap(),
        b"still"
    );
    server.shutdown();
}

#[test]
fn reload_exits_1_saying_why_when_the_instance_cannot_be_asked() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let file = dir.path().join("tollgate.yaml");
    let server = start_file(&file, &config(&token_file, echo_backend(), ""));
    let admin = server.admin_addr().unwrap();

    // The file's token is not the one the instance runs with.
    std::fs::write(&token_file, "another-token\n").unwrap();
    let out = reload(&file, admin);
    let why = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{why}");
    assert!(why.contains("wants its admin token"), "{why}");

    // Nobody there.
    let out = reload(&file, refused_addr());
    let why = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{why}");
    assert!(why.contains("could not be asked to reload"), "{why}");
    server.shutdown();
}

/// Runs `tollgate COMMAND -c FILE` with no `--admin`.
fn ask_without_admin(command: &str, file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args([command, "-c"])
        .arg(file)
        .output()
        .unwrap()
}

#[test]
fn a_file_that_cannot_be_read_or_parsed_is_reported_as_such_with_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.yaml");
    for command in ["upgrade", "reload"] {
        let out = ask_without_admin(command, &missing);
        let why = text(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{command}: {why}");
        assert!(
            why.contains(&format!(
                "{}: cannot read: No such file or directory",
                missing.display()
            )),
            "{command}: {why}"
        );
        assert!(!why.contains("no admin section"), "{command}: {why}");
        assert!(
            why.contains("no running instance was asked"),
            "{command}: {why}"
        );
        assert!(out.stdout.is_empty(), "{command}");
    }

    // Not YAML: the parse error, at its place in the file.
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "admin: [\n  bind: nowhere\n").unwrap();
    for command in ["upgrade", "reload"] {
        let out = ask_without_admin(command, &broken);
        let why = text(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{command}: {why}");
        assert!(
            why.contains(&format!("{}:1:", broken.display())),
            "{command}: {why}"
        );
        assert!(why.contains("unclosed bracket"), "{command}: {why}");
        assert!(!why.contains("no admin section"), "{command}: {why}");
    }

    // A valid file that just has no admin section: nobody to ask, which is not a config error.
    let plain = dir.path().join("plain.yaml");
    let yaml = "listeners:\n  web:\n    bind: \"127.0.0.1:0\"\n    pool: back\npools:\n  back:\n    backends: [{ address: \"127.0.0.1:1\" }]\n";
    std::fs::write(&plain, yaml).unwrap();
    for command in ["upgrade", "reload"] {
        let out = ask_without_admin(command, &plain);
        let why = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command}: {why}");
        assert!(
            why.contains(&format!(
                "{} has no admin section and --admin was not given",
                plain.display()
            )),
            "{command}: {why}"
        );
    }
}

#[test]
fn completions_and_the_man_page_are_generated() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = text(&out.stdout);
        assert!(
            script.contains("reload") && script.contains("config"),
            "{shell}: {script}"
        );
        if shell == "bash" {
            let path = dir.path().join("tollgate.bash");
            std::fs::write(&path, &script).unwrap();
            let checked = Command::new("bash").arg("-n").arg(&path).output().unwrap();
            assert!(
                checked.status.success(),
                "bash -n: {}",
                text(&checked.stderr)
            );
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("man")
        .output()
        .unwrap();
    assert!(out.status.success());
    let page = text(&out.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH tollgate 1"),
        "{page}"
    );
    for word in ["check", "reload", "completions", "log\\-format"] {
        assert!(page.contains(word), "the page mentions {word}");
    }
    // man(1) (man-db, installed by .ci/run) formats it without a warning.
    let path = dir.path().join("tollgate.1");
    std::fs::write(&path, &page).unwrap();
    let shown = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(&path)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80")
        .output()
        .expect("man is installed (apt-get install man-db; .ci/run does)");
    let warnings = text(&shown.stderr);
    assert!(
        shown.status.success() && warnings.trim().is_empty(),
        "{warnings}"
    );
    assert!(text(&shown.stdout).contains("reload"));
}
