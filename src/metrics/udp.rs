//! The samples of a UDP listener: its sessions, refusals, datagrams and bytes each way, and
//! its upstream sockets.
//! A UDP listener has no connections, so the connection families are not written for it.

use std::sync::atomic::Ordering::Relaxed;

use super::{Samples, push};
use crate::state::{Direction, ListenerSpec, UdpRefusal};

pub(super) fn listener(name: &str, spec: &ListenerSpec, out: &mut Samples) {
    let udp = &spec.live.udp;
    let l = [("listener", name)];
    let per_listener = [
        ("tollgate_udp_sessions_active", &udp.sessions_active),
        ("tollgate_udp_sessions_total", &udp.sessions_total),
        (
            "tollgate_udp_upstream_sockets_opened_total",
            &udp.upstream_opened,
        ),
        ("tollgate_udp_upstream_sockets_idle", &udp.upstream_idle),
        ("tollgate_udp_replies_unclaimed_total", &udp.unclaimed),
    ];
    for (family, value) in per_listener {
        push(out, family, &l, value.load(Relaxed) as f64);
    }
    if let Some(ps) = &spec.admission.per_source {
        let n = ps.table.tracked() as f64;
        push(out, "tollgate_listener_sources_tracked", &l, n);
    }
    for why in UdpRefusal::ALL {
        let l = [("listener", name), ("reason", why.label())];
        let n = udp.rejected(why).load(Relaxed) as f64;
        push(out, "tollgate_udp_sessions_rejected_total", &l, n);
    }
    for way in Direction::ALL {
        let l = [("listener", name), ("direction", way.label())];
        push(
            out,
            "tollgate_udp_datagrams_total",
            &l,
            udp.datagrams(way).load(Relaxed) as f64,
        );
        push(
            out,
            "tollgate_udp_bytes_total",
            &l,
            udp.bytes(way).load(Relaxed) as f64,
        );
        push(
            out,
            "tollgate_udp_datagrams_dropped_total",
            &l,
            udp.dropped[way as usize].load(Relaxed) as f64,
        );
    }
}
