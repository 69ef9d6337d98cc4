//! TLS pieces for the SNI tests: a minimal ClientHello naming a server (enough for the
//! ClientHello reader, not for a handshake), and certificates made with `openssl`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A TLS 1.2-style ClientHello record asking for `name` (none: no server_name extension).
pub fn client_hello(name: Option<&str>) -> Vec<u8> {
    client_hello_padded(name, 0)
}

/// [`client_hello`] with a `padding` extension (RFC 7685) of `padding` zero bytes after the
/// name, as browsers add to reach a size: a ClientHello as long as wanted, in one record.
pub fn client_hello_padded(name: Option<&str>, padding: usize) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
    let mut ext = Vec::new();
    if let Some(name) = name {
        let n = name.as_bytes();
        let list_len = 3 + n.len();
        ext.extend_from_slice(&[0, 0]);
        ext.extend_from_slice(&u16::try_from(list_len + 2).unwrap().to_be_bytes());
        ext.extend_from_slice(&u16::try_from(list_len).unwrap().to_be_bytes());
        ext.push(0);
        ext.extend_from_slice(&u16::try_from(n.len()).unwrap().to_be_bytes());
        ext.extend_from_slice(n);
    }
    if padding > 0 {
        ext.extend_from_slice(&[0, 21]);
        ext.extend_from_slice(&u16::try_from(padding).unwrap().to_be_bytes());
        ext.resize(ext.len() + padding, 0);
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

/// A self-signed certificate and key for `cn` in `dir` (`openssl`, which `.ci/run` installs).
pub fn self_signed(dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{cn}.crt"));
    let key = dir.join(format!("{cn}.key"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj"])
        .arg(format!("/CN={cn}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is installed (.ci/run installs it)");
    assert!(status.success(), "openssl req failed");
    (cert, key)
}
