//! Health: active probes (`probe.rs`), the rise/fall state machine (`state.rs`), and the
//! probing tasks (`checker.rs`) that send their results to the control plane's owner. Never
//! on the data path, and never imports the owner: the data plane sees health as weights in
//! the published snapshot.

pub mod checker;
pub mod probe;
pub mod state;

pub use checker::Report;
pub use state::{CheckOutcome, Checked, HealthState};
