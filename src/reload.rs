//! Reload, all or nothing, in two steps so that nothing slow runs on the control plane's
//! owner. [`prepare`], on whatever thread asked for the reload, reads and validates the new
//! file in full, refuses what a reload cannot change (`workers`, the admin socket), and binds
//! the listening sockets the new file adds (one per worker) — all before anything changes.
//! The owner then applies the [`Prepared`] result in one step (`control/owner.rs`): an
//! address some listener still binds keeps its sockets, whatever that listener is called now
//! (sockets are keyed by address, see `BindKey`), so no queued connection is lost; removed
//! ones stop accepting as soon as they see the new snapshot while their open connections
//! finish. On any error nothing changes and the sockets bound so far close.
//!
//! It never imports the owner: it reads only the facts it is given in [`Running`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use crate::config::{self, Config, ConfigErrors};
use crate::proxy::listener::{self, BindKey, Listening, Transport};

/// Each listening socket group (by [`BindKey`]: a fixed address, or a listener's port-0
/// address) → the address actually bound.
pub type BoundMap = HashMap<BindKey, SocketAddr>;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the new config is invalid:\n{0}")]
    Config(ConfigErrors),
    #[error("this instance was started without a config file, so there is nothing to reload")]
    NoFile,
    #[error(
        "`workers` cannot change by a reload (running {running}, the file asks for {wanted}): restart to apply it"
    )]
    Workers { running: usize, wanted: usize },
    #[error(
        "the admin API cannot move, appear or disappear by a reload (running {running}, the file asks for {wanted}): restart to apply it"
    )]
    Admin { running: String, wanted: String },
    #[error("tollgate is draining for shutdown; reloads are refused")]
    Draining,
    #[error("the control plane has stopped")]
    Stopped,
    #[error("the reload failed unexpectedly: {0}")]
    Failed(String),
    #[error("listener {listener}: {}", crate::privileged_ports::bind_failure(*.addr, .source))]
    Bind {
        listener: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds `addr` once per worker (`SO_REUSEPORT`). A port-0 address is bound by the first and
/// joined by the others, so all share the port the kernel chose. `probe` first refuses an
/// address another process holds; `defer` is the TCP sockets' `TCP_DEFER_ACCEPT` in seconds
/// ([`listener::defer_seconds`]).
pub(crate) fn bind_group(
    transport: Transport,
    addr: SocketAddr,
    workers: usize,
    probe: bool,
    defer: u32,
) -> std::io::Result<(SocketAddr, Vec<Listening>)> {
    if probe {
        listener::ensure_unclaimed(transport, addr)?;
    }
    let mut actual = addr;
    let mut sockets = Vec::with_capacity(workers);
    for _ in 0..workers {
        let sock = listener::bind_any(transport, actual, defer)?;
        actual = sock.local_addr()?;
        sockets.push(sock);
    }
    Ok((actual, sockets))
}

/// A socket group bound by a reload: its key, the listener it is for, its real address and
/// one socket per worker.
#[derive(Debug)]
pub struct FreshGroup {
    pub key: BindKey,
    pub listener: String,
    pub actual: SocketAddr,
    pub sockets: Vec<Listening>,
}

/// A validated config and the sockets it adds, ready for the owner to apply.
#[derive(Debug)]
pub struct Prepared {
    pub config: Config,
    pub fresh: Vec<FreshGroup>,
}

/// What `prepare` must know of the running instance.
#[derive(Debug)]
pub struct Running<'a> {
    pub workers: usize,
    pub admin: Option<SocketAddr>,
    pub bound: &'a BoundMap,
}

/// Reads, validates and binds for a reload of `path`; changes nothing in the running
/// instance. Reloads must be serialised by the caller, so `running.bound` is current.
pub fn prepare(path: &Path, running: &Running<'_>) -> Result<Prepared, ReloadError> {
    let next = config::load(path).map_err(ReloadError::Config)?;
    let wanted = next.workers.resolve();
    if running.workers != wanted {
        return Err(ReloadError::Workers {
            running: running.workers,
            wanted,
        });
    }
    // The admin socket is bound once at start: a reload that moved or removed it would
    // leave the old socket serving under the new (perhaps token-less) rules.
    let label = |a: Option<SocketAddr>| a.map_or("no admin API".to_owned(), |a| a.to_string());
    let next_admin = next.admin.as_ref().map(|a| a.bind);
    if running.admin != next_admin {
        return Err(ReloadError::Admin {
            running: label(running.admin),
            wanted: label(next_admin),
        });
    }
    let fresh = bind_new(&next, running)?;
    Ok(Prepared {
        config: next,
        fresh,
    })
}

/// Binds every address of `next` that has no socket yet. A fixed address bound before keeps
/// its sockets whatever listener serves it now (a rename loses no queued client). All or
/// nothing: on an error the sockets bound so far are closed (dropped).
fn bind_new(next: &Config, running: &Running<'_>) -> Result<Vec<FreshGroup>, ReloadError> {
    let bound = running.bound;
    let mut fresh = Vec::new();
    for l in &next.listeners {
        for addr in &l.bind {
            let key = BindKey::new(&l.name, l.protocol.transport(), *addr);
            if bound.contains_key(&key) {
                continue;
            }
            // An address that overlaps one we already hold (the same port narrowed or
            // widened) would collide with our own probe.
            let transport = l.protocol.transport();
            let ours = bound.keys().any(|k| {
                let a = k.configured();
                k.transport() == transport && (a == *addr || crate::config::overlaps(a, *addr))
            });
            let defer = listener::defer_seconds(l.sni.as_ref().map(|s| s.peek_timeout));
            let (actual, sockets) = bind_group(transport, *addr, running.workers, !ours, defer)
                .map_err(|source| ReloadError::Bind {
                    listener: l.name.clone(),
                    addr: *addr,
                    source,
                })?;
            fresh.push(FreshGroup {
                key,
                listener: l.name.clone(),
                actual,
                sockets,
            });
        }
    }
    Ok(fresh)
}
