//! `tollgate reload` and `tollgate upgrade`: ask the running instance to reload its config
//! file now, or to upgrade its binary, through the admin API (`POST /api/v1/reload`, `POST
//! /api/v1/upgrade`), and say how that went. For a reload, so that `systemctl reload`
//! (the unit's `ExecReload`) fails with every error in its output when the file is refused,
//! instead of reporting success for a signal nobody checked (HAProxy's unit checks its file
//! before signalling, for the same reason).
//!
//! The admin address and token come from the file at `-c` (or `--admin`), as for `check
//! --diff`. The instance reloads the file it was started with. A file whose admin section
//! can still be read is sent to the instance even when the rest of it is invalid: the
//! instance then records the refusal (`tollgate_config_last_reload_successful 0`), which the
//! alert on it shows, and answers the errors.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::Value;

use crate::admin_client;
use crate::config;

/// A reload reads, validates and binds; on a busy host that can take a while.
const TIMEOUT: Duration = Duration::from_secs(30);

/// How a reload request ended.
#[derive(Debug)]
pub enum Outcome {
    /// Done: the lines to print.
    Done(Vec<String>),
    /// The file was refused, by the instance or before asking it: every error.
    Refused(Vec<String>),
    /// The instance could not be asked, or failed otherwise.
    Failed(String),
}

/// An upgrade starts a process, which loads the config, and hands everything over.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(60);

/// Asks the instance whose admin API the file at `path` (or `admin`) names to upgrade its
/// binary to the one now installed at its path.
pub fn upgrade(path: &Path, admin: Option<SocketAddr>) -> Outcome {
    // An invalid file is still sent for when its admin section can be read: the new process
    // reads it, and refuses it itself. When it cannot be, its errors say why nobody is asked.
    let (local_errors, target) = target(path, admin);
    let Some((addr, token)) = target else {
        return match local_errors {
            Some(errors) => not_asked(errors, "upgrade"),
            None => Outcome::Failed(format!(
                "{} has no admin section and --admin was not given: tollgate upgrade asks the \
                 running instance through its admin API (or send it SIGUSR2: systemctl kill -s \
                 USR2 --kill-whom=main tollgate)",
                path.display()
            )),
        };
    };
    let (addr, asked) = post(addr, token.as_deref(), "/api/v1/upgrade", UPGRADE_TIMEOUT);
    let (status, body) = match asked {
        Ok(answer) => answer,
        Err(e) => {
            return Outcome::Failed(format!(
                "the running instance at {addr} could not be asked to upgrade: {e} (is tollgate \
                 running, with that admin address? `--admin ADDR` names another)"
            ));
        }
    };
    let error = body["error"]
        .as_str()
        .unwrap_or("no reason given")
        .to_owned();
    match status {
        StatusCode::OK => Outcome::Done(vec![format!(
            "upgraded: process {} serves at {addr}; the previous one ({}) hands its open connections over and exits",
            body["pid"].as_u64().unwrap_or(0),
            body["previous_pid"].as_u64().unwrap_or(0)
        )]),
        StatusCode::BAD_REQUEST => {
            let mut lines: Vec<String> = error.lines().map(str::to_owned).collect();
            lines.push(format!(
                "the instance at {addr} keeps serving with its running binary"
            ));
            Outcome::Refused(lines)
        }
        StatusCode::UNAUTHORIZED => Outcome::Failed(format!(
            "the instance at {addr} wants its admin token ({error}); tollgate upgrade reads it \
             from the file's admin.token_file"
        )),
        _ => Outcome::Failed(format!(
            "the instance at {addr} did not upgrade ({status}): {error}; it keeps serving"
        )),
    }
}

/// Asks the instance whose admin API the file at `path` (or `admin`) names to reload.
pub fn reload(path: &Path, admin: Option<SocketAddr>) -> Outcome {
    let (local_errors, target) = target(path, admin);
    let Some((addr, token)) = target else {
        return match local_errors {
            Some(errors) => not_asked(errors, "reload"),
            None => Outcome::Failed(format!(
                "{} has no admin section and --admin was not given: tollgate reload asks the \
                 running instance through its admin API (or send it SIGHUP: systemctl kill -s HUP tollgate)",
                path.display()
            )),
        };
    };
    let (addr, asked) = post(addr, token.as_deref(), "/api/v1/reload", TIMEOUT);
    match asked {
        Ok((status, body)) => answer(addr, status, &body),
        Err(e) => match local_errors {
            // The file is refused either way; say so, and that nobody was told.
            Some(mut errors) => {
                errors.push(format!(
                    "(the running instance at {addr} could not be asked: {e})"
                ));
                Outcome::Refused(errors)
            }
            None => Outcome::Failed(format!(
                "the running instance at {addr} could not be asked to reload: {e} (is tollgate \
                 running, with that admin address? `--admin ADDR` names another)"
            )),
        },
    }
}

/// The file at `-c` cannot be read, or is invalid and its admin section with it, and no
/// `--admin` was given: a refusal of the file (exit 78), with every error (each names the file
/// and what failed), and a last line saying that no running instance was asked.
fn not_asked(mut errors: Vec<String>, command: &str) -> Outcome {
    errors.push(format!(
        "tollgate {command}: no running instance was asked: its admin address comes from the \
         file's admin section, or from --admin ADDR"
    ));
    Outcome::Refused(errors)
}

/// The admin API to ask (`admin`, else the file's `admin.bind`, with the file's token), and
/// the file's errors when it is invalid.
fn target(path: &Path, admin: Option<SocketAddr>) -> (Option<Vec<String>>, Option<AdminApi>) {
    let (errors, from_file) = admin_from(path);
    let token = from_file.as_ref().and_then(|(_, t)| t.clone());
    (
        errors,
        admin
            .or(from_file.map(|(bind, _)| bind))
            .map(|a| (a, token)),
    )
}

/// POSTs to `route` of the admin API at `addr` (made reachable: a wildcard bind is asked on
/// loopback); the address asked, and its answer.
fn post(
    addr: SocketAddr,
    token: Option<&str>,
    route: &str,
    timeout: Duration,
) -> (SocketAddr, Result<(StatusCode, Value), String>) {
    let addr = admin_client::reachable(addr);
    let request = admin_client::request(addr, Method::POST, route, token, timeout);
    (addr, admin_client::block_on(request))
}

/// The admin API's address, and its token when it has one.
type AdminApi = (SocketAddr, Option<String>);

/// The admin API the file at `path` names (its address and token), and the file's errors
/// when it is invalid (its admin section is then read on its own, when it can be).
fn admin_from(path: &Path) -> (Option<Vec<String>>, Option<AdminApi>) {
    match config::load(path) {
        Ok(cfg) => {
            let admin = cfg.admin.as_ref();
            let token = admin.and_then(|a| a.token.as_ref()).map(|t| t.0.clone());
            (None, admin.map(|a| (a.bind, token)))
        }
        Err(errors) => {
            let lines = errors.iter().map(ToString::to_string).collect();
            (Some(lines), config::admin_of(path))
        }
    }
}

/// What the instance's answer means.
fn answer(addr: SocketAddr, status: StatusCode, body: &Value) -> Outcome {
    let error = body["error"]
        .as_str()
        .unwrap_or("no reason given")
        .to_owned();
    match status {
        StatusCode::OK => Outcome::Done(applied(addr, body)),
        // 400: the file is invalid; 409: it is valid but cannot be applied by a reload
        // (a change of `workers`): both are refusals of the file.
        StatusCode::BAD_REQUEST | StatusCode::CONFLICT => {
            let mut lines: Vec<String> = body["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e.as_str().map(str::to_owned))
                .collect();
            if lines.is_empty() {
                lines.push(error);
            }
            lines.push(format!(
                "the instance at {addr} refused the file and keeps its running config"
            ));
            Outcome::Refused(lines)
        }
        StatusCode::UNAUTHORIZED => Outcome::Failed(format!(
            "the instance at {addr} wants its admin token ({error}); tollgate reload reads it \
             from the file's admin.token_file"
        )),
        _ => Outcome::Failed(format!("the instance at {addr} answered {status}: {error}")),
    }
}

/// The lines that say what a reload changed.
fn applied(addr: SocketAddr, body: &Value) -> Vec<String> {
    let generation = body["generation"].as_u64().unwrap_or(0);
    let mut lines = vec![format!(
        "reloaded: the instance at {addr} runs generation {generation}"
    )];
    for what in ["listeners", "pools", "backends"] {
        let c = &body["changes"][what];
        let n = |k: &str| c[k].as_u64().unwrap_or(0);
        lines.push(format!(
            "  {what}: {} added, {} removed, {} changed",
            n("added"),
            n("removed"),
            n("changed")
        ));
    }
    for m in body["masked_by_overrides"].as_array().into_iter().flatten() {
        lines.push(format!(
            "  {} {}: {} does not apply while the override stays ({})",
            m["pool"].as_str().unwrap_or("?"),
            m["backend"].as_str().unwrap_or("?"),
            m["change"].as_str().unwrap_or("a change"),
            m["drop_with"].as_str().unwrap_or("see the status")
        ));
    }
    lines
}
