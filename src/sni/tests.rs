//! The ClientHello reader against real ClientHellos (`openssl s_client`, TLS 1.3 and 1.2,
//! with and without SNI, kept in the fuzz corpus), each split at every byte and over
//! several records, and against hand-built malformed ones.
#![cfg(test)] // test code only: unwraps here fail a test, never a running tollgate

use super::*;

const TLS13: &[u8] = include_bytes!("../../fuzz/corpus/sni_hello/openssl_tls13_api.example.com");
const TLS12: &[u8] = include_bytes!("../../fuzz/corpus/sni_hello/openssl_tls12_www.example.org");
const NO_SNI: &[u8] = include_bytes!("../../fuzz/corpus/sni_hello/openssl_no_sni");

fn name(buf: &[u8]) -> Option<String> {
    match server_name(buf) {
        Ok(Peeked::Done(name)) => name,
        other => panic!("{other:?}"),
    }
}

/// The handshake message of a one-record capture, split into records of `size` bytes.
fn resplit(capture: &[u8], size: usize) -> Vec<u8> {
    let len = usize::from(u16::from_be_bytes([capture[3], capture[4]]));
    let message = &capture[5..5 + len];
    let mut out = Vec::new();
    for chunk in message.chunks(size) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&u16::try_from(chunk.len()).unwrap().to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// A ClientHello record carrying `extensions` (each `(type, data)`).
fn hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
    body.extend_from_slice(&[1, 0]); // null compression
    let mut ext = Vec::new();
    for (kind, data) in extensions {
        ext.extend_from_slice(&kind.to_be_bytes());
        ext.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
        ext.extend_from_slice(data);
    }
    body.extend_from_slice(&u16::try_from(ext.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&ext);
    let mut msg = vec![1, 0];
    msg.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    msg.extend_from_slice(&body);
    let mut rec = vec![22, 3, 1];
    rec.extend_from_slice(&u16::try_from(msg.len()).unwrap().to_be_bytes());
    rec.extend_from_slice(&msg);
    rec
}

fn sni(names: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (kind, n) in names {
        list.push(*kind);
        list.extend_from_slice(&u16::try_from(n.len()).unwrap().to_be_bytes());
        list.extend_from_slice(n);
    }
    let mut data = u16::try_from(list.len()).unwrap().to_be_bytes().to_vec();
    data.extend_from_slice(&list);
    data
}

#[test]
fn real_client_hellos_name_their_server() {
    assert_eq!(name(TLS13).as_deref(), Some("api.example.com"));
    assert_eq!(name(TLS12).as_deref(), Some("www.example.org"));
    assert_eq!(name(NO_SNI), None);
    // What follows the ClientHello does not matter.
    let mut more = TLS13.to_vec();
    more.extend_from_slice(b"\x17\x03\x03\x00\x05hello");
    assert_eq!(name(&more).as_deref(), Some("api.example.com"));
}

#[test]
fn every_split_waits_for_the_rest() {
    for capture in [TLS13, TLS12, NO_SNI] {
        for cut in 0..capture.len() {
            assert_eq!(
                server_name(&capture[..cut]),
                Ok(Peeked::Incomplete),
                "cut {cut}"
            );
        }
    }
    // The same ClientHello spread over records of 1, 7 and 100 bytes.
    for size in [1, 7, 100] {
        let split = resplit(TLS13, size);
        assert_eq!(
            name(&split).as_deref(),
            Some("api.example.com"),
            "{size}-byte records"
        );
        for cut in [1, 5, 6, split.len() / 2, split.len() - 1] {
            assert_eq!(server_name(&split[..cut]), Ok(Peeked::Incomplete));
        }
    }
}

#[test]
fn names_are_lowercased_and_checked() {
    let upper = hello(&[(0, sni(&[(0, b"API.Example.COM")]))]);
    assert_eq!(name(&upper).as_deref(), Some("api.example.com"));
    // Another name type is skipped; no host name at all is no SNI.
    let other = hello(&[(0, sni(&[(1, b"x"), (0, b"a.io")]))]);
    assert_eq!(name(&other).as_deref(), Some("a.io"));
    assert_eq!(name(&hello(&[(0, sni(&[(7, b"a.io")]))])), None);
    assert_eq!(name(&hello(&[(0x2b, vec![2, 3, 4])])), None);
    for bad in [
        &b"a.io."[..],
        b"a..io",
        b"a io",
        b"\xc3\xa9.fr",
        b"",
        b"-\0",
    ] {
        let h = hello(&[(0, sni(&[(0, bad)]))]);
        assert_eq!(server_name(&h), Err(Invalid::BadName), "{bad:?}");
    }
}

#[test]
fn malformed_and_foreign_input_is_refused() {
    let good = hello(&[(0, sni(&[(0, b"a.io")]))]);
    let mut cases: Vec<(Vec<u8>, Invalid)> = vec![
        (b"GET / HTTP/1.1\r\n".to_vec(), Invalid::NotTls),
        (b"G".to_vec(), Invalid::NotTls),
        (vec![0x80, 0x2e, 0x01, 0x03, 0x01], Invalid::NotTls), // SSLv2-style hello
        (vec![22, 3, 1, 0, 0], Invalid::NotTls),               // empty record
        (vec![22, 3, 1, 0x40, 0x01], Invalid::NotTls),         // record over 16 KiB
        (vec![21, 3, 3, 0, 2, 2, 40], Invalid::NotTls),        // an alert
        (
            hello(&[(0, sni(&[(0, b"a.io")])), (0, sni(&[(0, b"b.io")]))]),
            Invalid::Malformed("two server_name extensions"),
        ),
        (
            hello(&[(0, sni(&[(0, b"a.io"), (0, b"b.io")]))]),
            Invalid::Malformed("two host names"),
        ),
        (
            hello(&[(0, vec![0, 0])]),
            Invalid::Malformed("server name list"),
        ),
    ];
    // Not a ClientHello: a ServerHello's type.
    let mut server_hello = good.clone();
    server_hello[5] = 2;
    cases.push((server_hello, Invalid::NotClientHello));
    // A ClientHello claiming more than the limit.
    let mut huge = good.clone();
    huge[6..9].copy_from_slice(&[0x01, 0x00, 0x00]);
    cases.push((huge, Invalid::TooLong));
    // An extension length past its container.
    let mut past = good.clone();
    let at = past.len() - 2 - 2 - 1 - 4 - 2; // the server_name extension's length field
    past[at] = 0xff;
    cases.push((past, Invalid::Malformed("extension")));
    // A second record that is not a handshake record, mid-ClientHello.
    let mut split = resplit(&good, 10);
    split[15] = 23;
    cases.push((split, Invalid::BadRecord));
    for (buf, want) in cases {
        assert_eq!(server_name(&buf), Err(want), "{buf:?}");
    }
}

/// A ClientHello near the limit passes in one record; spread over one-byte records it would
/// take six times the bytes, and is refused once MAX_PEEK bytes have not carried it.
#[test]
fn a_large_client_hello_passes_and_its_peek_is_bounded() {
    let padded = hello(&[(21, vec![0; 16_000]), (0, sni(&[(0, b"big.example")]))]);
    assert_eq!(name(&padded).as_deref(), Some("big.example"));
    let spread = resplit(&padded, 1);
    assert!(spread.len() > MAX_PEEK);
    assert_eq!(server_name(&spread[..MAX_PEEK - 1]), Ok(Peeked::Incomplete));
    assert_eq!(server_name(&spread[..MAX_PEEK]), Err(Invalid::TooLong));
}
