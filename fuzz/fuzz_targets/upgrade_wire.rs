//! Fuzzes the binary upgrade's message decoder, `tollgate::upgrade::wire::decode`, with
//! `tollgate::upgrade::wire::check_input` (the first byte is the number of descriptors that
//! came with the packet, the rest the packet): no input panics it, nothing is allocated
//! beyond the packet, and whatever it accepts encodes back to a packet that decodes the same.
//!
//! Run from the repository root (`RUSTC_BOOTSTRAP=1` lets the stable toolchain provide the
//! nightly features cargo-fuzz needs):
//!
//! ```sh
//! RUSTC_BOOTSTRAP=1 cargo fuzz run upgrade_wire /tmp/upgrade_wire fuzz/corpus/upgrade_wire
//! ```
//!
//! The seeds in `fuzz/corpus/upgrade_wire/` are replayed by `cargo test`
//! (`tests/fuzz_corpus_wire.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tollgate::upgrade::wire::check_input(data);
});
