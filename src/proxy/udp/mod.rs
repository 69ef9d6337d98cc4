//! The UDP data plane. Today its two foundations: the per-listener session table
//! (`flows.rs`, pure; what a session is in `session.rs`, its idle deadlines in
//! `deadlines.rs`), and a reference model of
//! it (`model.rs`) that the deterministic simulation and the fuzz target drive side by side
//! with the real table. The batched socket calls it will use live in [`crate::sys::udp`].
//!
//! Like the rest of the data plane it never imports `config`, `control` or admin code.

mod deadlines;
pub mod flows;
#[cfg(test)]
mod flows_tests;
#[doc(hidden)]
pub mod model;
pub mod session;

pub use flows::{FlowTable, InsertError, Limits, Lookup, Refusal, Rejected, Reply};
pub use session::{FlowKey, Session, SessionId};
