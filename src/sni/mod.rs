//! Routing TLS by the server name its ClientHello asks for, without terminating TLS: the
//! ClientHello is peeked, never consumed, so the backend receives the client's bytes
//! unchanged and the client sees the backend's own certificate. `hello.rs` reads the name
//! (pure, bounded); `routes.rs` maps it to a pool (exact names, `*.` wildcards, default).

mod hello;
mod routes;

pub use hello::{Invalid, MAX_HELLO, MAX_PEEK, Peeked, host_name, server_name};
pub use routes::{Pattern, Routes};

#[cfg(test)]
mod tests;

/// What the fuzz target (`fuzz/fuzz_targets/sni_hello.rs`) and the corpus replay check on
/// any input: no panic; a name is a lowercase host name; the input waits only below
/// [`MAX_PEEK`]; and an answer, once given, does not change with bytes appended.
#[doc(hidden)]
pub fn check(data: &[u8]) -> Result<Peeked, Invalid> {
    let got = server_name(data);
    match &got {
        Ok(Peeked::Done(Some(name))) => {
            assert_eq!(host_name(name.as_bytes()).as_ref(), Ok(name));
        }
        Ok(Peeked::Incomplete) => assert!(data.len() < MAX_PEEK),
        _ => {}
    }
    if !matches!(got, Ok(Peeked::Incomplete) | Err(Invalid::TooLong)) {
        let mut more = data.to_vec();
        more.extend_from_slice(&[22, 3, 3, 0, 1, 1]);
        assert_eq!(server_name(&more), got, "bytes appended");
    }
    got
}
