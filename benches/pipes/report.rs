//! The pipes benchmark's figures: tollgate's pipe metrics read from its admin API after a
//! run, one line per run, and the table of medians (min–max) per user.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::child::{Ctx, Res};
use super::streams::summary;

/// What tollgate's pipe pool did in one run (`tollgate_pipe*` metrics).
#[derive(Debug, Clone, Copy, Default)]
pub struct PipeFigures {
    pub created: f64,
    /// Refused by the kernel: quota, descriptors, other errors.
    pub refused: [f64; 3],
    /// Bursts that copied: limit, refused, backoff.
    pub fallbacks: [f64; 3],
    /// Pipes open at the end of the run (cached by the workers).
    pub open: f64,
}

pub struct Sample {
    pub user: String,
    pub gbps: f64,
    pub cpu_per_gb: f64,
    /// `None` for a binary without the pipe metrics.
    pub pipes: Option<PipeFigures>,
}

impl Sample {
    pub fn line(&self) -> String {
        let pipes = self.pipes.map_or("pipe metrics n/a".into(), |p| {
            format!(
                "pipes made {:.0}, refused quota/fd/other {:.0}/{:.0}/{:.0}, copied bursts limit/refused/backoff {:.0}/{:.0}/{:.0}, open at end {:.0}",
                p.created,
                p.refused[0],
                p.refused[1],
                p.refused[2],
                p.fallbacks[0],
                p.fallbacks[1],
                p.fallbacks[2],
                p.open
            )
        });
        format!(
            "{:<7} {:6.2} Gbit/s  {:.3} CPU-s/GB  {pipes}",
            self.user, self.gbps, self.cpu_per_gb
        )
    }
}

/// Reads the pipe metrics from tollgate's admin API on `port`.
pub fn scrape(port: u16) -> Res<Option<PipeFigures>> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ctx("connecting to the admin API")?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .ctx("SO_RCVTIMEO")?;
    let request =
        format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).ctx("asking for /metrics")?;
    let mut body = String::new();
    s.read_to_string(&mut body).ctx("reading /metrics")?;
    let value = |name: &str| -> Option<f64> {
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    let Some(created) = value("tollgate_pipes_created_total") else {
        return Ok(None);
    };
    let by = |metric: &str, reasons: [&str; 3]| {
        reasons.map(|r| value(&format!("{metric}{{reason=\"{r}\"}}")).unwrap_or(0.0))
    };
    Ok(Some(PipeFigures {
        created,
        refused: by(
            "tollgate_pipes_refused_total",
            ["quota", "descriptors", "error"],
        ),
        fallbacks: by(
            "tollgate_pipe_fallbacks_total",
            ["limit", "refused", "backoff"],
        ),
        open: value("tollgate_pipes_open").unwrap_or(0.0),
    }))
}

fn cell(values: Vec<f64>, precision: usize) -> String {
    let p = precision;
    summary(values).map_or("n/a".into(), |(m, lo, hi)| {
        format!("{m:.p$} ({lo:.p$}–{hi:.p$})")
    })
}

/// Prints one Markdown table: a row per figure, a column per user.
pub fn table(samples: &[Sample], users: &[String]) {
    type Figure = (&'static str, usize, fn(&Sample) -> Option<f64>);
    let rows: [Figure; 10] = [
        ("Gbit/s ↑", 2, |s| Some(s.gbps)),
        ("tollgate CPU-s per GB ↓", 3, |s| Some(s.cpu_per_gb)),
        ("pipes made", 0, |s| s.pipes.map(|p| p.created)),
        ("pipes refused: quota", 0, |s| s.pipes.map(|p| p.refused[0])),
        ("pipes refused: descriptors", 0, |s| {
            s.pipes.map(|p| p.refused[1])
        }),
        ("bursts copied: limit", 0, |s| {
            s.pipes.map(|p| p.fallbacks[0])
        }),
        ("bursts copied: refused", 0, |s| {
            s.pipes.map(|p| p.fallbacks[1])
        }),
        ("bursts copied: backoff", 0, |s| {
            s.pipes.map(|p| p.fallbacks[2])
        }),
        ("pipes open at the end", 0, |s| s.pipes.map(|p| p.open)),
        ("pipes refused: other", 0, |s| s.pipes.map(|p| p.refused[2])),
    ];
    println!("\n| figure | {} |", users.join(" | "));
    println!("| --- |{}", " --- |".repeat(users.len()));
    for (name, precision, get) in rows {
        let cells: Vec<String> = users
            .iter()
            .map(|u| {
                let values = samples.iter().filter(|s| &s.user == u).filter_map(get);
                cell(values.collect(), precision)
            })
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
    println!("\nCells: median (min–max) over the repetitions.");
}
