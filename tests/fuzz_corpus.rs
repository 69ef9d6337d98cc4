//! Replays the cargo-fuzz seed corpus, `fuzz/corpus/config_load/`, through
//! `tollgate::config::load_str` on every `cargo test`, so the seeds guard the config loader
//! even where nobody runs the fuzzer (`fuzz/fuzz_targets/config_load.rs` says how to).
//!
//! For every file: no panic, an answer within [`TIME_LIMIT`] (an alias bomb or a quadratic
//! blow-up shows up as a timeout), and, for an `Err`, a non-empty message whose every line
//! reads `LABEL:LINE:COLUMN: ...` (or `LABEL: ...` for a problem of the whole file). Files that are not UTF-8 go in through
//! `String::from_utf8_lossy`.
//!
//! The file name also says what the loader must answer, so the corpus doubles as a spec check:
//!
//! - `valid_*`: loads `Ok` (uses only what is implemented today);
//! - `bad_*`: an `Err` (invalid YAML, unknown keys, wrong types, out-of-range values, ...);
//! - anything else (`edge_*`, or inputs the fuzzer adds): either answer, the checks above only.
//!
//! The other targets' seeds go through the same checks as their fuzz targets:
//! `admin_input` through the admin API's parsers, `udp_flows` through the UDP session table
//! and its reference model side by side (`tollgate::proxy::udp::model::check`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::corpus::{corpus_dir, seeds_of};

/// Generous: a seed takes about a millisecond; a budget breach well under a second.
const TIME_LIMIT: Duration = Duration::from_secs(5);

/// So that the test cannot pass vacuously when the directory is missing or emptied.
const MIN_SEEDS: usize = 20;

/// Seeds whose error messages may span several lines. None: the loader escapes control
/// characters in names and values (a seed like `bad_newline_in_name.yaml` guards that), so
/// every error keeps to one `LABEL:LINE:COLUMN: ...` line. Kept as a list for the day an
/// exception is truly needed; the test flags an entry that no longer needs to be here.
const KNOWN_MULTILINE: &[&str] = &[];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Valid,
    Bad,
    Any,
}

fn expectation(name: &str) -> Expect {
    if name.starts_with("valid_") {
        Expect::Valid
    } else if name.starts_with("bad_") {
        Expect::Bad
    } else {
        Expect::Any
    }
}

/// What one call answered, and how long it took.
struct Answer {
    elapsed: Duration,
    /// `None` for `Ok`.
    error: Option<Rejection>,
}

/// An `Err` as shown: the whole Display, and each error's place and own Display.
struct Rejection {
    shown: String,
    each: Vec<(u64, u64, String)>,
}

/// Runs `load_str` on a thread of its own, so a hang fails this seed after [`TIME_LIMIT`]
/// instead of hanging the test, and a panic is reported with the seed's name.
fn load(text: String, label: String) -> Result<Answer, String> {
    let (tx, rx) = mpsc::channel();
    let worker = thread::spawn(move || {
        let start = Instant::now();
        let result = tollgate::config::load_str(&text, &label);
        let elapsed = start.elapsed();
        let error = result.err().map(|errs| Rejection {
            shown: errs.to_string(),
            each: errs
                .iter()
                .map(|e| (e.line, e.column, e.to_string()))
                .collect(),
        });
        let _ = tx.send(Answer { elapsed, error });
    });
    match rx.recv_timeout(TIME_LIMIT) {
        Ok(answer) => {
            worker.join().unwrap();
            Ok(answer)
        }
        // The sender was dropped without sending: the loader panicked.
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let panic = worker.join().err().map_or_else(String::new, |p| {
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default()
            });
            Err(format!("load_str panicked: {panic}"))
        }
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
            "load_str did not return within {TIME_LIMIT:?} (the thread is left running)"
        )),
    }
}

/// `LABEL:LINE:COLUMN: message` with LINE and COLUMN counted from 1 and a non-empty message,
/// or `LABEL: message` for a problem of the whole file (never a made-up `LABEL:0:0:`).
fn well_formed_line(line: &str, label: &str) -> bool {
    let Some(rest) = line.strip_prefix(label).and_then(|r| r.strip_prefix(':')) else {
        return false;
    };
    if let Some(message) = rest.strip_prefix(' ') {
        return !message.trim().is_empty();
    }
    let mut parts = rest.splitn(3, ':');
    let (Some(l), Some(c), Some(message)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let number =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.parse() != Ok(0u64);
    number(l) && number(c) && message.starts_with(' ') && !message.trim().is_empty()
}

/// Every problem with one seed's answer; empty when it passes.
fn check(name: &str, answer: &Answer) -> Vec<String> {
    let mut problems = Vec::new();
    if answer.elapsed > TIME_LIMIT {
        problems.push(format!("took {:?}", answer.elapsed));
    }
    match (expectation(name), &answer.error) {
        (Expect::Valid, Some(Rejection { shown, .. })) => {
            problems.push(format!("a valid_ seed was rejected:\n{shown}"));
        }
        (Expect::Bad, None) => {
            problems.push("loaded Ok, but its name says it must be rejected".to_owned());
        }
        _ => {}
    }
    let Some(Rejection { shown, each }) = &answer.error else {
        return problems;
    };
    if shown.trim().is_empty() || each.is_empty() {
        problems.push(format!("an Err with an empty message: {shown:?}"));
    }
    for (line, column, text) in each {
        let place = match line {
            0 => format!("{name}: "),
            _ => format!("{name}:{line}:{column}: "),
        };
        if !text.starts_with(&place) {
            problems.push(format!("an error without its place: {text:?}"));
        }
    }
    let lines: Vec<&str> = shown.lines().collect();
    if KNOWN_MULTILINE.contains(&name) {
        if lines.len() == each.len() {
            problems.push(
                "its errors now keep to one line each: remove it from KNOWN_MULTILINE".to_owned(),
            );
        }
    } else {
        if lines.len() != each.len() {
            problems.push(format!(
                "{} errors shown on {} lines:\n{shown}",
                each.len(),
                lines.len()
            ));
        }
        for line in lines {
            if !well_formed_line(line, name) {
                problems.push(format!(
                    "a line not shaped `{name}:LINE:COLUMN: ...`: {line:?}"
                ));
            }
        }
    }
    problems
}

#[test]
fn fuzz_corpus_replays_cleanly() {
    let seeds = seeds_of("config_load");
    assert!(
        seeds.len() >= MIN_SEEDS,
        "{} holds {} files; expected at least {MIN_SEEDS}",
        corpus_dir("config_load").display(),
        seeds.len()
    );
    for kind in [Expect::Valid, Expect::Bad] {
        assert!(
            seeds.iter().any(|(name, _)| expectation(name) == kind),
            "the corpus has no {kind:?} seed"
        );
    }
    for known in KNOWN_MULTILINE {
        assert!(
            seeds.iter().any(|(name, _)| name == known),
            "KNOWN_MULTILINE names {known}, which is not in the corpus"
        );
    }

    let mut failures = Vec::new();
    for (name, bytes) in &seeds {
        let text = String::from_utf8_lossy(bytes).into_owned();
        match load(text, name.clone()) {
            Ok(answer) => {
                for problem in check(name, &answer) {
                    failures.push(format!("{name}: {problem}"));
                }
            }
            Err(problem) => failures.push(format!("{name}: {problem}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus files failed:\n\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n\n")
    );
}

/// The admin-input seeds go through the same parsers and checks as the fuzz target.
#[test]
fn admin_input_corpus_replays_cleanly() {
    use tollgate::admin::input::{parse_weight, percent_decode};
    use tollgate::admission::Cidr;
    use tollgate::authority::{Authority, parse_origin};
    let seeds = seeds_of("admin_input");
    assert!(seeds.len() >= 10, "only {} admin_input seeds", seeds.len());
    let mut accepted = 0;
    for (name, data) in seeds {
        if let Ok(w) = parse_weight(&data) {
            assert!(w <= 1000, "{name}");
            accepted += 1;
        }
        let Ok(text) = std::str::from_utf8(&data) else {
            continue;
        };
        if let Ok(a) = text.parse::<Authority>() {
            assert_eq!(a.to_string().parse::<Authority>(), Ok(a), "{name}");
            accepted += 1;
        }
        if let Some(origin) = parse_origin(text) {
            assert!(origin.port.is_some(), "{name}");
        }
        if let Some(decoded) = percent_decode(text)
            && let Ok(cidr) = decoded.parse::<Cidr>()
        {
            assert!(cidr.contains(cidr.network()), "{name}");
            assert_eq!(cidr.to_string().parse::<Cidr>(), Ok(cidr), "{name}");
            accepted += 1;
        }
    }
    assert!(
        accepted >= 3,
        "the corpus holds inputs that parse, not only rejects"
    );
}

/// The udp_flows seeds drive the session table and its model side by side, as the fuzz
/// target does; each named seed reaches what its name says.
#[test]
fn udp_flows_corpus_replays_cleanly() {
    use tollgate::proxy::udp::model::{Summary, check};
    let seeds = seeds_of("udp_flows");
    assert!(seeds.len() >= 10, "only {} udp_flows seeds", seeds.len());
    type Reached = fn(&Summary) -> bool;
    let reaches: &[(&str, Reached)] = &[
        ("dns_responses_one", |s| {
            s.last_replies >= 2 && s.inserted >= 3
        }),
        ("refresh_before_idle", |s| s.live >= 1 && s.expired == 1),
        ("backend_down_moves", |s| s.moved >= 1 && s.no_backend >= 2),
        ("cap_refusals", |s| s.refused >= 3 && s.exists == 1),
        ("end_of_time", |s| s.inserted >= 3),
        ("reload_retain", |s| s.retained_out >= 2),
        ("stale_ids", |s| s.stale_ids >= 2 && s.removed == 1),
        ("shorter_idle", |s| s.expired >= 1),
        ("admission_refused", |s| s.inserted == 1),
    ];
    let mut total = Summary::default();
    for (name, data) in &seeds {
        let summary = std::panic::catch_unwind(|| check(data))
            .unwrap_or_else(|_| panic!("{name}: the table and its model disagree"));
        if let Some((_, reached)) = reaches.iter().find(|(n, _)| n == name) {
            assert!(
                reached(&summary),
                "{name} no longer reaches its case: {summary:?}"
            );
        }
        total += summary;
    }
    for (name, _) in reaches {
        assert!(
            seeds.iter().any(|(n, _)| n == name),
            "seed {name} is missing"
        );
    }
    assert!(
        total.expired > 0 && total.moved > 0 && total.refused > 0 && total.forwarded > 0,
        "{total:?}"
    );
}

#[test]
fn line_format_check_rejects_malformed_lines() {
    assert!(well_formed_line(
        "a.yaml:3:5: listeners.web: oops",
        "a.yaml"
    ));
    assert!(well_formed_line(
        "a.yaml: listeners: at least one",
        "a.yaml"
    ));
    assert!(!well_formed_line("a.yaml:0:0: cannot read", "a.yaml"));
    assert!(!well_formed_line("a.yaml: ", "a.yaml"));
    assert!(!well_formed_line("a.yaml:3:5:", "a.yaml"));
    assert!(!well_formed_line("a.yaml:3: oops", "a.yaml"));
    assert!(!well_formed_line("a.yaml:x:5: oops", "a.yaml"));
    assert!(!well_formed_line("b.yaml:3:5: oops", "a.yaml"));
    assert!(!well_formed_line("other.yaml:1:1: forged", "a.yaml"));
}
