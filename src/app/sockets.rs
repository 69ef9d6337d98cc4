//! The listening sockets a server starts with: bound here, one per worker and address, or
//! taken over from the process that upgraded to this one ([`Inherited`], which also brings
//! that process's control state), so that clients queued on them are served instead of
//! refused.

use std::collections::HashMap;
use std::net::SocketAddr;

use anyhow::Result;
use tracing::info;

use crate::config::Config;
use crate::proxy::listener::{self, BindKey, BoundSocket, Listening};
use crate::reload::{BoundMap, bind_group};

/// Sockets handed over by a binary upgrade (`crate::upgrade`).
#[derive(Debug, Default)]
pub struct Inherited {
    /// Every listening socket of the old process, by the key it served (one per old worker).
    pub listeners: HashMap<BindKey, Vec<Listening>>,
    /// The old process's admin API socket.
    pub admin: Option<std::net::TcpListener>,
    /// The old process's overrides, health and runtime deny lists.
    pub control: Option<crate::control::Carried>,
}

impl Inherited {
    /// The inherited admin socket when it is bound where the config wants the admin API
    /// (port 0: any port); otherwise it is closed and `None`.
    pub(super) fn take_admin(
        &mut self,
        wanted: Option<SocketAddr>,
    ) -> Option<std::net::TcpListener> {
        let sock = self.admin.take()?;
        let have = sock.local_addr().ok()?;
        let wanted = wanted?;
        let same = have.ip() == wanted.ip() && (wanted.port() == 0 || wanted.port() == have.port());
        same.then_some(sock)
    }
}

pub(super) type WorkerSockets = Vec<BoundSocket>;

/// Binds each (listener, address) once per worker, or takes its sockets from `inherited`.
/// An inherited group keeps every one of its sockets (each holds its own queue of clients):
/// with fewer workers than sockets some workers serve two, with more the group is joined by
/// new ones. Inherited sockets the config no longer names are closed.
pub(super) fn bind_all(
    config: &Config,
    workers: usize,
    mut inherited: Inherited,
) -> Result<(BoundMap, Vec<WorkerSockets>)> {
    let mut bound = BoundMap::new();
    let mut sockets: Vec<WorkerSockets> = (0..workers).map(|_| Vec::new()).collect();
    for l in &config.listeners {
        for want in &l.bind {
            let defer = listener::defer_seconds(l.sni.as_ref().map(|s| s.peek_timeout));
            let transport = l.protocol.transport();
            let key = BindKey::new(&l.name, transport, *want);
            let fail = |e: std::io::Error| {
                let why = crate::privileged_ports::bind_failure(*want, &e);
                anyhow::anyhow!("listener {}: {why}", l.name)
            };
            let (actual, group) = match inherited.listeners.remove(&key) {
                Some(mut group) if !group.is_empty() => {
                    let actual = group[0].local_addr().map_err(fail)?;
                    while group.len() < workers {
                        group.push(listener::bind_any(transport, actual, defer).map_err(fail)?);
                    }
                    info!(listener = %l.name, addr = %actual, sockets = group.len(), "listener taken over from the previous process");
                    (actual, group)
                }
                _ => bind_group(transport, *want, workers, true, defer).map_err(fail)?,
            };
            for (i, socket) in group.into_iter().enumerate() {
                sockets[i % workers].push(BoundSocket {
                    key: key.clone(),
                    socket,
                });
            }
            bound.insert(key, actual);
        }
    }
    for key in inherited.listeners.keys() {
        info!(addr = %key.configured(), "the previous process's listener is not in the config; its socket closes");
    }
    Ok((bound, sockets))
}

/// Warns when the caps the operator wrote cannot fit the open-file limit. Caps the file left
/// unset were sized to fit it (`defaults::max_connections`), so they never warn; one info
/// line says what they were sized to.
pub(super) fn warn_if_caps_exceed(config: &Config, fd_soft: u64) {
    // UDP listeners hold sessions (one descriptor each, sized apart), not connections.
    let (sized, written): (Vec<_>, Vec<_>) = config
        .listeners
        .iter()
        .filter(|l| !l.protocol.is_udp())
        .partition(|l| l.max_connections_sized);
    if let Some(first) = sized.first() {
        let names: Vec<&str> = sized.iter().map(|l| l.name.as_str()).collect();
        info!(
            fd_limit = fd_soft,
            max_connections = first.max_connections,
            listeners = names.join(","),
            "limits.max_connections not set: sized to fit the open-file limit"
        );
    }
    let total: u64 = written.iter().map(|l| l.max_connections as u64).sum();
    // Each proxied connection holds two sockets, and up to two pipes while moving data.
    if total.saturating_mul(2) > fd_soft {
        tracing::warn!(
            fd_limit = fd_soft,
            max_connections_total = total,
            "the open-file limit cannot fit the listeners' max_connections as written; accepts will pause when it runs out (raise LimitNOFILE, or lower the caps)"
        );
    }
}
