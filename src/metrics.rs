//! Every metric tollgate exports (DESIGN.md §3.5): names, help texts and label sets live in
//! this one file. Values are read from the data plane's atomics at scrape time by a custom
//! collector in an explicit `prometheus::Registry` (with the process collector beside it),
//! so nothing on the data path takes a lock or sends a message per connection. Labels are
//! bounded: listener, pool, backend (`IP:PORT` from the config), side (client or backend),
//! reason, result — never a client address. A backend or listener that leaves the config leaves the output with it.
//! The `process_*` families come from `process.rs`, the connect-duration histogram's
//! buckets from `histogram.rs`.

mod histogram;
mod process;
mod udp;

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, Registry, TextEncoder};

use crate::control::{Handle, View};
use crate::state::{ConnectFailure, Failure, Side};
use crate::sys::pipe_pool::{Fallback, Refusal};

/// (name, help, labels, type) of every tollgate metric.
const FAMILIES: &[(&str, &str, &[&str], MetricType)] = &[
    (
        "tollgate_build_info",
        "Build information; always 1. rustc: the compiler's version; commit: the git commit built from (unknown outside a git checkout).",
        &["version", "rustc", "commit"],
        MetricType::GAUGE,
    ),
    (
        "tollgate_config_generation",
        "Generation of the running config: 1 at start, +1 per successful reload.",
        &[],
        MetricType::GAUGE,
    ),
    (
        "tollgate_config_reloads_total",
        "Config reloads by result (success, failure).",
        &["result"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_config_last_reload_successful",
        "1 when the last reload was applied (or, before any reload, start-up loaded the config); 0 when it was refused and an older config stays in force.",
        &[],
        MetricType::GAUGE,
    ),
    (
        "tollgate_config_last_reload_success_timestamp_seconds",
        "Unix time the config in force was loaded: start-up, or the last successful reload.",
        &[],
        MetricType::GAUGE,
    ),
    (
        "tollgate_listener_connections_accepted_total",
        "Connections accepted.",
        &["listener"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_listener_connections_rejected_total",
        "Connections closed without being proxied, by reason.",
        &["listener", "reason"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_listener_connections_aborted_total",
        "Proxied connections ended by a failure of one leg, by the leg that failed (side: client, backend) and how (reason: reset by the peer, or error: any other I/O failure). Both legs were reset, not closed, so neither peer mistakes the cut for a complete transfer.",
        &["listener", "side", "reason"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_listener_sources_tracked",
        "Source groups the per-source limiter tracks now (bounded by max_tracked_sources).",
        &["listener"],
        MetricType::GAUGE,
    ),
    (
        "tollgate_dns_resolutions_total",
        "DNS resolution rounds of host/srv backends by result (success, nxdomain, empty, timeout, servfail, refused, error).",
        &["pool", "result"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_dns_answer_age_seconds",
        "Seconds since the oldest DNS answer a pool's backends come from was received; grows while lookups fail and the last answer stays in force.",
        &["pool"],
        MetricType::GAUGE,
    ),
    (
        "tollgate_listener_connections_active",
        "Connections open now.",
        &["listener"],
        MetricType::GAUGE,
    ),
    (
        "tollgate_udp_sessions_active",
        "UDP sessions (flows) open now on the listener, across workers; udp.max_sessions bounds it.",
        &["listener"],
        MetricType::GAUGE,
    ),
    (
        "tollgate_udp_sessions_total",
        "UDP sessions made on the listener since start.",
        &["listener"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_udp_sessions_rejected_total",
        "Client datagrams that would have started a UDP session and were dropped instead, by reason (acl, rate_limit, source_limit, source_table_full, max_sessions, no_backend, local_error).",
        &["listener", "reason"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_udp_datagrams_total",
        "UDP datagrams forwarded, by direction (to_backend: from clients; to_client: replies).",
        &["listener", "direction"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_udp_bytes_total",
        "UDP payload bytes forwarded, by direction (to_backend, to_client).",
        &["listener", "direction"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_udp_datagrams_dropped_total",
        "UDP datagrams of open sessions dropped because a socket would not take them (a full send buffer, or the backend's port answered unreachable), by direction.",
        &["listener", "direction"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_udp_upstream_sockets_opened_total",
        "Sockets opened to backends for UDP sessions. With udp.responses set, a socket whose session had every reply it was owed serves the next session to that backend, so this stays below tollgate_udp_sessions_total.",
        &["listener"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_udp_upstream_sockets_idle",
        "Upstream sockets kept open between UDP sessions for reuse (udp.responses), across workers; one descriptor each, closed after 1 to 2 s unused.",
        &["listener"],
        MetricType::GAUGE,
    ),
    (
        "tollgate_udp_replies_unclaimed_total",
        "Datagrams from backends that no open UDP session was waiting for (more than udp.responses per client datagram, or after the session ended), dropped.",
        &["listener"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_listener_connections_limit",
        "The listener's cap on open connections (limits.max_connections).",
        &["listener"],
        MetricType::GAUGE,
    ),
    (
        "tollgate_listener_full_seconds_total",
        "Seconds the listener spent at its cap: every slot taken and an accepted client waiting for one, so nothing more was accepted and new clients queued in the kernel. Grows while it lasts.",
        &["listener"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_listener_accept_errors_total",
        "Failed accept() calls (EMFILE and the like).",
        &["listener"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_backend_up",
        "1 when the health checks say the backend is up, whatever its tier, weight or operator override; 0 while they say down, or before the first check of a checked pool has answered. In a pool without an active check, 1 unless passive checks took it down.",
        &["pool", "backend"],
        MetricType::GAUGE,
    ),
    (
        "tollgate_backend_weight",
        "The weight new connections are spread by now: 0 while drained, disabled, standing by as a backup, below the serving tier, or down (unless when_all_down: use_all and no backend of the pool is up); ramping during slow start.",
        &["pool", "backend"],
        MetricType::GAUGE,
    ),
    (
        "tollgate_backend_connections_active",
        "Connections open to the backend now.",
        &["pool", "backend"],
        MetricType::GAUGE,
    ),
    (
        "tollgate_backend_connections_total",
        "Connections established to the backend.",
        &["pool", "backend"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_backend_connect_failures_total",
        "Failed connects to the backend, by reason.",
        &["pool", "backend", "reason"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_backend_sent_bytes_total",
        "Bytes sent to the backend (from clients).",
        &["pool", "backend"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_backend_received_bytes_total",
        "Bytes received from the backend (to clients).",
        &["pool", "backend"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_health_checks_total",
        "Health probes by result: success, failure, local_error (the probe could not be made here, out of descriptors or ports; health unchanged). Active checks, plus the pass that ends a passive recovery in a pool without one.",
        &["pool", "backend", "result"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_backend_connect_duration_seconds",
        "Time to establish a backend connection. Buckets reach the largest timeouts.connect of the running config.",
        &["pool"],
        MetricType::HISTOGRAM,
    ),
    (
        "tollgate_pipes_open",
        "Splice pipes that exist now, in use or cached by a worker (bounded by a quarter of the open-file limit).",
        &[],
        MetricType::GAUGE,
    ),
    (
        "tollgate_pipes_created_total",
        "Splice pipes made.",
        &[],
        MetricType::COUNTER,
    ),
    (
        "tollgate_pipes_refused_total",
        "Splice pipes the kernel refused, by reason: descriptors (EMFILE, ENFILE), quota (granted below 64 KiB: an unprivileged user past fs.pipe-user-pages-soft), error. Each refusal keeps the pool from asking again for 1 s.",
        &["reason"],
        MetricType::COUNTER,
    ),
    (
        "tollgate_pipe_fallbacks_total",
        "Bulk bursts that copied through a buffer for want of a pipe, by reason: limit (the pipe bound is reached), refused (the kernel refused the pipe), backoff (it refused one less than 1 s ago).",
        &["reason"],
        MetricType::COUNTER,
    ),
];

pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    pub fn new(control: Handle) -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        registry.register(Box::new(process::ProcessCollector::for_self()))?;
        let descs = FAMILIES
            .iter()
            .map(|(name, help, labels, _)| {
                Desc::new(
                    (*name).into(),
                    (*help).into(),
                    labels.iter().map(|l| (*l).to_owned()).collect(),
                    HashMap::new(),
                )
            })
            .collect::<prometheus::Result<Vec<_>>>()?;
        registry.register(Box::new(TollgateCollector { control, descs }))?;
        Ok(Metrics { registry })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> prometheus::Result<String> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

struct TollgateCollector {
    control: Handle,
    descs: Vec<Desc>,
}

/// Samples of one family, keyed by family name while collecting.
type Samples = HashMap<&'static str, Vec<Metric>>;

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).to_owned());
            l.set_value((*v).to_owned());
            l
        })
        .collect()
}

fn push(out: &mut Samples, name: &'static str, pairs: &[(&str, &str)], value: f64) {
    let kind = FAMILIES
        .iter()
        .find(|f| f.0 == name)
        .map_or(MetricType::GAUGE, |f| f.3);
    let mut m = Metric::default();
    m.set_label(labels(pairs));
    if kind == MetricType::COUNTER {
        let mut c = Counter::default();
        c.set_value(value);
        m.set_counter(c);
    } else {
        let mut g = Gauge::default();
        g.set_value(value);
        m.set_gauge(g);
    }
    out.entry(name).or_default().push(m);
}

impl Collector for TollgateCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut out = Samples::new();
        // One view for the whole scrape: every series of it is of the same instant.
        let view = self.control.view();
        self.process(&view, &mut out);
        self.pipes(&mut out);
        listeners(&view, &mut out);
        pools(&view, &mut out);
        dns(&view, &mut out);
        FAMILIES
            .iter()
            .filter_map(|(name, help, _, kind)| {
                let metrics = out.remove(name)?;
                let mut f = MetricFamily::default();
                f.set_name((*name).to_owned());
                f.set_help((*help).to_owned());
                f.set_field_type(*kind);
                *f.mut_metric() = metrics;
                Some(f)
            })
            .collect()
    }
}

impl TollgateCollector {
    fn process(&self, view: &View, out: &mut Samples) {
        let build = [
            ("version", env!("CARGO_PKG_VERSION")),
            ("rustc", env!("TOLLGATE_BUILD_RUSTC")),
            ("commit", env!("TOLLGATE_BUILD_COMMIT")),
        ];
        push(out, "tollgate_build_info", &build, 1.0);
        push(
            out,
            "tollgate_config_generation",
            &[],
            view.generation as f64,
        );
        let reloads = view.reloads;
        for (result, n) in [("success", reloads.succeeded), ("failure", reloads.failed)] {
            push(
                out,
                "tollgate_config_reloads_total",
                &[("result", result)],
                n as f64,
            );
        }
        let ok = if reloads.last_successful { 1.0 } else { 0.0 };
        push(out, "tollgate_config_last_reload_successful", &[], ok);
        let at = reloads
            .last_success_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        push(
            out,
            "tollgate_config_last_reload_success_timestamp_seconds",
            &[],
            at,
        );
    }
}

impl TollgateCollector {
    fn pipes(&self, out: &mut Samples) {
        let stats = self.control.plane().pipes.stats();
        push(out, "tollgate_pipes_open", &[], stats.open as f64);
        push(
            out,
            "tollgate_pipes_created_total",
            &[],
            stats.created as f64,
        );
        for (why, n) in Refusal::ALL.iter().zip(stats.refused) {
            let l = [("reason", why.label())];
            push(out, "tollgate_pipes_refused_total", &l, n as f64);
        }
        for (why, n) in Fallback::ALL.iter().zip(stats.fallbacks) {
            let l = [("reason", why.label())];
            push(out, "tollgate_pipe_fallbacks_total", &l, n as f64);
        }
    }
}

fn listeners(view: &View, out: &mut Samples) {
    let snapshot = &view.snapshot;
    let now = std::time::Instant::now();
    for (name, spec) in &snapshot.listeners {
        let live = &spec.live;
        let l = [("listener", name.as_ref())];
        if spec.udp.is_some() {
            udp::listener(name, spec, out);
            continue;
        }
        let limit = live.max_connections() as f64;
        push(out, "tollgate_listener_connections_limit", &l, limit);
        let full = live.at_cap.full_for(now).as_secs_f64();
        push(out, "tollgate_listener_full_seconds_total", &l, full);
        for (metric, n) in [
            (
                "tollgate_listener_connections_accepted_total",
                &live.accepted,
            ),
            ("tollgate_listener_connections_active", &live.active),
            ("tollgate_listener_accept_errors_total", &live.accept_errors),
        ] {
            push(out, metric, &l, n.load(Relaxed) as f64);
        }
        if let Some(ps) = &spec.admission.per_source {
            push(
                out,
                "tollgate_listener_sources_tracked",
                &l,
                ps.table.tracked() as f64,
            );
        }
        for side in Side::ALL {
            for why in Failure::ALL {
                let l = [
                    ("listener", name.as_ref()),
                    ("side", side.label()),
                    ("reason", why.label()),
                ];
                let n = live.aborted(side, why).load(Relaxed) as f64;
                push(out, "tollgate_listener_connections_aborted_total", &l, n);
            }
        }
        let admission = crate::admission::Reason::ALL
            .iter()
            .map(|r| (r.label(), live.rejected(*r)));
        let ours = [
            ("no_backend", &live.rejected_no_backend),
            ("proxy_protocol", &live.rejected_proxy_protocol),
            ("sni", &live.rejected_sni),
        ];
        for (reason, n) in ours.into_iter().chain(admission) {
            let l = [("listener", name.as_ref()), ("reason", reason)];
            push(
                out,
                "tollgate_listener_connections_rejected_total",
                &l,
                n.load(Relaxed) as f64,
            );
        }
    }
}

fn dns(view: &View, out: &mut Samples) {
    for ((pool, result), n) in &view.dns.rounds {
        let l = [("pool", pool.as_str()), ("result", *result)];
        push(out, "tollgate_dns_resolutions_total", &l, *n as f64);
    }
    let now = std::time::Instant::now();
    let mut age: HashMap<&str, f64> = HashMap::new();
    for ((pool, _), state) in &view.dns.states {
        if let Some(at) = state.answered_at {
            let secs = now.saturating_duration_since(at).as_secs_f64();
            let oldest = age.entry(pool.as_str()).or_insert(secs);
            *oldest = oldest.max(secs);
        }
    }
    for (pool, secs) in &age {
        let l = [("pool", *pool)];
        push(out, "tollgate_dns_answer_age_seconds", &l, secs.floor());
    }
}

fn pools(view: &View, out: &mut Samples) {
    let shown = histogram::connect_buckets_shown(&view.written);
    for (pool_name, pool) in &view.snapshot.pools {
        let pool_label = pool_name.as_ref();
        for bv in view.backends(pool_label) {
            let b = bv.backend;
            let addr = b.address.to_string();
            let l = [("pool", pool_label), ("backend", addr.as_str())];
            let s = &b.stats;
            push(
                out,
                "tollgate_backend_up",
                &l,
                if bv.healthy { 1.0 } else { 0.0 },
            );
            let weight = f64::from(b.weight) / f64::from(crate::policy::SCALE);
            push(out, "tollgate_backend_weight", &l, weight);
            for (metric, n) in [
                ("tollgate_backend_connections_active", &s.active),
                ("tollgate_backend_connections_total", &s.connections),
                ("tollgate_backend_sent_bytes_total", &s.sent_bytes),
                ("tollgate_backend_received_bytes_total", &s.received_bytes),
            ] {
                push(out, metric, &l, n.load(Relaxed) as f64);
            }
            let results = [&s.health_ok, &s.health_failed, &s.health_local_errors];
            for (checked, n) in crate::health::Checked::ALL.iter().zip(results) {
                let result = checked.label();
                let l = [
                    ("pool", pool_label),
                    ("backend", addr.as_str()),
                    ("result", result),
                ];
                push(
                    out,
                    "tollgate_health_checks_total",
                    &l,
                    n.load(Relaxed) as f64,
                );
            }
            for why in ConnectFailure::ALL {
                let n = s.connect_failures[why as usize].load(Relaxed) as f64;
                let l = [
                    ("pool", pool_label),
                    ("backend", addr.as_str()),
                    ("reason", why.label()),
                ];
                push(out, "tollgate_backend_connect_failures_total", &l, n);
            }
        }
        out.entry("tollgate_backend_connect_duration_seconds")
            .or_default()
            .push(histogram::connect_duration(pool_label, pool, shown));
    }
}
