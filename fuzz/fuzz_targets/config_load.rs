//! Fuzzes the config loader, `tollgate::config::load_str`: YAML parsing with serde-saphyr
//! under its budgets (alias bombs, deep nesting, node floods), then validation of every
//! section of the schema. For any input it must return, quickly and without panicking, either
//! a `Config` or `ConfigErrors` whose every entry reads `LABEL:LINE:COLUMN: ...` (or
//! `LABEL: ...` for a problem of the whole file).
//!
//! Run from the repository root (cargo-fuzz needs nightly features; `RUSTC_BOOTSTRAP=1` lets
//! the stable toolchain provide them):
//!
//! ```sh
//! cargo install cargo-fuzz --locked
//! RUSTC_BOOTSTRAP=1 cargo fuzz run config_load
//! RUSTC_BOOTSTRAP=1 cargo fuzz run config_load -- -max_total_time=120 -timeout=10
//! ```
//!
//! The seeds live in `fuzz/corpus/config_load/` and are replayed by the ordinary `cargo test`
//! (`tests/fuzz_corpus.rs`). libFuzzer writes the new inputs it finds into the first corpus
//! directory it is given; to keep the committed seeds curated, give it a scratch directory
//! first: `RUSTC_BOOTSTRAP=1 cargo fuzz run config_load /tmp/config_load fuzz/corpus/config_load`.
//! A crash is saved under `fuzz/artifacts/config_load/`; replay it with
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run config_load fuzz/artifacts/config_load/crash-...`.
//!
//! Under AddressSanitizer (the default) inputs that run into the YAML budgets, such as the
//! `bad_merge_bomb.yaml` seed, take a second or more each; hence `-timeout=10`, not less. The
//! loader is safe Rust, so `cargo fuzz run -s none config_load` (no sanitizer) is a much faster
//! way to hunt panics and slow inputs.

#![no_main]

use libfuzzer_sys::fuzz_target;

const LABEL: &str = "fuzz.yaml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = tollgate::config::load_str(text, LABEL) {
        // Exercise Display, and hold it to the format operators and editors rely on.
        let shown = errors.to_string();
        assert!(!shown.is_empty(), "an Err with no message");
        for e in errors.iter() {
            // A problem of the whole file has no place: `LABEL: message`.
            let prefix = match e.line {
                0 => format!("{LABEL}: "),
                line => format!("{LABEL}:{line}:{}: ", e.column),
            };
            assert!(
                e.to_string().starts_with(&prefix),
                "an error without its place: {e}"
            );
        }
        std::hint::black_box(shown);
    }
});
