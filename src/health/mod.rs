//! Health: active probes (`probe.rs`), the rise/fall state machine (`state.rs`), and the
//! control-plane tasks that run one checker per backend and publish state changes
//! (`checker.rs`), and results applied to the running instance (`apply.rs`). Runs only on the control plane; the data plane sees health as weights in
//! the published snapshot.

mod apply;
pub mod checker;
pub mod probe;
pub mod state;

pub use state::{CheckOutcome, HealthState};
