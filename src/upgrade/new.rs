//! The new process's side of an upgrade: found through `TOLLGATE_UPGRADE_FD`, it says
//! whether its config loads, takes the sockets and counters, and says when it serves.

use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::warn;

use super::channel::Channel;
use super::wire::{ListenerSocket, Message, Sample, SocketKind};
use super::{ENV_FD, STEP, UpgradeError};
use crate::app::Inherited;
use crate::proxy::listener::{BindKey, Listening};
use crate::state::Transport;

/// The most listening sockets and counter samples taken from the old process: far above
/// any real config, and a bound on what a confused peer can make this process hold.
const MAX_SOCKETS: usize = 65_536;
const MAX_SAMPLES: usize = 1_000_000;

/// The handover socket of a process started by an upgrade.
pub struct Incoming {
    channel: Channel,
}

/// What the old process handed over.
pub struct Received {
    pub sockets: Inherited,
    pub counters: Vec<Sample>,
}

static TAKEN: AtomicBool = AtomicBool::new(false);

/// The handover socket, when this process was started by an upgrade (once; later calls say
/// `None`). An environment that names a descriptor which is not one is an error.
pub fn incoming() -> Result<Option<Incoming>, String> {
    let Some(value) = std::env::var_os(ENV_FD) else {
        return Ok(None);
    };
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(None);
    }
    let fd: RawFd = value
        .to_str()
        .and_then(|v| v.parse().ok())
        .filter(|fd| *fd > 2)
        .ok_or_else(|| format!("{ENV_FD}={value:?} is not a descriptor number"))?;
    let socket = crate::sys::fdpass::adopt_inherited(fd)
        .map_err(|e| format!("{ENV_FD}={fd}: not a handover socket: {e}"))?;
    let channel = Channel::new(socket, STEP).map_err(|e| format!("{ENV_FD}={fd}: {e}"))?;
    Ok(Some(Incoming { channel }))
}

impl Incoming {
    /// Tells the old process this one will not serve (its config is invalid).
    pub fn refuse(&self, reason: &str) {
        let _ = self.channel.send(
            &Message::Refused {
                reason: reason.to_owned(),
            },
            &[],
        );
    }

    /// Says hello and takes everything the old process sends, up to its `Done`.
    pub fn receive(&self) -> Result<Received, UpgradeError> {
        self.channel.send(
            &Message::Hello {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            },
            &[],
        )?;
        failpoint("hello");
        let mut sockets = Inherited::default();
        let mut counters = Vec::new();
        let mut taken = 0;
        loop {
            let (message, fds) = self.channel.recv("the sockets")?;
            match message {
                Message::Listeners { sockets: meta } => {
                    taken += meta.len();
                    if taken > MAX_SOCKETS {
                        return Err(UpgradeError::Protocol(format!(
                            "more than {MAX_SOCKETS} listening sockets"
                        )));
                    }
                    for (socket, fd) in meta.into_iter().zip(fds) {
                        let (key, listening) = adopt(&socket, fd)?;
                        sockets.listeners.entry(key).or_default().push(listening);
                    }
                }
                Message::Admin { addr } => {
                    let fd = fds.into_iter().next().ok_or_else(|| {
                        UpgradeError::Protocol("the admin socket did not come".into())
                    })?;
                    sockets.admin = Some(tcp_listener(fd).map_err(|e| {
                        UpgradeError::Protocol(format!("the admin socket ({addr}): {e}"))
                    })?);
                }
                Message::Counters { samples } => {
                    if counters.len() + samples.len() > MAX_SAMPLES {
                        return Err(UpgradeError::Protocol(format!(
                            "more than {MAX_SAMPLES} counter samples"
                        )));
                    }
                    counters.extend(samples);
                }
                Message::State { state } => {
                    let carried = sockets.control.get_or_insert_with(Default::default);
                    if carried.backends.len() + carried.deny.len() > MAX_SAMPLES {
                        return Err(UpgradeError::Protocol(format!(
                            "more than {MAX_SAMPLES} entries of control state"
                        )));
                    }
                    carried.extend(state);
                }
                Message::Done => {
                    failpoint("sockets");
                    return Ok(Received { sockets, counters });
                }
                Message::Abort { reason } => return Err(UpgradeError::Aborted(reason)),
                other => {
                    return Err(UpgradeError::Protocol(format!(
                        "unexpected {} while taking the sockets",
                        other.name()
                    )));
                }
            }
        }
    }

    /// Tells the old process this one serves everything it was given.
    pub fn ready(&self) -> Result<(), UpgradeError> {
        self.channel.send(
            &Message::Ready {
                pid: std::process::id(),
            },
            &[],
        )
    }

    /// Takes, on a thread of its own, what the old process sends once it has finished its
    /// own connections (what its counters grew by meanwhile), until it closes the socket.
    pub fn follow(self) {
        let spawned = std::thread::Builder::new()
            .name("tollgate-upgrade".into())
            .spawn(move || self.take_last_counts());
        if let Err(e) = spawned {
            warn!(error = %e, "cannot wait for the previous process's last counts");
        }
    }

    fn take_last_counts(self) {
        if let Err(e) = self.channel.unbounded() {
            warn!(error = %e, "cannot wait for the previous process's last counts");
            return;
        }
        loop {
            match self.channel.recv("the last counts") {
                Ok((Message::Counters { samples }, _)) => crate::metrics::carry_over(
                    samples.into_iter().map(|s| (s.name, s.labels, s.value)),
                ),
                Ok((Message::Done, _)) | Err(UpgradeError::Closed(_)) => return,
                Ok((other, _)) => {
                    warn!(
                        message = other.name(),
                        "unexpected from the previous process after the handover"
                    );
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "the previous process's last counts did not come");
                    return;
                }
            }
        }
    }

    /// Tells the old process the upgrade stops here (this process could not start).
    pub fn abort(&self, reason: &str) {
        let _ = self.channel.send(
            &Message::Abort {
                reason: reason.to_owned(),
            },
            &[],
        );
    }
}

/// The environment variable that makes a new process crash at a named step of the
/// handover (`hello`: once it has said hello; `sockets`: once it holds every socket), for
/// the tests that check the old process survives that. Unset in any real use.
pub const FAILPOINT: &str = "TOLLGATE_UPGRADE_FAILPOINT";

fn failpoint(step: &str) {
    if std::env::var_os(FAILPOINT).is_some_and(|v| v == step) {
        eprintln!("tollgate: {FAILPOINT}={step}: crashing here, as asked");
        std::process::abort();
    }
}

/// One listening socket of the old process, checked to be what it says.
fn adopt(socket: &ListenerSocket, fd: OwnedFd) -> Result<(BindKey, Listening), UpgradeError> {
    let bad = |e: std::io::Error| {
        UpgradeError::Protocol(format!(
            "the listening socket for {}: {e}",
            socket.configured
        ))
    };
    let (transport, listening) = match socket.kind {
        SocketKind::Tcp => (
            Transport::Tcp,
            Listening::Tcp(tcp_listener(fd).map_err(bad)?),
        ),
        SocketKind::Udp => {
            let bound = crate::sys::udp::adopt_listener(fd, crate::sys::udp::Offloads::default())
                .map_err(bad)?;
            (Transport::Udp, Listening::Udp(bound))
        }
    };
    let key = BindKey::new(&socket.listener, transport, socket.configured);
    Ok((key, listening))
}

/// A listening TCP socket, checked to be one, made non-blocking.
fn tcp_listener(fd: OwnedFd) -> std::io::Result<std::net::TcpListener> {
    let sock = socket2::Socket::from(fd);
    if sock.r#type()? != socket2::Type::STREAM || !sock.is_listener()? {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a listening TCP socket",
        ));
    }
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}
