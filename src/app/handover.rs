//! What a binary upgrade takes from a running server (`crate::upgrade`), for the thread
//! that carries it out.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::control::Handle;
use crate::proxy::handoff::Frozen;
use crate::proxy::listener::BindKey;

/// What a binary upgrade takes from a running server (`crate::upgrade::old`): its listening
/// sockets and admin socket (duplicates), the switch that pauses accepting, and its counters.
#[derive(Clone)]
pub struct Handover {
    pub(super) control: Handle,
    pub(super) admin: Option<(SocketAddr, Arc<OwnedFd>)>,
    pub(super) adopters: Vec<mpsc::UnboundedSender<Box<Frozen>>>,
}

impl Handover {
    pub fn control(&self) -> &Handle {
        &self.control
    }

    /// A duplicate of every listening socket in service, with the key it serves. Fails when
    /// one could not be duplicated.
    pub fn listening_sockets(&self) -> std::io::Result<Vec<(BindKey, OwnedFd)>> {
        self.control.plane().listening.duplicates()
    }

    /// A duplicate of the admin socket, when there is an admin API.
    pub fn admin_socket(&self) -> Option<std::io::Result<(SocketAddr, OwnedFd)>> {
        let (addr, fd) = self.admin.as_ref()?;
        Some(fd.try_clone().map(|fd| (*addr, fd)))
    }

    /// Stops (true) or resumes (false) accepting on every listening socket; they stay open.
    pub fn pause_accepting(&self, on: bool) {
        self.control.plane().listening.pause(on);
    }

    /// Gives a frozen connection to a worker to resume: worker `n % workers`, or the next
    /// one still running (a draining worker with nothing left has stopped); back when none
    /// is.
    pub fn resume(&self, n: usize, mut frozen: Box<Frozen>) -> Result<(), Box<Frozen>> {
        let count = self.adopters.len();
        for k in 0..count {
            match self.adopters[(n + k) % count].send(frozen) {
                Ok(()) => return Ok(()),
                Err(back) => frozen = back.0,
            }
        }
        Err(frozen)
    }
}
