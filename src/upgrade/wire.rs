//! The handover's messages and their framing. Each message is one `SOCK_SEQPACKET` packet:
//! a 12-byte header (the magic `TGUP`, the protocol version, the number of descriptors
//! attached, the payload's length) and a JSON payload of at most [`MAX_PAYLOAD`] bytes.
//!
//! The peer is another tollgate started by this one over an inherited socket, but its bytes
//! are still checked as untrusted: a different protocol version is refused by name (the
//! older process keeps serving), every length is bounded before anything is allocated, and
//! a message must bring exactly the descriptors it says it carries. `fuzz/fuzz_targets/`
//! `upgrade_wire.rs` fuzzes [`decode`].

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::control::Carried;
use crate::metrics::CounterSample;
use crate::proxy::handoff::ConnectionState;
use crate::proxy::udp::handover::SessionState;

/// The protocol this build speaks. A peer with another version is refused.
pub const PROTOCOL: u16 = 1;
const MAGIC: [u8; 4] = *b"TGUP";
pub const HEADER: usize = 12;
/// The largest payload: far below a Unix socket's send buffer, so a packet never waits
/// for room it cannot get.
pub const MAX_PAYLOAD: usize = 60 * 1024;
/// The largest packet, header included: the receive buffer's size.
pub const MAX_MESSAGE: usize = HEADER + MAX_PAYLOAD;
/// Descriptors sent in one message at most (the kernel allows 253).
pub const MAX_FDS: u16 = 200;

/// Which of the two transports a listening socket serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketKind {
    Tcp,
    Udp,
}

/// One listening socket (its descriptor travels with the message, in the same order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSocket {
    /// The listener a port-0 address belongs to; empty for a fixed address, which is one
    /// socket whatever listener serves it (`BindKey`).
    pub listener: String,
    pub kind: SocketKind,
    /// The address as configured (port 0 as written).
    pub configured: SocketAddr,
}

/// One counter sample of the old process (`/metrics` name and labels), which the new one
/// adds to its own so that counters continue instead of restarting from zero.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// One frozen connection: its state, and which directions bring a pipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    pub state: ConnectionState,
    pub up_pipe: bool,
    pub down_pipe: bool,
}

impl Connection {
    /// The descriptors it brings: two sockets, and two per pipe.
    pub fn fds(&self) -> usize {
        2 + 2 * usize::from(self.up_pipe) + 2 * usize::from(self.down_pipe)
    }
}

impl From<CounterSample> for Sample {
    fn from((name, labels, value): CounterSample) -> Sample {
        Sample {
            name,
            labels,
            value,
        }
    }
}

impl From<Sample> for CounterSample {
    fn from(s: Sample) -> CounterSample {
        (s.name, s.labels, s.value)
    }
}

/// Everything said on the handover socket, in the order it is said: `Hello` (or
/// `Refused`) from the new process; then from the old, which has stopped accepting,
/// `Listeners`, `Counters` and `State` (any number of each), `Admin` (when it has an admin
/// API) and `Done`; `Ready` from the new once it serves. Then, from the old, `Connections`
/// and `Sessions` (each answered by `Adopted`) as its established connections and UDP
/// sessions freeze, and once it has none
/// left what its counters grew by (`Counters`) and `Done`. `Abort` may come from either
/// before `Ready`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    /// New → old: the config is valid; send the sockets.
    Hello { pid: u32, version: String },
    /// New → old: this process will not serve (its config is invalid); it exits.
    Refused { reason: String },
    /// Old → new: listening sockets, one descriptor each.
    Listeners { sockets: Vec<ListenerSocket> },
    /// Old → new: the admin API's listening socket (one descriptor).
    Admin { addr: SocketAddr },
    /// Old → new: counter samples (as many messages as they need).
    Counters { samples: Vec<Sample> },
    /// Old → new: overrides, health and runtime deny lists (as many messages as they need).
    State { state: Carried },
    /// Old → new, after `Ready`: established connections, frozen. Each brings its client
    /// and backend sockets, then a pipe (read end, write end) for each direction that holds
    /// bytes, in that order.
    Connections { conns: Vec<Connection> },
    /// Old → new, after `Ready`: UDP sessions, each bringing its connected upstream socket.
    Sessions { sessions: Vec<SessionState> },
    /// New → old: the last `Connections` or `Sessions` is taken, but for those at these positions (their
    /// listener or backend is not in the new config): the old process keeps them. `room`:
    /// the descriptors the new process can still take (see `Ready`).
    Adopted { refused: Vec<u32>, room: u32 },
    /// Old → new: everything has been sent.
    Done,
    /// New → old: serving on every socket. `room`: the descriptors it can still take under
    /// its open-file limit, some kept for new clients; the old process sends no batch that
    /// does not fit, and keeps what does not.
    Ready { pid: u32, room: u32 },
    /// Either way: the upgrade stops here, and why.
    Abort { reason: String },
}

impl Message {
    /// The descriptors that must come with this message.
    pub fn fds(&self) -> usize {
        match self {
            Message::Listeners { sockets } => sockets.len(),
            Message::Connections { conns } => conns.iter().map(Connection::fds).sum(),
            Message::Sessions { sessions } => sessions.len(),
            Message::Admin { .. } => 1,
            _ => 0,
        }
    }

    /// Its name in errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Refused { .. } => "refused",
            Message::Listeners { .. } => "listeners",
            Message::Admin { .. } => "admin",
            Message::Counters { .. } => "counters",
            Message::State { .. } => "state",
            Message::Connections { .. } => "connections",
            Message::Sessions { .. } => "sessions",
            Message::Adopted { .. } => "adopted",
            Message::Done => "done",
            Message::Ready { .. } => "ready",
            Message::Abort { .. } => "abort",
        }
    }
}

/// Why a packet is not a message this build accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("a {0}-byte packet is shorter than the {HEADER}-byte header")]
    Short(usize),
    #[error("not a tollgate handover message (no TGUP magic)")]
    Magic,
    #[error(
        "the other tollgate speaks handover protocol {theirs}, this one {PROTOCOL}: they cannot hand over to each other"
    )]
    Version { theirs: u16 },
    #[error("the header says {said} payload bytes, the packet holds {held}")]
    Length { said: usize, held: usize },
    #[error("a payload of {0} bytes is over the limit of {MAX_PAYLOAD}")]
    TooLong(usize),
    #[error("{said} descriptors announced, {came} came with the message, {wanted} expected")]
    Fds {
        said: usize,
        came: usize,
        wanted: usize,
    },
    #[error("malformed payload: {0}")]
    Payload(String),
}

/// The packet that carries `message` (its descriptors are sent beside it).
pub fn encode(message: &Message) -> Result<Vec<u8>, WireError> {
    let payload = serde_json::to_vec(message).map_err(|e| WireError::Payload(e.to_string()))?;
    if payload.len() > MAX_PAYLOAD {
        return Err(WireError::TooLong(payload.len()));
    }
    let fds = u16::try_from(message.fds()).map_err(|_| WireError::Fds {
        said: message.fds(),
        came: 0,
        wanted: usize::from(MAX_FDS),
    })?;
    let mut packet = Vec::with_capacity(HEADER + payload.len());
    packet.extend_from_slice(&MAGIC);
    packet.extend_from_slice(&PROTOCOL.to_le_bytes());
    packet.extend_from_slice(&fds.to_le_bytes());
    packet.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    packet.extend_from_slice(&payload);
    Ok(packet)
}

/// The message in `packet`, which came with `fds` descriptors.
pub fn decode(packet: &[u8], fds: usize) -> Result<Message, WireError> {
    let header: &[u8; HEADER] = packet
        .get(..HEADER)
        .and_then(|h| h.try_into().ok())
        .ok_or(WireError::Short(packet.len()))?;
    if header[..4] != MAGIC {
        return Err(WireError::Magic);
    }
    let version = u16::from_le_bytes([header[4], header[5]]);
    if version != PROTOCOL {
        return Err(WireError::Version { theirs: version });
    }
    let said_fds = usize::from(u16::from_le_bytes([header[6], header[7]]));
    let said = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
    if said > MAX_PAYLOAD {
        return Err(WireError::TooLong(said));
    }
    let payload = &packet[HEADER..];
    if said != payload.len() {
        return Err(WireError::Length {
            said,
            held: payload.len(),
        });
    }
    if said_fds != fds {
        return Err(WireError::Fds {
            said: said_fds,
            came: fds,
            wanted: said_fds,
        });
    }
    let message: Message =
        serde_json::from_slice(payload).map_err(|e| WireError::Payload(e.to_string()))?;
    if message.fds() != fds {
        return Err(WireError::Fds {
            said: said_fds,
            came: fds,
            wanted: message.fds(),
        });
    }
    Ok(message)
}

/// The fuzz target's input: the number of descriptors that came (one byte), then the packet.
pub fn check_input(data: &[u8]) -> Result<Message, WireError> {
    match data.split_first() {
        Some((&fds, packet)) => check(packet, usize::from(fds)),
        None => check(&[], 0),
    }
}

/// The fuzz target's check: `decode` never panics, and whatever it accepts encodes back to
/// a packet that decodes to the same message.
pub fn check(packet: &[u8], fds: usize) -> Result<Message, WireError> {
    let decoded = decode(packet, fds)?;
    let again = encode(&decoded).and_then(|p| decode(&p, decoded.fds()));
    assert_eq!(
        again.as_ref(),
        Ok(&decoded),
        "a decoded message must round-trip"
    );
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        Message::Listeners {
            sockets: vec![ListenerSocket {
                listener: "web".into(),
                kind: SocketKind::Tcp,
                configured: "127.0.0.1:0".parse().unwrap(),
            }],
        }
    }

    #[test]
    fn messages_round_trip_and_bad_packets_are_named() {
        let packet = encode(&sample()).unwrap();
        assert_eq!(decode(&packet, 1), Ok(sample()));
        assert!(matches!(decode(&packet, 0), Err(WireError::Fds { .. })));
        assert_eq!(decode(&packet[..5], 1), Err(WireError::Short(5)));
        let mut other = packet.clone();
        other[4] = 9;
        assert_eq!(decode(&other, 1), Err(WireError::Version { theirs: 9 }));
        let mut magic = packet.clone();
        magic[0] = b'X';
        assert_eq!(decode(&magic, 1), Err(WireError::Magic));
        let cut = &packet[..packet.len() - 1];
        assert!(matches!(decode(cut, 1), Err(WireError::Length { .. })));
        let mut huge = packet[..HEADER].to_vec();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&huge, 1), Err(WireError::TooLong(u32::MAX as usize)));
        // The header and the payload disagree about the descriptors.
        let mut lying = encode(&Message::Ready { pid: 1, room: 0 }).unwrap();
        lying[6] = 1;
        assert!(matches!(
            decode(&lying, 1),
            Err(WireError::Fds { wanted: 0, .. })
        ));
        let long = Message::Abort {
            reason: "x".repeat(MAX_PAYLOAD),
        };
        assert!(matches!(encode(&long), Err(WireError::TooLong(_))));
    }
}
