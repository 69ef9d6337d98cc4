//! The samples of a UDP listener: its sessions, refusals, and datagrams and bytes each way.
//! A UDP listener has no connections, so the connection families are not written for it.

use std::sync::atomic::Ordering::Relaxed;

use super::{Samples, push};
use crate::state::{Direction, ListenerSpec, UdpRefusal};

pub(super) fn listener(name: &str, spec: &ListenerSpec, out: &mut Samples) {
    let udp = &spec.live.udp;
    let l = [("listener", name)];
    push(
        out,
        "tollgate_udp_sessions_active",
        &l,
        udp.sessions_active.load(Relaxed) as f64,
    );
    push(
        out,
        "tollgate_udp_sessions_total",
        &l,
        udp.sessions_total.load(Relaxed) as f64,
    );
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
