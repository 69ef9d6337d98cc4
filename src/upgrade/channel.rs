//! One end of the handover socket: whole messages with their descriptors, each send and
//! receive bounded in time, every packet checked by `wire.rs` before it is believed.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use super::UpgradeError;
use super::wire::{self, Message};
use crate::sys::fdpass;

pub struct Channel {
    socket: OwnedFd,
}

impl Channel {
    /// `socket`: this side's end; every later send and receive waits at most `timeout`.
    pub fn new(socket: OwnedFd, timeout: Duration) -> io::Result<Channel> {
        fdpass::set_timeouts(socket.as_fd(), Some(timeout))?;
        Ok(Channel { socket })
    }

    /// From now on, receives wait for as long as the peer takes (it is serving meanwhile).
    pub fn unbounded(&self) -> io::Result<()> {
        fdpass::set_timeouts(self.socket.as_fd(), None)
    }

    pub fn send(&self, message: &Message, fds: &[BorrowedFd<'_>]) -> Result<(), UpgradeError> {
        debug_assert_eq!(message.fds(), fds.len());
        let packet = wire::encode(message).map_err(|e| UpgradeError::Protocol(e.to_string()))?;
        fdpass::send(self.socket.as_fd(), &packet, fds).map_err(|e| UpgradeError::Io {
            step: message.name(),
            source: e,
        })
    }

    /// The next message and its descriptors. `step` names what was awaited, for errors.
    pub fn recv(&self, step: &'static str) -> Result<(Message, Vec<OwnedFd>), UpgradeError> {
        let mut buf = vec![0u8; wire::MAX_MESSAGE];
        let (n, fds) = fdpass::recv(self.socket.as_fd(), &mut buf)
            .map_err(|source| UpgradeError::Io { step, source })?;
        if n == 0 && fds.is_empty() {
            return Err(UpgradeError::Closed(step));
        }
        let message = wire::decode(&buf[..n], fds.len()).map_err(UpgradeError::Wire)?;
        Ok((message, fds))
    }
}
