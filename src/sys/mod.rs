//! The only home of `unsafe` in tollgate: thin, documented wrappers over the Linux system
//! calls that std, tokio and socket2 do not expose safely — `splice(2)` and pipes
//! (`pipe.rs`), and the open-file limit (`rlimit.rs`).
//!
//! Every function here takes and returns owned or borrowed file descriptors (`OwnedFd`,
//! `BorrowedFd`), never raw integers, and every `unsafe` block carries a `SAFETY:` comment.
//! Nothing in this module knows about listeners, pools or configuration.

pub mod pipe;
pub mod rlimit;

pub use pipe::{Pipe, PipePool, PooledPipe};
pub use rlimit::raise_nofile_limit;
