//! The `tollgate` binary: command line → logging → config → run, mapped to exit codes
//! (0 clean stop, 64 bad usage, 78 bad config, 1 runtime failure).

use std::process::ExitCode;

use clap::Parser;
use tollgate::cli::{Cli, Command};
use tollgate::{ask, config, demo, logging, run};

// Holds tollgate's signals from before `main` (see the file); compiled into this binary only.
#[path = "sys/early.rs"]
mod early;

const EXIT_USAGE: u8 = 64;
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    // Before anything else: a package upgrade may replace the file later.
    tollgate::upgrade::remember_launch();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // `run` and `demo` release the held signals once their handlers are in place; every
    // other command gives them their usual meaning (Ctrl-C stops a hanging `check --diff`).
    if !matches!(cli.command, Command::Run { .. } | Command::Demo) {
        let _ = tollgate::sys::signals::release();
    }
    if let Err(e) = logging::init(cli.log_format, &cli.log_level) {
        eprintln!("tollgate: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    match cli.command {
        Command::Version => {
            println!("tollgate {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check {
            config,
            diff,
            admin,
        } => match config::load(&config) {
            Ok(cfg) => {
                println!("{}: ok", config.display());
                print!("{}", cfg.summary());
                // Not an error: `check` may run as another user than the service will.
                for warning in tollgate::privileged_ports::check_warnings(&cfg) {
                    eprintln!("{}: {warning}", config.display());
                }
                if diff {
                    print_diff(&cfg, admin);
                }
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Run { config } => match run::run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(run::RunError::Config(errors)) => {
                eprintln!("{errors}");
                ExitCode::from(EXIT_CONFIG)
            }
            Err(run::RunError::Failed(e)) => {
                fatal(&e);
                ExitCode::FAILURE
            }
        },
        Command::Demo => exit(demo::run()),
        Command::Upgrade { config, admin } => told("upgrade", ask::upgrade(&config, admin)),
        Command::Reload { config, admin } => told("reload", ask::reload(&config, admin)),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "tollgate", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man => {
            let page = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
            match page.render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tollgate man: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Prints what a reload of `cfg` would change in the running instance, if it can be reached.
fn print_diff(cfg: &config::Config, admin: Option<std::net::SocketAddr>) {
    let Some(addr) = admin.or(cfg.admin.as_ref().map(|a| a.bind)) else {
        println!(
            "diff: the file has no admin section and --admin was not given; nothing to compare with"
        );
        return;
    };
    let addr = tollgate::admin_client::reachable(addr);
    match tollgate::diff::fetch_running(addr) {
        Err(e) => println!(
            "diff: the running instance at {addr} cannot be reached ({e}); nothing to compare with"
        ),
        Ok((running, status)) => {
            let lines = tollgate::diff::describe(&running, &status, cfg);
            if lines.is_empty() {
                println!("diff: a reload would change nothing in the instance at {addr}");
            } else {
                println!("diff: a reload would change, in the instance at {addr}:");
                for line in lines {
                    println!("  {line}");
                }
            }
        }
    }
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            fatal(&e);
            ExitCode::FAILURE
        }
    }
}

/// Prints what `tollgate reload` or `tollgate upgrade` heard, and exits accordingly: 0 done,
/// 78 the file was refused (every error on stderr), 1 anything else.
fn told(command: &str, outcome: ask::Outcome) -> ExitCode {
    match outcome {
        ask::Outcome::Done(lines) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        ask::Outcome::Refused(errors) => {
            for line in errors {
                eprintln!("{line}");
            }
            ExitCode::from(EXIT_CONFIG)
        }
        ask::Outcome::Failed(why) => {
            eprintln!("tollgate {command}: {why}");
            ExitCode::FAILURE
        }
    }
}

/// The error that ends the process reaches the operator whatever the log filter: as a log
/// line when the filter lets it through (in the chosen format), else straight on stderr.
fn fatal(e: &anyhow::Error) {
    if tracing::event_enabled!(tracing::Level::ERROR) {
        tracing::error!("{e:#}");
    } else {
        eprintln!("tollgate: error: {e:#}");
    }
}
