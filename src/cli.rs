//! The command line (DESIGN.md §3.1), as clap derive types. No logic lives here.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

pub const DEFAULT_CONFIG: &str = crate::config::DEFAULT_PATH;

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "A layer-4 (TCP and UDP) load balancer"
)]
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
    /// Ask the running instance to reload its config file now (its admin API); exit 78 with
    /// every error when the file is refused, so that `systemctl reload` fails.
    Reload {
        /// The file that names the admin API (`admin.bind`, `admin.token_file`); the
        /// instance reloads the file it was started with.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The running instance's admin address (default: the file's `admin.bind`).
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
    /// Ask the running instance to upgrade to the binary now installed at its path, handing
    /// its listening sockets over (same as SIGUSR2); prints the new process id, or exits 78
    /// when the new process refused the config (the old one keeps serving).
    Upgrade {
        /// The file that names the admin API (`admin.bind`, `admin.token_file`).
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The running instance's admin address (default: the file's `admin.bind`).
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
    /// Print a completion script for SHELL (e.g. `tollgate completions bash >
    /// /usr/share/bash-completion/completions/tollgate`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `tollgate man | man -l -`.
    Man,
    /// Print the version.
    Version,
}
