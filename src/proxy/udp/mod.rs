//! The UDP data plane: one worker's loop per listening socket (`serve.rs`: batched receive,
//! admission, backend pick, expiry; each session's datagrams of a receive sent in one call in
//! `outbound.rs`), each session's upstream side (`upstream.rs`), the
//! upstream sockets and their reply tasks (`link.rs`), the sockets kept between sessions for
//! reuse (`reuse.rs`, pure), and under them the per-listener session table (`flows.rs`, pure; what a
//! session is in `session.rs`, its idle deadlines in `deadlines.rs`), with a reference model
//! of it (`model.rs`) that the deterministic simulation and the fuzz target drive side by
//! side with the real table. Sessions handed to a new binary are `handover.rs`'s. The
//! batched socket calls live in [`crate::sys::udp`].
//!
//! Like the rest of the data plane it never imports `config`, `control` or admin code.

mod deadlines;
pub mod flows;
#[cfg(test)]
mod flows_tests;
pub mod handover;
mod link;
#[doc(hidden)]
pub mod model;
mod outbound;
mod reuse;
mod serve;
pub mod session;
mod upstream;

pub use flows::{FlowTable, InsertError, Limits, Lookup, Refusal, Rejected, Reply};
pub use serve::serve;
pub use session::{FlowKey, Session, SessionId};
