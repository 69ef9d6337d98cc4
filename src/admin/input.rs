//! Parsers of the untrusted bits of admin requests that tollgate reads itself (hyper parses
//! the HTTP): percent-encoded path parameters and the weight body. Pure functions, fuzzed
//! by `fuzz/fuzz_targets/admin_input.rs`.

use serde_json::Value;

/// Decodes `%XX` escapes; `None` for a malformed escape or a non-UTF-8 result.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The body of `PUT .../weight`: `{"weight": N}` with N from 0 to 1000.
pub fn parse_weight(body: &[u8]) -> Result<u32, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    match value.get("weight").and_then(Value::as_u64) {
        Some(w) if w <= 1000 => u32::try_from(w).map_err(|_| "weight out of range".to_owned()),
        _ => Err("the body must be {\"weight\": N} with N from 0 to 1000".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("127.0.0.1%3A9001").as_deref(),
            Some("127.0.0.1:9001")
        );
        assert_eq!(
            percent_decode("%5B%3A%3A1%5D%3A80").as_deref(),
            Some("[::1]:80")
        );
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(
            percent_decode("%+1"),
            None,
            "from_str_radix would accept a sign"
        );
        assert_eq!(percent_decode("%ff"), None, "not UTF-8");
    }

    #[test]
    fn weights() {
        assert_eq!(parse_weight(br#"{"weight": 7}"#), Ok(7));
        assert_eq!(parse_weight(br#"{"weight": 0}"#), Ok(0));
        assert!(parse_weight(br#"{"weight": 1001}"#).is_err());
        assert!(parse_weight(br#"{"weight": -1}"#).is_err());
        assert!(parse_weight(br#"{"weight": 1.5}"#).is_err());
        assert!(parse_weight(b"[]").is_err());
        assert!(parse_weight(b"\xff").is_err());
    }
}
