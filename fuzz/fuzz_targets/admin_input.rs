//! Fuzzes the parsers of untrusted admin-request input that tollgate implements itself (hyper
//! parses the HTTP): percent-encoded path parameters, CIDR blocks and addresses taken from
//! them, the JSON weight body, and the `Host` and `Origin` authorities the admin API checks
//! (`tollgate::authority`). None may panic; every result must be self-consistent.
//!
//! Run from the repository root: `RUSTC_BOOTSTRAP=1 cargo fuzz run admin_input`. Seeds live in
//! `fuzz/corpus/admin_input/` and are replayed by `cargo test` (`tests/fuzz_corpus.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::admin::input::{parse_weight, percent_decode};
use tollgate::admission::Cidr;
use tollgate::authority::{Authority, parse_origin};

fuzz_target!(|data: &[u8]| {
    if let Ok(w) = parse_weight(data) {
        assert!(w <= 1000, "weight {w} out of range");
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(a) = text.parse::<Authority>() {
        // An authority prints back as itself (lower case, no trailing dot).
        assert_eq!(a.to_string().parse::<Authority>(), Ok(a));
    }
    if let Some(origin) = parse_origin(text) {
        assert!(origin.port.is_some(), "an origin always has its port");
    }
    if let Some(decoded) = percent_decode(text) {
        assert!(decoded.len() <= text.len(), "decoding never grows the input");
        if let Ok(cidr) = decoded.parse::<Cidr>() {
            // A parsed block contains its own network address and prints back as itself.
            assert!(cidr.contains(cidr.network()));
            assert_eq!(cidr.to_string().parse::<Cidr>(), Ok(cidr));
        }
    }
});
