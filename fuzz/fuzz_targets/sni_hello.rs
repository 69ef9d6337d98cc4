//! Fuzzes the ClientHello reader, `tollgate::sni::server_name`, with
//! `tollgate::sni::check`: no input panics it; a name is a lowercase host name; an input
//! waits only below the peek limit; an answer does not change with bytes appended.
//!
//! Run from the repository root (`RUSTC_BOOTSTRAP=1` lets the stable toolchain provide the
//! nightly features cargo-fuzz needs):
//!
//! ```sh
//! RUSTC_BOOTSTRAP=1 cargo fuzz run sni_hello /tmp/sni_hello fuzz/corpus/sni_hello
//! ```
//!
//! The seeds in `fuzz/corpus/sni_hello/` (real ClientHellos from `openssl s_client` and
//! malformed ones) are replayed by `cargo test` (`tests/fuzz_corpus.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tollgate::sni::check(data);
});
