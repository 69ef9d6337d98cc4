//! A backend that reads the PROXY header tollgate sends, with tollgate's own decoder.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};

use tollgate::proxy_protocol::{self, Decoded};

/// A backend that reads one PROXY header with tollgate's own decoder, answers
/// `VERSION SOURCE DESTINATION\n`, then echoes what follows the header.
pub fn header_echo(bind: &str) -> SocketAddr {
    let listener = TcpListener::bind(bind).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (header, len) = loop {
                    match proxy_protocol::decode(&buf) {
                        Ok(Decoded::Done { header, len }) => break (header, len),
                        Ok(Decoded::Incomplete) => {}
                        Err(e) => {
                            let _ = s.write_all(format!("invalid {e}\n").as_bytes());
                            return;
                        }
                    }
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let tlvs = if header.tlvs.is_empty() {
                    String::new()
                } else {
                    format!(" tlvs={}", header.tlvs.len())
                };
                let said = match header.addresses {
                    Some(a) => format!(
                        "{:?} {} {}{tlvs}\n",
                        header.version, a.source, a.destination
                    ),
                    None => format!("{:?} local{tlvs}\n", header.version),
                };
                let _ = s.write_all(said.as_bytes());
                if s.write_all(&buf[len..]).is_ok() {
                    super::echo(&mut s);
                }
            });
        }
    });
    addr
}
