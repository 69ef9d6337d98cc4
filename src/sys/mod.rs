//! The only home of `unsafe` in tollgate: thin, documented wrappers over the Linux system
//! calls that std, tokio and socket2 do not expose safely — `splice(2)` and pipes
//! (`pipe.rs`; `pipe_pool.rs` lends them out, safe code), what a socket's send queue holds
//! (`socket.rs`), bytes received but left in place (`peek.rs`), UDP sockets with batched `recvmmsg` / `sendmmsg`, `PKTINFO` addresses and
//! GRO / GSO (`udp.rs`), the open-file limit (`rlimit.rs`), descriptors held in reserve for when it
//! is reached (`reserve.rs`), the process's CPU time (`usage.rs`), and signal masks
//! (`signals.rs`; with `early.rs`, which only the binary compiles), and passing descriptors
//! to another process for a binary upgrade (`fdpass.rs`). `unsafe_code` is denied
//! everywhere else by the crate's lints.
//!
//! Every function here takes and returns owned or borrowed file descriptors (`OwnedFd`,
//! `BorrowedFd`), never raw integers, and every `unsafe` block carries a `SAFETY:` comment.
//! Nothing in this module knows about listeners, backend pools or configuration.

#![allow(unsafe_code)]

pub mod fdpass;
pub mod peek;
pub mod pipe;
pub mod pipe_pool;
pub mod reserve;
pub mod rlimit;
pub mod signals;
pub mod socket;
pub mod udp;
pub mod usage;

pub use pipe::{Pipe, PipeError};
pub use pipe_pool::{PipePool, PipeStats, PooledPipe};
pub use reserve::FdReserve;
pub use rlimit::raise_nofile_limit;
