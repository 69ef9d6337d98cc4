//! Running part of a test inside namespaces of its own: the parent test re-executes the test
//! binary under `unshare` (a user namespace plus network and/or mount namespaces), running
//! only one `#[ignore]`d child test, which may then reconfigure the network or bind-mount
//! files without touching the machine. The child refuses to run outside (see [`in_child`]).

use std::io::{Read, Seek};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const UNSHARE: &str = "/usr/bin/unshare";
const IP: &str = "/usr/sbin/ip";
/// Set for the child test.
const CHILD_ENV: &str = "TOLLGATE_NETNS_CHILD";

/// Runs the ignored test `child` of this binary under `unshare {flags}` (such as `-rn` or
/// `-rmn`) and asserts that it ran and passed within `deadline`.
pub fn run_child(flags: &str, child: &str, deadline: Duration) {
    let probe = Command::new(UNSHARE)
        .args([flags, "true"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {UNSHARE} (util-linux): {e}"));
    assert!(
        probe.status.success(),
        "this test needs namespaces (`unshare {flags}`), which failed here: {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let log = tempfile::tempfile().unwrap();
    let mut process = Command::new(UNSHARE)
        .arg(flags)
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", child, "--include-ignored", "--nocapture"])
        .arg("--test-threads=1")
        .env(CHILD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log.try_clone().unwrap())
        .spawn()
        .unwrap();
    let end = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = process.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= end {
            process.kill().unwrap();
            process.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut output = String::new();
    let mut log = log;
    log.rewind().unwrap();
    log.read_to_string(&mut output).unwrap();
    let status =
        status.unwrap_or_else(|| panic!("the child test ran over {deadline:?}:\n{output}"));
    assert!(
        status.success(),
        "the child test failed ({status}):\n{output}"
    );
    assert!(
        output.contains(&format!("test {child} ... ok")),
        "the child test did not run:\n{output}"
    );
}

/// Panics unless this is the child `run_child` started: a child reconfigures things that
/// only a namespace of its own may have changed.
pub fn in_child(child: &str) {
    assert!(
        std::env::var_os(CHILD_ENV).is_some(),
        "{child} reconfigures the network or mounts: it runs only inside the namespaces its \
         parent test creates"
    );
}

/// Runs `ip ARGS` (iproute2) and asserts success.
pub fn ip(args: &str) {
    let out = Command::new(IP)
        .args(args.split_whitespace())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {IP} (iproute2): {e}"));
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `yaml` in a file that `nobody` can read (a temporary directory is private to its owner),
/// and the directory that holds it.
pub fn config_for_nobody(yaml: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    std::fs::write(&path, yaml).unwrap();
    for p in [dir.path(), path.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    (dir, path)
}

/// Runs the `tollgate` binary with `args` as `nobody` (uid and gid 65534, no groups, through
/// util-linux `setpriv`) in a network namespace of its own, with loopback up and
/// `net.ipv4.ip_unprivileged_port_start` at 1024: there a bind below 1024 is refused for want
/// of `CAP_NET_BIND_SERVICE`, whatever the host's setting. Needs root (to create the
/// namespace and change user); the files named in `args` must be readable by `nobody`. The
/// process is stopped after 20 s, so a bind that wrongly succeeds fails the test, not hangs it.
pub fn run_as_nobody(args: &[&str]) -> std::process::Output {
    let setpriv = Command::new("setpriv").arg("--version").output();
    assert!(
        setpriv.is_ok_and(|o| o.status.success()),
        "this test needs `setpriv` (util-linux) to run tollgate as nobody"
    );
    let script = format!(
        "echo 1024 > /proc/sys/net/ipv4/ip_unprivileged_port_start && {IP} link set lo up && \
         exec timeout -k 5 20 setpriv --reuid=65534 --regid=65534 --clear-groups \"$@\""
    );
    let out = Command::new(UNSHARE)
        .args(["-n", "sh", "-c", &script, "sh", super::binary::bin()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {UNSHARE} (util-linux): {e}"));
    assert_ne!(
        out.status.code(),
        Some(124),
        "tollgate {args:?} ran past 20 s"
    );
    out
}
