//! Fuzzes the PROXY protocol decoder, `tollgate::proxy_protocol::decode`, with
//! `tollgate::proxy_protocol::check`: no input panics it; a header is never longer than
//! its input or the limit; the header alone decodes the same and one byte less waits; what
//! it says, encoded again, decodes back the same; an input waits only while it could fit.
//!
//! Run from the repository root (`RUSTC_BOOTSTRAP=1` lets the stable toolchain provide the
//! nightly features cargo-fuzz needs):
//!
//! ```sh
//! RUSTC_BOOTSTRAP=1 cargo fuzz run proxy_header /tmp/proxy_header fuzz/corpus/proxy_header
//! ```
//!
//! The seeds in `fuzz/corpus/proxy_header/` (among them the cases of the Envoy,
//! go-proxyproto and sozu advisories) are replayed by `cargo test` (`tests/fuzz_corpus.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tollgate::proxy_protocol::check(data);
});
