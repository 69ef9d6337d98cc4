//! UDP peers for the tests: an echo backend, a UDP listener's config, a client socket, one
//! request and its reply, and the listener's live counters.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// A UDP backend on 127.0.0.1:0 that answers every datagram with `prefix` and the datagram.
pub fn udp_echo(prefix: &'static [u8]) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        let mut out = Vec::with_capacity(65_600);
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            out.clear();
            out.extend_from_slice(prefix);
            out.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&out, from);
        }
    });
    addr
}

pub fn udp_config(backends: &[SocketAddr], udp: &str, pool_extra: &str) -> String {
    let mut yaml = format!(
        "workers: 2\nshutdown: {{ drain_timeout: 500ms }}\nadmin:\n  bind: \"127.0.0.1:0\"\nlisteners:\n  front:\n    protocol: udp\n    bind: \"127.0.0.1:0\"\n    pool: back\n    udp: {{ {udp} }}\npools:\n  back:\n{pool_extra}    backends:\n"
    );
    for b in backends {
        yaml.push_str(&format!("      - address: \"{b}\"\n"));
    }
    yaml
}

pub fn client(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind(format!("{ip}:0")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Sends `payload` to `to` and returns the reply and where it came from.
pub fn exchange(s: &UdpSocket, to: SocketAddr, payload: &[u8]) -> (Vec<u8>, SocketAddr) {
    s.send_to(payload, to).unwrap();
    let mut buf = vec![0u8; 65_600];
    let (n, from) = s.recv_from(&mut buf).unwrap();
    buf.truncate(n);
    (buf, from)
}

pub fn udp_live(server: &tollgate::app::Server) -> std::sync::Arc<tollgate::state::ListenerSpec> {
    server.snapshot().listener("front").unwrap().clone()
}
