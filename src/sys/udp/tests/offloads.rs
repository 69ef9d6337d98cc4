//! `UDP_SEGMENT` and `UDP_GRO` over loopback, and the paths without them. Both are the
//! kernel's to grant; where one is missing the fallback is what gets checked (and the test
//! says so on stderr), since the fallback must deliver the same datagrams either way.
#![cfg(test)] // test code only: unwraps here fail a test, never a running tollgate

use super::*;

/// `SO_NO_CHECK` (asm-generic/socket.h): the socket sends without UDP checksums, which the
/// kernel refuses to combine with `UDP_SEGMENT` (`EINVAL`): a refusal on demand.
const SO_NO_CHECK: libc::c_int = 11;

/// `segments` datagrams of `size` bytes and a last one of `last`, back to back.
fn run(segments: usize, size: usize, last: usize) -> Vec<u8> {
    pattern(segments * size + last, segments)
}

fn recv_plain(socket: &UdpSocket, count: usize) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; RECV_SLOT];
    (0..count)
        .map(|_| {
            let n = socket
                .recv(&mut buf)
                .expect("a datagram within the deadline");
            buf[..n].to_vec()
        })
        .collect()
}

fn families() -> Vec<&'static str> {
    let mut out = vec!["127.0.0.1:0"];
    if ipv6() {
        out.push("[::1]:0");
    }
    out
}

/// A run queued with `push_segments` reaches a plain socket as the datagrams it is made of:
/// in one message with `UDP_SEGMENT`, or one per message with it switched off.
#[test]
fn a_segmented_run_arrives_as_separate_datagrams() {
    for addr in families() {
        for gso in [true, false] {
            let receiver = client(addr);
            let want = Offloads { gro: false, gso };
            let up = connect_upstream(receiver.local_addr().unwrap(), want).unwrap();
            if gso && !up.offload.gso() {
                eprintln!("{addr}: no UDP_SEGMENT on this kernel; the fallback is tested");
            }
            let payload = run(10, 1200, 500);
            let mut out = SendBatch::new(4, 0);
            assert!(out.push_segments(&payload, 1200, Route::default()));
            let sent = flush(&up.socket, &mut out, &up.offload);
            assert_eq!(
                sent,
                Sent {
                    datagrams: 11,
                    bytes: payload.len()
                },
                "{addr} gso {gso}"
            );
            let want: Vec<&[u8]> = payload.chunks(1200).collect();
            assert_eq!(recv_plain(&receiver, 11), want, "{addr} gso {gso}");
        }
    }
}

/// A run larger than one `UDP_SEGMENT` message may carry (64 segments, 65 507 bytes) is
/// queued as several and still arrives datagram by datagram, in order.
#[test]
fn a_long_run_is_cut_to_what_one_message_may_carry() {
    let receiver = client("127.0.0.1:0");
    let up = connect_upstream(receiver.local_addr().unwrap(), Offloads::ALL).unwrap();
    let payload = run(100, 100, 0);
    let mut out = SendBatch::new(4, 0);
    assert!(out.push_segments(&payload, 100, Route::default()));
    assert_eq!(out.pending(), 2, "64 segments, then 36");
    let sent = flush(&up.socket, &mut out, &up.offload);
    assert_eq!(sent.datagrams, 100);
    let want: Vec<&[u8]> = payload.chunks(100).collect();
    assert_eq!(recv_plain(&receiver, 100), want);
}

/// When the kernel refuses a segmented send, the socket stops asking for segmentation and
/// the same datagrams go out one per message: nothing is lost, and the next run does not
/// try again.
#[test]
fn a_refused_segment_switches_the_socket_to_one_datagram_per_message() {
    let receiver = client("127.0.0.1:0");
    let up = connect_upstream(receiver.local_addr().unwrap(), Offloads::ALL).unwrap();
    if !up.offload.gso() {
        eprintln!("no UDP_SEGMENT on this kernel: nothing to refuse");
        return;
    }
    super::super::set_int(up.socket.as_fd(), libc::SOL_SOCKET, SO_NO_CHECK, 1).unwrap();
    let payload = run(3, 1000, 10);
    let mut out = SendBatch::new(4, 0);
    assert!(out.push_segments(&payload, 1000, Route::default()));
    let sent = flush(&up.socket, &mut out, &up.offload);
    assert_eq!(sent.datagrams, 4);
    assert!(!up.offload.gso(), "the refusal is remembered");
    let want: Vec<&[u8]> = payload.chunks(1000).collect();
    assert_eq!(recv_plain(&receiver, 4), want);
}

/// A run sent with `UDP_SEGMENT` to a socket with `UDP_GRO` stays whole on loopback; the
/// receive reports its segment size and `segments()` gives back every datagram. Forwarded
/// as it came (`push_segments` with that size), it reaches a plain socket datagram by
/// datagram: what the proxy does with a run from a client.
#[test]
fn a_coalesced_run_splits_back_into_its_datagrams_and_forwards_whole() {
    for addr in families() {
        let l = listener(addr, Offloads::ALL);
        let up = connect_upstream(l.local, Offloads::ALL).unwrap();
        let payload = run(8, 1000, 300);
        let mut out = SendBatch::new(4, 0);
        assert!(out.push_segments(&payload, 1000, Route::default()));
        flush(&up.socket, &mut out, &up.offload);
        let want: Vec<&[u8]> = payload.chunks(1000).collect();

        let mut batch = RecvBatch::new(MAX_BATCH);
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut coalesced = false;
        let onward = client(addr);
        while got.len() < want.len() {
            recv_batch(l.socket.as_fd(), &mut batch).unwrap();
            for d in batch.iter() {
                coalesced |= d.segment.is_some();
                got.extend(d.segments().map(<[u8]>::to_vec));
                let to = Route {
                    dst: Some(onward.local_addr().unwrap()),
                    src: None,
                };
                assert!(out.push_segments(d.payload, d.segment.unwrap_or(0), to));
            }
        }
        assert_eq!(got, want, "{addr}");
        if l.offload.gro() && up.offload.gso() {
            assert!(
                coalesced,
                "{addr}: loopback hands a segmented run to a GRO socket whole"
            );
        } else {
            eprintln!(
                "{addr}: GRO {} GSO {}: runs arrive one by one",
                l.offload.gro(),
                up.offload.gso()
            );
        }
        flush(&l.socket, &mut out, &l.offload);
        assert_eq!(recv_plain(&onward, want.len()), want, "{addr} forwarded");
    }
}

#[test]
fn offloads_can_be_refused_up_front() {
    let l = listener("127.0.0.1:0", Offloads::NONE);
    assert!(!l.offload.gro() && !l.offload.gso());
    let up = connect_upstream(l.local, Offloads::ALL).unwrap();
    up.offload.disable_gso();
    assert!(!up.offload.gso());
    assert!(!OffloadState::none().gso());
}
