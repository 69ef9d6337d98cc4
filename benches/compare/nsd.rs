//! The DNS backend of udp-dns: nsd serving a tiny zone on loopback, and the DNS probe
//! that proves a path answers.
//!
//! Owns the zone and nsd.conf (written into the run's temp dir, every path nsd writes
//! inside it), running nsd in the foreground as a child with one server process, and the
//! hand-built query and answer check the probe uses. Response rate limiting is off: every
//! query of the bench comes from one address, which RRL would otherwise throttle (it does,
//! within a second, with nsd's defaults).

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use crate::Ctx;
use crate::backends::Backend;
use crate::contenders;
use crate::procs::{Proc, free_udp_port};

const READY_TIMEOUT: Duration = Duration::from_secs(15);
const ATTEMPTS: usize = 3;

const ZONE: &str = "$ORIGIN bench.test.\n$TTL 3600\n\
    @    IN SOA ns1.bench.test. hostmaster.bench.test. 1 3600 900 604800 300\n\
    @    IN NS  ns1\n@    IN MX  10 mail\n@    IN TXT \"tollgate compare\"\n\
    ns1  IN A   127.0.0.1\nwww  IN A   192.0.2.1\nwww  IN AAAA 2001:db8::1\n\
    api  IN A   192.0.2.2\nmail IN A   192.0.2.3\n";

/// nsd on a fresh port, one server process, in the foreground; ready once it answers.
pub fn start(ctx: &Ctx) -> Result<Backend> {
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let (dir, port) = (ctx.run_dir("nsd")?, free_udp_port()?);
        let conf = write_nsd_files(&dir, port)?;
        let mut cmd = Command::new("nsd");
        cmd.arg("-d").arg("-c").arg(&conf);
        let mut proc = Proc::spawn("nsd", &mut cmd, &dir.join("nsd.log"))?;
        match proc.wait_udp_bound(port, READY_TIMEOUT) {
            Ok(()) => {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                crate::udp::probe(addr, &query(0x6e73), answers(0x6e73), READY_TIMEOUT)
                    .map_err(|e| proc.failure(format!("{e:#}")))?;
                return Ok(Backend { proc, port });
            }
            Err(e) if contenders::port_clash(&mut proc) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.map_or_else(
        || anyhow!("nsd: not started"),
        |e| e.context(format!("nsd: no free port in {ATTEMPTS} attempts")),
    ))
}

/// The zone and nsd.conf; every path nsd writes is inside `dir`. `username`
/// is empty so nsd keeps the harness's user (it needs none other on a high port); RRL is
/// off because dnsperf is one source address that it would otherwise throttle.
fn write_nsd_files(dir: &Path, port: u16) -> Result<PathBuf> {
    let d = dir.display();
    let conf = format!(
        "server:\n    ip-address: 127.0.0.1\n    port: {port}\n    do-ip6: no\n\
         \x20   server-count: 1\n    username: \"\"\n    chroot: \"\"\n\
         \x20   zonesdir: \"{d}\"\n    database: \"\"\n    zonelistfile: \"{d}/zone.list\"\n\
         \x20   xfrdfile: \"{d}/xfrd.state\"\n    xfrdir: \"{d}\"\n    pidfile: \"{d}/nsd.pid\"\n\
         \x20   verbosity: 1\n    hide-version: yes\n    tcp-count: 16\n\
         \x20   rrl-ratelimit: 0\n    rrl-whitelist-ratelimit: 0\n\
         remote-control:\n    control-enable: no\n\
         zone:\n    name: bench.test\n    zonefile: bench.test.zone\n"
    );
    for (name, text) in [("bench.test.zone", ZONE), ("nsd.conf", conf.as_str())] {
        let path = dir.join(name);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(dir.join("nsd.conf"))
}

/// A DNS query for www.bench.test A with id `id`, recursion desired.
pub fn query(id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(32);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in ["www", "bench", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Accepts a response (QR set) to query `id` with RCODE NOERROR.
pub fn answers(id: u16) -> impl Fn(&[u8]) -> bool {
    move |r: &[u8]| {
        r.len() >= 12 && r[..2] == id.to_be_bytes() && r[2] & 0x80 != 0 && r[3] & 0x0f == 0
    }
}
