//! Fuzzes the UDP session table, `tollgate::proxy::udp::FlowTable`, against its reference
//! model: the bytes decode into events (datagrams from a few clients to a few local
//! addresses, replies, time steps, backends going down and up, removals, limit changes,
//! reload retains, inserts without a lookup), and `tollgate::proxy::udp::model::check` runs
//! them through the table and the model side by side, panicking at the first disagreement
//! (sessions, backends, handles, expiries, refusals at the cap, a deadline heap past its
//! bound). The encoding is documented in `src/proxy/udp/model.rs`.
//!
//! Run from the repository root (`RUSTC_BOOTSTRAP=1` lets the stable toolchain provide the
//! nightly features cargo-fuzz needs):
//!
//! ```sh
//! RUSTC_BOOTSTRAP=1 cargo fuzz run udp_flows /tmp/udp_flows fuzz/corpus/udp_flows
//! ```
//!
//! The seeds in `fuzz/corpus/udp_flows/` are replayed by `cargo test` (`tests/fuzz_corpus.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tollgate::proxy::udp::model::check(data);
});
