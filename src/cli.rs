//! The command line (DESIGN.md §3.1), as clap derive types. No logic lives here.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

pub const DEFAULT_CONFIG: &str = crate::config::DEFAULT_PATH;

#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about = "A layer-4 (TCP) load balancer")]
pub struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level (error, warn, info, debug, trace, off) or TARGET=LEVEL directives such as
    /// `tollgate=debug,warn`; TOLLGATE_LOG, the same, takes precedence when set.
    #[arg(long, global = true, default_value = "info", value_parser = crate::logging::level_arg)]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run in the foreground with the given config.
    Run {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a config and print a summary; exit 78 with every error when it is bad.
    Check {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Also ask the running instance's admin API what a reload of this file would change.
        #[arg(long)]
        diff: bool,
        /// The running instance's admin address (default: the file's `admin.bind`).
        #[arg(long, requires = "diff")]
        admin: Option<std::net::SocketAddr>,
    },
    /// A first look: the balancer on 127.0.0.1:8080 over two built-in HTTP demo backends.
    Demo,
    /// Print the version.
    Version,
}
