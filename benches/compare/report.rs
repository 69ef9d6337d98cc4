//! Results and how they are shown.
//!
//! Owns the collected samples (one value per workload, metric, contender and repetition),
//! the notes and failures gathered on the way, the machine description (cores, CPU model,
//! kernel, tool versions), the final Markdown table with medians, min–max and the tollgate
//! ratios, and `target/compare/results.json` with every sample.

use std::path::Path;
use std::process::Command;
use std::{fs, thread};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::contenders::Contender;
use crate::{Settings, Workload, dns, tls, udp_bulk, upgrade};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Better {
    Higher,
    Lower,
}

/// One figure a workload reports, e.g. bulk -P8 Gbit/s.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Metric {
    pub workload: &'static str,
    pub key: &'static str,
    pub label: &'static str,
    pub better: Better,
    pub digits: usize,
    /// Whether tollgate/other ratios mean anything (not for error counts).
    pub ratio: bool,
}

/// A metric row: what a workload measures, which way is better, how many digits it shows,
/// and whether tollgate/other ratios mean anything.
pub const fn metric(
    workload: &'static str,
    key: &'static str,
    label: &'static str,
    better: Better,
    digits: usize,
    ratio: bool,
) -> Metric {
    Metric {
        workload,
        key,
        label,
        better,
        digits,
        ratio,
    }
}

#[derive(Default)]
pub struct Results {
    samples: Vec<(Metric, Contender, f64)>,
    /// Metrics in the order they were first reported.
    order: Vec<Metric>,
    notes: Vec<String>,
    pub failures: Vec<String>,
    /// (workload, contender, why): a contender that cannot run a workload at all.
    unsupported: Vec<(&'static str, Contender, &'static str)>,
}

impl Results {
    pub fn add(&mut self, metric: Metric, c: Contender, value: f64) {
        self.declare(metric);
        self.samples.push((metric, c, value));
    }

    pub fn note(&mut self, note: String) {
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    /// Records that `c` cannot run `workload`: its cells say `why` instead of n/a.
    pub fn unsupported(&mut self, workload: &'static str, c: Contender, why: &'static str) {
        if !self.unsupported.contains(&(workload, c, why)) {
            self.unsupported.push((workload, c, why));
        }
    }

    fn why_not(&self, workload: &str, c: Contender) -> Option<&'static str> {
        let found = self
            .unsupported
            .iter()
            .find(|u| u.0 == workload && u.1 == c);
        found.map(|u| u.2)
    }

    /// Puts `metric`'s row in the table now, before any sample, so that rows keep the
    /// workload's order when the first contender measured (`direct`) lacks some of them.
    pub fn declare(&mut self, metric: Metric) {
        if !self.order.contains(&metric) {
            self.order.push(metric);
        }
    }

    pub fn has_any(&self, workload: &str, c: Contender) -> bool {
        self.samples
            .iter()
            .any(|(m, sc, _)| m.workload == workload && *sc == c)
    }

    fn values(&self, metric: Metric, c: Contender) -> Vec<f64> {
        let of = self
            .samples
            .iter()
            .filter(|(m, sc, _)| *m == metric && *sc == c);
        of.map(|s| s.2).collect()
    }

    fn summary(&self, metric: Metric, c: Contender) -> Option<Summary> {
        Summary::of(self.values(metric, c))
    }
}

#[derive(Clone, Copy)]
struct Summary {
    median: f64,
    min: f64,
    max: f64,
}

impl Summary {
    fn of(mut values: Vec<f64>) -> Option<Summary> {
        values.sort_by(f64::total_cmp);
        let (min, max, mid) = (*values.first()?, *values.last()?, values.len() / 2);
        let median = match values.len() % 2 {
            0 => (values[mid - 1] + values[mid]) / 2.0,
            _ => values[mid],
        };
        Some(Summary { median, min, max })
    }
}

/// What the summary says about the machine, gathered once at the start.
pub struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub kernel: String,
    /// (tool, first line of its version output).
    pub versions: Vec<(&'static str, String)>,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                Some(
                    l.strip_prefix("model name")?
                        .trim_start()
                        .strip_prefix(':')?
                        .trim(),
                )
            })
            .unwrap_or("unknown CPU")
            .to_owned();
        let versions = [
            ("haproxy", &["-v"][..], "HAProxy version"),
            ("nginx", &["-v"][..], "nginx version"),
            ("iperf3", &["--version"][..], "iperf"),
            ("wrk", &["--version"][..], "wrk"),
            ("h2load", &["--version"][..], "h2load"),
            ("dnsperf", &["-h"][..], "Version"),
            ("nsd", &["-v"][..], "NSD version"),
        ];
        Machine {
            nproc: thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            kernel: first_line("uname", &["-r"], "").unwrap_or_else(|| "unknown kernel".into()),
            versions: versions
                .into_iter()
                .map(|(tool, args, prefix)| {
                    let v = first_line(tool, args, prefix).unwrap_or_else(|| "not found".into());
                    (tool, v)
                })
                .collect(),
        }
    }

    pub fn describe(&self) -> String {
        let tools: Vec<String> = self
            .versions
            .iter()
            .map(|(t, v)| format!("{t}: `{v}`"))
            .collect();
        format!(
            "- machine: {} cores (nproc), {}, Linux {}, loopback only\n- tools: {}",
            self.nproc,
            self.cpu,
            self.kernel,
            tools.join("; ")
        )
    }
}

/// The first output line (stdout, then stderr) of `tool args` that starts with `prefix`.
fn first_line(tool: &str, args: &[&str], prefix: &str) -> Option<String> {
    let out = Command::new(tool).args(args).output().ok()?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && l.starts_with(prefix))?;
    Some(line.to_owned())
}

fn cell(s: Option<Summary>, digits: usize) -> String {
    s.map_or("n/a".into(), |s| {
        let d = digits;
        format!("{:.d$} ({:.d$}–{:.d$})", s.median, s.min, s.max)
    })
}

fn ratio(tollgate: Option<Summary>, other: Option<Summary>) -> Option<f64> {
    let (t, o) = (tollgate?.median, other?.median);
    (o != 0.0).then(|| t / o)
}

/// Which of `among` did best on `m` (by median), with that median.
fn best_of(res: &Results, m: Metric, among: &[Contender]) -> Option<(Contender, f64)> {
    among
        .iter()
        .filter_map(|&c| Some((c, res.summary(m, c)?.median)))
        .reduce(|a, b| match (m.better, b.1 > a.1) {
            (Better::Higher, true) | (Better::Lower, false) => b,
            _ => a,
        })
}

/// The Markdown summary: header with machine and settings, one row per metric.
pub fn markdown(res: &Results, contenders: &[Contender], header: &str) -> String {
    let has = |c| contenders.contains(&c);
    let mut cols: Vec<String> = contenders.iter().map(|c| c.name().to_owned()).collect();
    let tg = has(Contender::Tollgate);
    let haproxies = [Contender::Haproxy, Contender::HaproxySplice]
        .into_iter()
        .filter(|c| has(*c));
    let haproxies: Vec<Contender> = haproxies.collect();
    let others: Vec<Contender> = [
        Contender::TollgateAccessLog,
        Contender::HaproxySplice,
        Contender::Nginx,
        Contender::NginxHalfClose,
        Contender::Direct,
    ]
    .into_iter()
    .filter(|c| tg && has(*c))
    .collect();
    // The peers: the other balancers, not tollgate's own variant nor the direct path.
    let peers: Vec<Contender> = [
        Contender::Haproxy,
        Contender::HaproxySplice,
        Contender::Nginx,
        Contender::NginxHalfClose,
    ]
    .into_iter()
    .filter(|c| tg && has(*c))
    .collect();
    if !peers.is_empty() {
        cols.push("tollgate / best peer".into());
    }
    if tg && !haproxies.is_empty() {
        cols.push("tollgate / haproxy (better variant)".into());
    }
    cols.extend(others.iter().map(|c| format!("tollgate / {c}")));
    let mut out = format!("{header}\n\n| workload | metric | {} |\n", cols.join(" | "));
    out += &format!("| --- | --- |{}\n", " --- |".repeat(cols.len()));
    for &m in &res.order {
        let arrow = match m.better {
            Better::Higher => "↑",
            Better::Lower => "↓",
        };
        let mut row: Vec<String> = contenders
            .iter()
            .map(|&c| match (res.summary(m, c), res.why_not(m.workload, c)) {
                (None, Some(why)) => why.to_owned(),
                (s, _) => cell(s, m.digits),
            })
            .collect();
        let t = res.summary(m, Contender::Tollgate);
        let na = || "n/a".to_owned();
        if !peers.is_empty() {
            let text = best_of(res, m, &peers)
                .filter(|_| m.ratio)
                .and_then(|(c, _)| {
                    let r = ratio(t, res.summary(m, c))?;
                    Some(format!("{r:.2} ({c})"))
                });
            row.push(text.unwrap_or_else(na));
        }
        if tg && !haproxies.is_empty() {
            let best = best_of(res, m, &haproxies);
            let text = best.filter(|_| m.ratio).and_then(|(c, _)| {
                let r = ratio(t, res.summary(m, c))?;
                Some(format!(
                    "{r:.2} ({})",
                    if c == Contender::HaproxySplice {
                        "splice"
                    } else {
                        "plain"
                    }
                ))
            });
            row.push(text.unwrap_or_else(na));
        }
        for &c in &others {
            let r = ratio(t, res.summary(m, c)).filter(|_| m.ratio);
            row.push(r.map_or_else(na, |r| format!("{r:.2}")));
        }
        out += &format!(
            "| {} | {} {arrow} | {} |\n",
            m.workload,
            m.label,
            row.join(" | ")
        );
    }
    out += "\nCells: median (min–max) over the repetitions. ↑ higher is better, ↓ lower is better. \
            Ratios are tollgate's median ÷ the other's: above 1 favours tollgate on ↑ rows, below 1 on ↓ rows. \
            \"best peer\" compares with whichever other balancer (haproxy, haproxy-splice, nginx, nginx-half-close) did best on that row; \
            \"better variant\" with whichever of haproxy and haproxy-splice did. The per-CPU-s rows (↑) are the efficiency goal's.\n";
    if !res.notes.is_empty() {
        out += "\nNotes:\n";
        out.extend(res.notes.iter().map(|n| format!("- {n}\n")));
    }
    out
}

/// Writes every sample, with its summary, as JSON.
pub fn write_json(path: &Path, res: &Results, contenders: &[Contender], meta: Value) -> Result<()> {
    let mut rows = Vec::new();
    for &m in &res.order {
        for &c in contenders {
            let samples = res.values(m, c);
            let Some(s) = Summary::of(samples.clone()) else {
                continue;
            };
            rows.push(json!({
                "workload": m.workload, "contender": c.name(), "metric": m.key, "label": m.label,
                "better": if m.better == Better::Higher { "higher" } else { "lower" },
                "samples": samples, "median": s.median, "min": s.min, "max": s.max,
            }));
        }
    }
    let unsupported: Vec<Value> = res
        .unsupported
        .iter()
        .map(|(w, c, why)| json!({"workload": w, "contender": c.name(), "reason": why}))
        .collect();
    let doc = json!({
        "meta": meta, "results": rows, "unsupported": unsupported,
        "notes": res.notes, "failures": res.failures,
    });
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&doc).context("serialising results")?;
    fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// The summary's heading: machine, tools, settings and what each contender runs.
pub fn header(s: &Settings, machine: &Machine) -> String {
    let mode = if s.smoke {
        " (SMOKE run: figures are not meaningful)"
    } else {
        ""
    };
    let mut out = format!(
        "## tollgate vs HAProxy vs nginx{mode}\n\n{}\n\
         - runs: {} rep(s) of bulk, conns/s, req/resp, tls-sni, udp-dns and udp-bulk, {} of memory, \
         startup, reload, udp-memory and upgrade; {} s per iperf3/wrk/h2load/dnsperf/UDP load run; contenders alternate, \
         order rotated each round; client, backend and balancer share the cores, all on 127.0.0.1",
        machine.describe(),
        s.reps.0,
        s.reps.1,
        s.secs,
    );
    if s.uses_tcp() {
        out += &format!(
            "\n- TCP contenders: tollgate `workers: auto`, `forwarding: splice`; haproxy `mode tcp`, \
             nbthread 2 (haproxy-splice adds `option splice-request`/`splice-response`); nginx \
             `stream` proxy_pass, 2 workers (nginx-half-close adds `proxy_half_close on`: a FIN \
             passed on and the other direction kept flowing, as tollgate and haproxy do; run on \
             conns/s and tls-sni)\n\
             - TCP workloads: bulk = iperf3 -P1/-P8; conns/s = wrk -t2 -c32 `Connection: close`; \
             req/resp = wrk -t2 -c64 keep-alive; HTTP backend nginx `return 200`, 1 worker; \
             memory/startup/reload over an echo server, {} held connections",
            s.held
        );
    }
    if s.uses(Workload::Upgrade) {
        out += &format!("\n{}", upgrade::describe(s));
    }
    if s.uses(Workload::TlsSni) {
        out += &format!(
            "\n- tls-sni: TLS passthrough routed by SNI `{name}` (tollgate `sni` routes + \
             default_pool; haproxy `tcp-request inspect-delay 5s`, `req_ssl_hello_type 1`, \
             `use_backend` by `req.ssl_sni`; nginx `ssl_preread` + `map`); h2load --h1 -c {} -t {}, \
             every connection a full TLS 1.3 handshake (no resumption), one request, \
             `Connection: close`; backend nginx `ssl` (P-256 certificate), 2 workers; \
             haproxy-splice not run",
            tls::CLIENTS,
            tls::THREADS,
            name = tls::SERVER_NAME,
        );
    }
    if s.uses_udp() {
        let (sockets, window, size) = udp_bulk::BULK;
        out += &format!(
            "\n- UDP contenders: tollgate `protocol: udp`, `workers: 2`; nginx `stream` \
             `listen ... udp reuseport`, 2 workers; both `session_idle`/`proxy_timeout` 60 s, \
             udp-dns with `responses: 1` / `proxy_responses 1`; HAProxy community has no UDP\n\
             - UDP workloads: udp-dns = dnsperf -c {} -q {} -t 1 against nsd (1 server process, a \
             tiny zone), as fast as it goes and again at -Q {} (`udp-dns @20k/s`); udp-bulk = {sockets} client sockets, {window} datagrams of {size} bytes in \
             flight each, echoed by a 2-thread recvmmsg/sendmmsg echo server; udp-memory = {} idle \
             sessions (one datagram and its echo each), RSS delta",
            dns::CLIENTS,
            dns::OUTSTANDING,
            dns::FIXED_QPS,
            s.udp_sessions
        );
    }
    out
}
