//! The UDP layer over loopback: which address a client sent to, which address a reply leaves
//! from, sizes from 0 to 65 507 bytes through both batched calls, runs sent with and without
//! `UDP_SEGMENT` (and with it refused), runs received with `UDP_GRO` and split again.
//!
//! Receiving sockets are switched to blocking with a read timeout, so a test waits for a
//! datagram with a deadline instead of sleeping; 127.0.0.0/8 is all on `lo`, so 127.0.0.2
//! and 127.0.0.3 are local addresses without any set-up.
#![cfg(test)] // test code only: unwraps here fail a test, never a running tollgate

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::Duration;

use socket2::SockRef;

use super::*;

const WAIT: Duration = Duration::from_secs(5);

fn blocking(socket: &UdpSocket) {
    socket.set_nonblocking(false).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
}

fn listener(addr: &str, want: Offloads) -> Bound {
    let bound = bind_listener(addr.parse().unwrap(), want).unwrap();
    blocking(&bound.socket);
    bound
}

fn client(addr: &str) -> UdpSocket {
    let socket = UdpSocket::bind(addr).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    socket
}

/// Whether this host has IPv6 loopback (some CI containers do not).
fn ipv6() -> bool {
    UdpSocket::bind("[::1]:0").is_ok()
}

fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + seed * 7 + len) as u8).collect()
}

/// What a receive reported about a datagram, besides its bytes.
#[derive(Debug, Clone, Copy)]
struct Seen {
    source: Option<SocketAddr>,
    local: Option<IpAddr>,
    segment: Option<usize>,
}

impl Seen {
    fn local_or(&self, bound: SocketAddr) -> SocketAddr {
        SocketAddr::new(self.local.unwrap_or(bound.ip()), bound.port())
    }
}

/// Every datagram received until `count` have arrived, runs split into their segments, with
/// what each receive reported, and how many `recvmmsg` calls that took.
fn receive(socket: &UdpSocket, count: usize) -> (Vec<(Vec<u8>, Seen)>, usize) {
    let mut batch = RecvBatch::new(MAX_BATCH);
    let mut out = Vec::new();
    let mut calls = 0;
    while out.len() < count {
        recv_batch(socket.as_fd(), &mut batch).expect("datagrams within the deadline");
        calls += 1;
        for d in batch.iter() {
            assert!(!d.truncated);
            let seen = Seen {
                source: d.source,
                local: d.local,
                segment: d.segment,
            };
            out.extend(d.segments().map(|s| (s.to_vec(), seen)));
        }
    }
    (out, calls)
}

fn flush(socket: &UdpSocket, batch: &mut SendBatch, offload: &OffloadState) -> Sent {
    let sent = send_batch(socket.as_fd(), batch, offload).unwrap();
    assert!(batch.is_empty(), "loopback takes everything at once");
    sent
}

#[test]
fn pktinfo_reports_the_address_a_client_sent_to() {
    let l = listener("0.0.0.0:0", Offloads::NONE);
    assert!(l.pktinfo);
    let c = client("127.0.0.1:0");
    for to in ["127.0.0.2", "127.0.0.3", "127.0.0.2"] {
        c.send_to(to.as_bytes(), (to, l.local.port())).unwrap();
    }
    let (got, _) = receive(&l.socket, 3);
    let locals: Vec<_> = got.iter().map(|(_, d)| d.local_or(l.local)).collect();
    let want: Vec<SocketAddr> = ["127.0.0.2", "127.0.0.3", "127.0.0.2"]
        .iter()
        .map(|ip| SocketAddr::new(ip.parse().unwrap(), l.local.port()))
        .collect();
    assert_eq!(locals, want);
    for (payload, d) in &got {
        assert_eq!(d.source, Some(c.local_addr().unwrap()));
        assert_eq!(payload.as_slice(), d.local.unwrap().to_string().as_bytes());
    }
}

#[test]
fn a_bound_address_needs_no_pktinfo() {
    let l = listener("127.0.0.2:0", Offloads::NONE);
    assert!(!l.pktinfo);
    client("127.0.0.1:0").send_to(b"x", l.local).unwrap();
    let (got, _) = receive(&l.socket, 1);
    assert_eq!(got[0].1.local, None);
    assert_eq!(got[0].1.local_or(l.local), l.local);
}

#[test]
fn pktinfo_on_an_ipv6_wildcard_and_it_is_v6_only() {
    if !ipv6() {
        return;
    }
    let l = listener("[::]:0", Offloads::NONE);
    assert!(SockRef::from(&l.socket).only_v6().unwrap());
    // The IPv4 wildcard on the same port is a separate socket.
    let v4 = bind_listener(
        SocketAddr::new("0.0.0.0".parse().unwrap(), l.local.port()),
        Offloads::NONE,
    );
    assert!(v4.is_ok(), "{v4:?}");
    let c = client("[::1]:0");
    c.send_to(b"six", ("::1", l.local.port())).unwrap();
    let (got, _) = receive(&l.socket, 1);
    assert_eq!(got[0].1.local, Some("::1".parse().unwrap()));
    assert_eq!(got[0].1.source, Some(c.local_addr().unwrap()));
}

/// The client sends to one of the host's addresses; the reply, sent with that address as its
/// source, arrives from it (and not from whatever the kernel would have picked).
#[test]
fn a_reply_leaves_from_the_address_the_client_sent_to() {
    let mut cases = vec![
        ("0.0.0.0:0", "127.0.0.1:0", "127.0.0.3"),
        ("0.0.0.0:0", "127.0.0.1:0", "127.0.0.2"),
    ];
    if ipv6() {
        cases.push(("[::]:0", "[::1]:0", "::1"));
    }
    for (bind, from, to) in cases {
        let l = listener(bind, Offloads::ALL);
        let c = client(from);
        c.send_to(b"ping", (to, l.local.port())).unwrap();
        let (got, _) = receive(&l.socket, 1);
        let (payload, d) = &got[0];
        assert_eq!(payload, b"ping");
        let mut batch = SendBatch::new(4, 0);
        let route = Route {
            dst: d.source,
            src: d.local,
        };
        assert!(batch.push(b"pong", route));
        flush(&l.socket, &mut batch, &l.offload);
        let mut buf = [0u8; 128];
        let (n, replier) = c.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"pong");
        let want = SocketAddr::new(to.parse().unwrap(), l.local.port());
        assert_eq!(replier, want, "{bind} via {to}");
        // A run to the same client, cut by the kernel (UDP_SEGMENT with the PKTINFO source
        // where the kernel has it), leaves from there too.
        let run = pattern(3 * 100 + 7, 3);
        assert!(batch.push_segments(&run, 100, route));
        assert_eq!(flush(&l.socket, &mut batch, &l.offload).datagrams, 4);
        for chunk in run.chunks(100) {
            let (n, replier) = c.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], replier), (chunk, want), "{bind} via {to}");
        }
    }
}

#[test]
fn workers_share_a_port_through_so_reuseport() {
    let first = bind_listener("127.0.0.1:0".parse().unwrap(), Offloads::NONE).unwrap();
    let second = bind_listener(first.local, Offloads::NONE);
    assert_eq!(second.map(|b| b.local).ok(), Some(first.local));
}

/// Every size, byte-exact, through sendmmsg and recvmmsg: on a connected upstream socket (no
/// destination per message) one way, on the listener (destination and source) the other.
#[test]
fn every_size_passes_byte_exact_both_ways() {
    let mut families = vec![("0.0.0.0:0", "127.0.0.1", vec![0, 1, 1472, 8192, 65_507])];
    if ipv6() {
        families.push(("[::]:0", "::1", vec![0, 1, 1232, 8192, 65_507, 65_527]));
    }
    for (bind, ip, sizes) in families {
        let l = listener(bind, Offloads::ALL);
        let to = SocketAddr::new(ip.parse().unwrap(), l.local.port());
        let up = connect_upstream(to, Offloads::ALL).unwrap();
        blocking(&up.socket);
        let mut out = SendBatch::new(8, 0);
        // One at a time, so the receive buffer never holds two of the largest.
        for (seed, &len) in sizes.iter().enumerate() {
            let payload = pattern(len, seed);
            assert!(out.push(&payload, Route::default()));
            let sent = flush(&up.socket, &mut out, &up.offload);
            assert_eq!(
                sent,
                Sent {
                    datagrams: 1,
                    bytes: len
                }
            );
            let (got, _) = receive(&l.socket, 1);
            assert_eq!(got.len(), 1, "{ip}: {len} bytes");
            assert!(got[0].0 == payload, "{ip}: {len} bytes differ");
            assert_eq!(got[0].1.source, Some(up.local));
            assert_eq!(got[0].1.segment, None, "a lone datagram is no run");

            let route = Route {
                dst: got[0].1.source,
                src: got[0].1.local,
            };
            assert!(out.push(&payload, route));
            flush(&l.socket, &mut out, &l.offload);
            let (back, _) = receive(&up.socket, 1);
            assert!(
                back.len() == 1 && back[0].0 == payload,
                "{ip}: {len} bytes back"
            );
            assert_eq!(back[0].1.source, Some(to));
        }
    }
}

#[test]
fn a_batch_moves_many_datagrams_per_call() {
    let l = listener("127.0.0.1:0", Offloads::NONE);
    let up = connect_upstream(l.local, Offloads::NONE).unwrap();
    let mut out = SendBatch::new(MAX_BATCH, 0);
    for i in 0..MAX_BATCH {
        assert!(out.push(&pattern(100 + i, i), Route::default()));
    }
    // Longer than the last one, so it cannot join its run.
    assert!(!out.push(&pattern(200, 0), Route::default()));
    let sent = flush(&up.socket, &mut out, &up.offload);
    assert_eq!(sent.datagrams, MAX_BATCH);
    let (got, calls) = receive(&l.socket, MAX_BATCH);
    assert!(
        calls < MAX_BATCH / 2,
        "{calls} recvmmsg calls for {MAX_BATCH} datagrams"
    );
    for (i, (payload, _)) in got.iter().enumerate() {
        assert_eq!(*payload, pattern(100 + i, i));
    }
}

/// Consecutive datagrams to one place, none longer than the first, join one run (one
/// `UDP_SEGMENT` message where the socket may segment); a longer one, a new destination or
/// a run's short last datagram starts the next entry. The receiver sees every datagram,
/// in order and byte-exact, whether the socket segments or not.
#[test]
fn datagrams_to_one_place_join_one_run() {
    for want in [Offloads::ALL, Offloads::NONE] {
        let a = listener("127.0.0.1:0", Offloads::NONE);
        let b = listener("127.0.0.1:0", Offloads::NONE);
        let sender = bind_listener("127.0.0.1:0".parse().unwrap(), want).unwrap();
        let to = |l: &Bound| Route {
            dst: Some(l.local),
            src: None,
        };
        let mut out = SendBatch::new(MAX_BATCH, 0);
        let to_a: Vec<Vec<u8>> = [120, 120, 120, 120, 50, 120, 0, 0]
            .iter()
            .enumerate()
            .map(|(i, &n)| pattern(n, i))
            .collect();
        for payload in &to_a[..6] {
            assert!(out.push(payload, to(&a)));
        }
        // 4 × 120 and the short 50 are one run; the 120 after it starts another.
        assert_eq!(out.pending(), 2);
        assert!(out.push(&pattern(120, 9), to(&b)));
        assert_eq!(out.pending(), 3);
        // Empty datagrams never join a run: each is its own message.
        assert!(out.push(&to_a[6], to(&a)));
        assert!(out.push(&to_a[7], to(&a)));
        assert_eq!(out.pending(), 5);
        let sent = flush(&sender.socket, &mut out, &sender.offload);
        assert_eq!(sent.datagrams, 9);
        assert_eq!(sent.bytes, 5 * 120 + 50 + 120);
        let (got, _) = receive(&a.socket, 8);
        let got: Vec<Vec<u8>> = got.into_iter().map(|(p, _)| p).collect();
        assert_eq!(got, to_a);
        let (got, _) = receive(&b.socket, 1);
        assert_eq!(got[0].0, pattern(120, 9));
    }
}

/// A datagram the kernel refuses (port 0 is EINVAL) is reported once and dropped; the ones
/// around it go.
#[test]
fn a_refused_datagram_does_not_hold_the_others_back() {
    let l = listener("127.0.0.1:0", Offloads::NONE);
    let sender = bind_listener("127.0.0.1:0".parse().unwrap(), Offloads::NONE).unwrap();
    let mut out = SendBatch::new(4, 0);
    let to = |dst| Route {
        dst: Some(dst),
        src: None,
    };
    assert!(out.push(b"a", to(l.local)));
    assert!(out.push(b"bad", to("127.0.0.1:0".parse().unwrap())));
    assert!(out.push(b"b", to(l.local)));
    let fd = sender.socket.as_fd();
    let first = send_batch(fd, &mut out, &sender.offload).unwrap();
    assert_eq!(first.datagrams, 1);
    let refused = send_batch(fd, &mut out, &sender.offload).unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::EINVAL), "{refused}");
    assert_eq!(
        send_batch(fd, &mut out, &sender.offload).unwrap().datagrams,
        1
    );
    assert!(out.is_empty());
    let (got, _) = receive(&l.socket, 2);
    let payloads: Vec<&[u8]> = got.iter().map(|(p, _)| p.as_slice()).collect();
    assert_eq!(payloads, [b"a".as_slice(), b"b".as_slice()]);
}

mod offloads;
