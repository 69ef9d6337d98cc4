//! Tracing set-up: text or JSON lines on stderr, filtered by `TOLLGATE_LOG` (an `EnvFilter`
//! directive) or else the `--log-level` flag. Colour only when stderr is a terminal: in a
//! file or the journal, escape codes are noise that breaks grep.
//!
//! Both take the same filters, checked more strictly than `EnvFilter` does: it reads a bare
//! word it does not know (`verbose`) as the name of a target to log at `trace`, so a
//! misspelt level would silently leave tollgate's own lines out, fatal errors included.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

use crate::cli::LogFormat;

/// What a filter may be made of, for messages.
const ACCEPTED: &str = "a level (error, warn, info, debug, trace, off) or comma-separated \
                        TARGET=LEVEL directives with an optional default level, such as \
                        `tollgate=debug,warn`";

pub fn init(format: LogFormat, level: &str) -> Result<(), String> {
    let filter = match std::env::var("TOLLGATE_LOG") {
        Ok(directive) if !directive.is_empty() => {
            filter(&directive).map_err(|e| format!("TOLLGATE_LOG `{directive}`: {e}"))?
        }
        _ => filter(level).map_err(|e| format!("--log-level `{level}`: {e}"))?,
    };
    let filter = with_access_log(filter);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| format!("cannot set up logging: {e}"))
}

/// The access log is turned on and off by `logging.access` in the config, not by the log
/// level: its lines (info, target `tollgate::access`) pass whatever the level, unless the
/// filter names that target itself (`tollgate::access=off`).
fn with_access_log(filter: EnvFilter) -> EnvFilter {
    let target = crate::proxy::access_log::TARGET;
    if filter.to_string().contains(target) {
        return filter;
    }
    match format!("{target}=info").parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}

/// The value parser of `--log-level`: a bad one is a usage error (exit 64) before anything
/// runs, with the list of what is accepted.
pub fn level_arg(spec: &str) -> Result<String, String> {
    filter(spec).map(|_| spec.to_owned())
}

/// `spec` as a filter: every directive must name a level, alone (`info`) or after a target
/// or span (`tollgate=debug`, `[conn]=trace`).
fn filter(spec: &str) -> Result<EnvFilter, String> {
    let directives: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if directives.is_empty() {
        return Err(format!("no level given; use {ACCEPTED}"));
    }
    for &d in &directives {
        let level = d.rsplit_once('=').map_or(d, |(_, level)| level);
        if level.parse::<LevelFilter>().is_err() {
            return Err(format!("`{level}` is not a level; use {ACCEPTED}"));
        }
    }
    // Spaces after the commas are the operator's; EnvFilter would take them as part of names.
    EnvFilter::try_new(directives.join(",")).map_err(|e| format!("{e}; use {ACCEPTED}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_access_log_passes_any_level_unless_named() {
        let warn = with_access_log(filter("warn").unwrap()).to_string();
        assert!(warn.contains("tollgate::access=info"), "{warn}");
        let named = with_access_log(filter("warn,tollgate::access=off").unwrap()).to_string();
        assert!(!named.contains("tollgate::access=info"), "{named}");
    }

    #[test]
    fn levels_and_directives_are_accepted() {
        for ok in [
            "info",
            "ERROR",
            "off",
            "tollgate=debug,warn",
            "tollgate::proxy=trace, hyper=off",
            "[conn]=debug",
        ] {
            assert!(filter(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn words_that_are_not_levels_are_refused_with_the_list() {
        for bad in [
            "verbose",
            "tollgate=verbose",
            "debug,hyper",
            "",
            " , ",
            "=info",
        ] {
            let e = filter(bad).unwrap_err();
            assert!(
                e.contains("error, warn, info, debug, trace, off"),
                "{bad}: {e}"
            );
        }
        assert!(
            filter("verbose")
                .unwrap_err()
                .starts_with("`verbose` is not a level")
        );
    }
}
