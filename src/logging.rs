//! Tracing set-up: text or JSON lines on stderr, filtered by `TOLLGATE_LOG` (an `EnvFilter`
//! directive) or else the `--log-level` flag. Colour only when stderr is a terminal: in a
//! file or the journal, escape codes are noise that breaks grep.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

pub fn init(format: LogFormat, level: &str) -> Result<(), String> {
    let filter = match std::env::var("TOLLGATE_LOG") {
        Ok(directive) if !directive.is_empty() => EnvFilter::try_new(&directive)
            .map_err(|e| format!("TOLLGATE_LOG `{directive}` is not a valid filter: {e}"))?,
        _ => EnvFilter::try_new(level)
            .map_err(|e| format!("--log-level `{level}` is not valid: {e}"))?,
    };
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
