//! The new process's side of an upgrade: found through `TOLLGATE_UPGRADE_FD`, it says
//! whether its config loads, takes the sockets and counters, and says when it serves.

use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::warn;

use super::channel::Channel;
use super::room::Room;
use super::wire::{Connection, ListenerSocket, Message, Sample, SocketKind};
use super::{ENV_FD, STEP, UpgradeError};
use crate::app::{Handover, Inherited};
use crate::control::MAX_DEBTS;
use crate::proxy::handoff::Frozen;
use crate::proxy::listener::{BindKey, Listening};
use crate::proxy::udp::handover::{FrozenSession, SessionState};
use crate::state::Transport;
use crate::sys::Pipe;

/// The most listening sockets and counter samples taken from the old process: far above
/// any real config, and a bound on what a confused peer can make this process hold.
const MAX_SOCKETS: usize = 65_536;
const MAX_SAMPLES: usize = 1_000_000;
/// Backends with a state and deny lists carried (each deny block may come on its own).
const MAX_STATE: usize = 1_000_000;

/// The handover socket of a process started by an upgrade.
pub struct Incoming {
    channel: Channel,
    /// The descriptors this process can still take, counted at `Ready`.
    room: Option<Room>,
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
    Ok(Some(Incoming {
        channel,
        room: None,
    }))
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
                    if carried.len() + state.len() > MAX_STATE {
                        return Err(UpgradeError::Protocol(format!(
                            "more than {MAX_STATE} entries of control state"
                        )));
                    }
                    if carried.debts() + state.debts() > MAX_DEBTS {
                        return Err(UpgradeError::Protocol(format!(
                            "more than {MAX_DEBTS} sources' rate debts"
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

    /// Tells the old process this one serves everything it was given, and how many
    /// descriptors it can take.
    pub fn ready(&mut self) -> Result<(), UpgradeError> {
        let mut room = Room::count();
        let free = room.free();
        self.room = Some(room);
        self.channel.send(
            &Message::Ready {
                pid: std::process::id(),
                room: free,
            },
            &[],
        )?;
        failpoint("ready");
        Ok(())
    }

    /// Takes, on a thread of its own, what the old process sends after `Ready`: its
    /// established connections (resumed on this process's workers), then what its counters
    /// grew by, until it closes the socket.
    pub fn follow(self, handover: Handover) {
        TAKING.store(true, Ordering::Release);
        let spawned = std::thread::Builder::new()
            .name("tollgate-upgrade".into())
            .spawn(move || {
                self.take_the_rest(&handover);
                TAKING.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            TAKING.store(false, Ordering::Release);
            warn!(error = %e, "cannot take the previous process's connections and last counts");
        }
    }

    fn take_the_rest(mut self, handover: &Handover) {
        let mut room = self.room.take().unwrap_or_else(Room::count);
        let mut loops_waited = false;
        if let Err(e) = self.channel.unbounded() {
            warn!(error = %e, "cannot take the previous process's connections and last counts");
            return;
        }
        let mut next = 0;
        loop {
            match self.channel.recv("the previous process's connections") {
                Ok((Message::Connections { conns }, fds)) => {
                    failpoint("connections");
                    room.took(fds.len());
                    let refused = adopt_connections(conns, fds, handover, &mut next);
                    if !self.adopted(refused, &mut room) {
                        return;
                    }
                }
                Ok((Message::Sessions { sessions }, fds)) => {
                    room.took(fds.len());
                    if !loops_waited {
                        loops_waited = true;
                        wait_for_udp_loops(&sessions, handover);
                    }
                    let refused = adopt_sessions(sessions, fds, handover);
                    if !self.adopted(refused, &mut room) {
                        return;
                    }
                }
                Ok((Message::Counters { samples }, _)) => {
                    crate::metrics::carry_over(samples.into_iter().map(Into::into));
                }
                Ok((Message::Done, _)) | Err(UpgradeError::Closed(_)) => return,
                Ok((other, _)) => {
                    warn!(
                        message = other.name(),
                        "unexpected from the previous process after the handover"
                    );
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "the previous process stopped handing over before its end; what it still has, it finishes itself");
                    return;
                }
            }
        }
    }

    /// Acknowledges a batch (but for `refused`) with the room left; false when the old
    /// process cannot be told (it finishes what it still has itself).
    fn adopted(&self, refused: Vec<u32>, room: &mut Room) -> bool {
        let answer = Message::Adopted {
            refused,
            room: room.free(),
        };
        match self.channel.send(&answer, &[]) {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, "cannot acknowledge the previous process's batch");
                false
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

/// Resumes handed-over connections on this process's workers (`next` turns over them);
/// returns the positions of those refused: their listener or backend is not in this
/// config, or their descriptors are not what they say.
fn adopt_connections(
    conns: Vec<Connection>,
    fds: Vec<OwnedFd>,
    handover: &Handover,
    next: &mut usize,
) -> Vec<u32> {
    let snapshot = handover.control().snapshot();
    let mut fds = fds.into_iter();
    let mut refused = Vec::new();
    for (i, conn) in conns.into_iter().enumerate() {
        let taken: Vec<OwnedFd> = fds.by_ref().take(conn.fds()).collect();
        let known = snapshot.listener(&conn.state.listener).is_some()
            && crate::proxy::resume::backend_of(&snapshot, &conn.state).is_some();
        let frozen = known.then(|| frozen(conn, taken)).flatten();
        let Some(frozen) = frozen else {
            refused.push(i as u32);
            continue;
        };
        match handover.resume(*next, frozen) {
            Ok(()) => {
                *next += 1;
                handover.control().count_handed_over();
            }
            Err(_) => refused.push(i as u32),
        }
    }
    refused
}

/// The longest the first UDP sessions wait for the loops of their listening sockets.
const UDP_LOOPS_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Waits, once and at most [`UDP_LOOPS_WAIT`], until a loop serves each listening socket
/// the first sessions name: `Ready` comes once the workers are started, and a loop takes
/// sessions from its first turn, which a busy worker may not have had yet. A socket this
/// process does not serve (fewer workers than the old one) only costs the wait once.
fn wait_for_udp_loops(sessions: &[SessionState], handover: &Handover) {
    let adopters = &handover.control().plane().udp_adopters;
    let until = std::time::Instant::now() + UDP_LOOPS_WAIT;
    while std::time::Instant::now() < until && !sessions.iter().all(|s| adopters.serves(s.socket)) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Gives handed-over UDP sessions to the loops serving their listening sockets; returns the
/// positions of those refused: their listener or backend is not in this config, no loop
/// here serves their socket, or their descriptor is not a UDP socket.
fn adopt_sessions(sessions: Vec<SessionState>, fds: Vec<OwnedFd>, handover: &Handover) -> Vec<u32> {
    let snapshot = handover.control().snapshot();
    let plane = handover.control().plane();
    let mut refused = Vec::new();
    for (i, (state, fd)) in sessions.into_iter().zip(fds).enumerate() {
        let known = snapshot.listener(&state.listener).is_some()
            && snapshot
                .pool(&state.pool)
                .is_some_and(|pool| pool.backends.iter().any(|b| b.address == state.backend));
        let sock = socket2::Socket::from(fd);
        let datagram = sock.r#type().is_ok_and(|t| t == socket2::Type::DGRAM);
        if !known || !datagram {
            refused.push(i as u32);
            continue;
        }
        let session = Box::new(FrozenSession {
            upstream: sock.into(),
            state,
        });
        match plane.udp_adopters.give(session) {
            Ok(()) => handover.control().count_sessions_handed_over(),
            Err(_) => refused.push(i as u32),
        }
    }
    refused
}

/// A frozen connection from its state and descriptors (client, backend, then the pipes'
/// ends), each checked to be what it should be.
fn frozen(conn: Connection, fds: Vec<OwnedFd>) -> Option<Box<Frozen>> {
    let mut fds = fds.into_iter();
    let mut socket = || -> Option<std::net::TcpStream> {
        let sock = socket2::Socket::from(fds.next()?);
        (sock.r#type().ok()? == socket2::Type::STREAM).then_some(())?;
        sock.set_nonblocking(true).ok()?;
        Some(sock.into())
    };
    let (client, backend) = (socket()?, socket()?);
    let mut pipe = |wanted: bool| -> Option<Option<Pipe>> {
        if !wanted {
            return Some(None);
        }
        let (read, write) = (fds.next()?, fds.next()?);
        Pipe::from_parts(read, write).ok().map(Some)
    };
    let up = pipe(conn.up_pipe)?;
    let down = pipe(conn.down_pipe)?;
    Some(Box::new(Frozen {
        client,
        backend,
        up,
        down,
        state: conn.state,
        guard: None,
        stays: false,
    }))
}

/// Set while this process takes what the previous one still sends after `Ready`.
static TAKING: AtomicBool = AtomicBool::new(false);

/// Whether the previous process of the upgrade that started this one is still handing
/// over: until it has, this one starts no upgrade of its own. The previous process may yet
/// find this one dead and serve again (the handover has not settled), and two handovers
/// at once would have it and a third process both take this one's place.
pub fn still_taking() -> bool {
    TAKING.load(Ordering::Acquire)
}

/// The environment variable that makes a new process crash at a named step of the
/// handover (`hello`: once it has said hello; `sockets`: once it holds every socket;
/// `ready`: once it has said it serves; `connections`: when the first established
/// connections come), for the tests that check the old process survives that. Unset in
/// any real use.
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
