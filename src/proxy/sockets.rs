//! Which listening sockets the workers serve right now, and pausing them: what a binary
//! upgrade needs from the data plane to hand its listeners over (`crate::upgrade`).
//!
//! Each accept loop and UDP listener enters a duplicate of its socket here for as long as
//! it serves it (a reload that adds or removes listeners keeps the set current with no
//! further bookkeeping). While [`Listening::pause`] is on, they take nothing from their
//! sockets, which stay open: clients queue in the kernel for whichever process takes them
//! next, and none is lost.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;
use tracing::warn;

use super::bind::BindKey;

/// The listening sockets in service, and the pause switch.
#[derive(Debug)]
pub struct Listening {
    next: AtomicU64,
    /// `None`: the socket could not be duplicated (the open-file limit); an upgrade is then
    /// refused while it serves, rather than leaving it behind.
    entries: Mutex<Vec<(u64, BindKey, Option<OwnedFd>)>>,
    paused: watch::Sender<bool>,
}

impl Default for Listening {
    fn default() -> Self {
        Listening {
            next: AtomicU64::new(0),
            entries: Mutex::default(),
            paused: watch::channel(false).0,
        }
    }
}

/// Held by whoever serves a socket; dropping it takes the socket out of the set.
#[derive(Debug)]
pub struct Entered {
    set: Arc<Listening>,
    id: u64,
}

impl Listening {
    /// Enters a duplicate of `socket`, serving `key`, until the returned guard drops.
    pub fn enter(self: &Arc<Self>, key: &BindKey, socket: impl AsFd) -> Entered {
        let copy = match socket.as_fd().try_clone_to_owned() {
            Ok(copy) => Some(copy),
            Err(e) => {
                warn!(addr = %key.configured(), error = %e, "cannot duplicate a listening socket; binary upgrades are refused while it serves");
                None
            }
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().push((id, key.clone(), copy));
        Entered {
            set: self.clone(),
            id,
        }
    }

    /// A duplicate of every socket in service, with its key.
    pub fn duplicates(&self) -> io::Result<Vec<(BindKey, OwnedFd)>> {
        self.lock()
            .iter()
            .map(|(_, key, fd)| match fd {
                Some(fd) => Ok((key.clone(), fd.try_clone()?)),
                None => Err(io::Error::other(format!(
                    "the listening socket of {} could not be duplicated when it was bound (open-file limit)",
                    key.configured()
                ))),
            })
            .collect()
    }

    /// Sockets in service now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops (true) or resumes (false) taking clients and datagrams from every socket.
    pub fn pause(&self, on: bool) {
        self.paused.send_replace(on);
    }

    /// Follows the pause switch.
    pub fn paused(&self) -> watch::Receiver<bool> {
        self.paused.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, BindKey, Option<OwnedFd>)>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Resolves once the pause switch reads `on`. (A function, not a bare `wait_for` in a
/// `select!` branch, whose pattern would hold the receiver's read guard through the
/// handler.)
pub async fn until(paused: &mut watch::Receiver<bool>, on: bool) {
    let _ = paused.wait_for(|p| *p == on).await;
}

impl Drop for Entered {
    fn drop(&mut self) {
        self.set.lock().retain(|(id, _, _)| *id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Transport;

    #[test]
    fn a_socket_is_in_the_set_while_entered() {
        let set = Arc::new(Listening::default());
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let key = BindKey::new("web", Transport::Tcp, sock.local_addr().unwrap());
        let entered = set.enter(&key, &sock);
        let dups = set.duplicates().unwrap();
        assert_eq!(dups.len(), 1);
        assert_eq!(dups[0].0, key);
        drop(entered);
        assert!(set.is_empty());
        let mut paused = set.paused();
        set.pause(true);
        assert!(*paused.borrow_and_update());
    }
}
