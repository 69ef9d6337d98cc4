//! Every metric tollgate exports (DESIGN.md §3.5): names, help texts and label sets live in
//! one file, `families.rs`. Values are read from the data plane's atomics at scrape time by a custom
//! collector in an explicit `prometheus::Registry` (with the process collector beside it),
//! so nothing on the data path takes a lock or sends a message per connection. Labels are
//! bounded: listener, pool, backend (`IP:PORT` from the config), side (client or backend),
//! reason, result — never a client address. A backend or listener that leaves the config leaves the output with it.
//! The `process_*` families come from `process.rs`, the connect-duration histogram's
//! buckets from `histogram.rs`; counters carried over a binary upgrade from `carried.rs`.

mod carried;
mod families;
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
use families::FAMILIES;

pub use carried::{CounterSample, carry_over, counter_samples, growth};

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
        // Plus what the process that upgraded to this one had counted (`carried.rs`).
        c.set_value(value + carried::base(name, pairs));
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
        push(
            out,
            "tollgate_upgrade_connections_handed_over_total",
            &[],
            self.control.handed_over() as f64,
        );
        push(
            out,
            "tollgate_upgrade_udp_sessions_handed_over_total",
            &[],
            self.control.sessions_handed_over() as f64,
        );
        for (result, n) in self.control.upgrades() {
            push(
                out,
                "tollgate_upgrades_total",
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
        let suppressed = self.control.plane().access.suppressed();
        push(
            out,
            "tollgate_access_log_lines_suppressed_total",
            &[],
            suppressed as f64,
        );
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
