//! Bearer-token checks for mutating admin calls, compared in constant time so response timing
//! does not reveal how much of a guess was right.

use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;

/// True when no token is configured, or the request carries `Authorization: Bearer <token>`.
pub(crate) fn authorized(headers: &HeaderMap, token: Option<&str>) -> bool {
    let Some(token) = token else { return true };
    let Some(given) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    // The scheme name is case-insensitive (RFC 7235); the token is not.
    let Some((scheme, given)) = given.split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

/// Compares without an early exit; only the length can be learnt, which a token's secrecy
/// does not rest on.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn with(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn only_the_right_bearer_token_passes() {
        assert!(authorized(&HeaderMap::new(), None));
        assert!(!authorized(&HeaderMap::new(), Some("s3cret")));
        assert!(authorized(&with("Bearer s3cret"), Some("s3cret")));
        assert!(!authorized(&with("Bearer s3cre"), Some("s3cret")));
        assert!(!authorized(&with("Bearer s3cretX"), Some("s3cret")));
        assert!(!authorized(&with("Basic s3cret"), Some("s3cret")));
        assert!(authorized(&with("bearer s3cret"), Some("s3cret")));
        assert!(!authorized(&with("Bearers3cret"), Some("s3cret")));
    }
}
