//! With no `resolver.nameservers`, the nameservers of `/etc/resolv.conf` are asked; when
//! none can be read, the pool is not ready and `/readyz` says why. The checks need a
//! resolv.conf of their own and a DNS server on port 53, so they run in user, mount and
//! network namespaces of their own (`unshare -rmn`): the child bind-mounts a file over
//! `/etc/resolv.conf` and serves DNS on 127.0.0.53:53, touching nothing of the machine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::dns::{DnsServer, answer_or_zero, id_backends_on_one_port, lo};
use common::http::get;
use common::netns::{in_child, ip, run_child};
use common::{start, wait_for};

const CHILD: &str = "in_namespaces_with_a_resolv_conf_of_their_own";

#[test]
fn the_nameservers_of_resolv_conf_are_asked_when_none_are_configured() {
    run_child("-rmn", CHILD, Duration::from_secs(20));
}

/// Makes `/etc/resolv.conf` read `text` in this mount namespace only: a file bind-mounted
/// over it, or, where it does not exist (a dangling symlink), a tmpfs over `/etc` holding it.
fn mount_over_resolv_conf(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    let target = std::path::Path::new("/etc/resolv.conf");
    if !target.exists() {
        mount(&["-t", "tmpfs", "tmpfs", "/etc"]);
    }
    if std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .contains(" /etc tmpfs ")
    {
        std::fs::write(target, text).unwrap();
    } else {
        mount(&["--bind", file.path().to_str().unwrap(), "/etc/resolv.conf"]);
    }
    file
}

fn mount(args: &[&str]) {
    let out = Command::new("/usr/bin/mount").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "mount {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn config(port: u16) -> String {
    format!(
        "workers: 1\nadmin:\n  bind: \"127.0.0.1:0\"\nlisteners:\n  front:\n    bind: \"127.0.0.1:0\"\n    pool: back\npools:\n  back:\n    backends:\n      - {{ host: app.test, port: {port} }}\n"
    )
}

#[test]
#[ignore = "run by the test above inside namespaces of its own"]
fn in_namespaces_with_a_resolv_conf_of_their_own() {
    in_child(CHILD);
    ip("link set lo up");
    let dns = DnsServer::start_on("127.0.0.53:53".parse().unwrap());
    let port = id_backends_on_one_port(&[(lo(7), 1)]);
    dns.set_a("app.test", 30, &[lo(7)]);

    let _conf = mount_over_resolv_conf("# test\nsearch example.org\nnameserver 127.0.0.53\n");
    let server = start(&config(port));
    let front = server.addrs("front")[0];
    wait_for(
        "resolved through resolv.conf",
        Duration::from_secs(10),
        || answer_or_zero(front) == 1,
    );
    assert!(dns.queries("app.test") >= 2, "asked for A and AAAA");
    assert_eq!(
        dns.queries("app.test.example.org"),
        0,
        "names are absolute: no search domain"
    );
    server.shutdown();

    let _empty = mount_over_resolv_conf("# no nameserver at all\n");
    let server = start(&config(port));
    let admin = server.admin_addr().unwrap();
    wait_for(
        "not ready, with the reason",
        Duration::from_secs(10),
        || {
            let r = get(admin, "/readyz");
            r.status == 503 && r.body.contains("DNS cannot run")
        },
    );
    server.shutdown();
}
