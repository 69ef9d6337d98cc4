//! `tollgate reload`: asks the running instance to reload its config file now, through the
//! admin API (`POST /api/v1/reload`), and says how that went, so that `systemctl reload`
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
    /// Applied: the lines to print.
    Reloaded(Vec<String>),
    /// The file was refused, by the instance or before asking it: every error.
    Refused(Vec<String>),
    /// The instance could not be asked, or failed otherwise.
    Failed(String),
}

/// Asks the instance whose admin API the file at `path` (or `admin`) names to reload.
pub fn reload(path: &Path, admin: Option<SocketAddr>) -> Outcome {
    let (local_errors, from_file) = match config::load(path) {
        Ok(cfg) => {
            let admin = cfg.admin.as_ref();
            let token = admin.and_then(|a| a.token.as_ref()).map(|t| t.0.clone());
            (None, admin.map(|a| (a.bind, token)))
        }
        Err(errors) => {
            let lines = errors.iter().map(ToString::to_string).collect();
            (Some(lines), config::admin_of(path))
        }
    };
    let token = from_file.as_ref().and_then(|(_, t)| t.clone());
    let Some(addr) = admin.or(from_file.map(|(bind, _)| bind)) else {
        return match local_errors {
            Some(errors) => Outcome::Refused(errors),
            None => Outcome::Failed(format!(
                "{} has no admin section and --admin was not given: tollgate reload asks the \
                 running instance through its admin API (or send it SIGHUP: systemctl kill -s HUP tollgate)",
                path.display()
            )),
        };
    };
    let addr = admin_client::reachable(addr);
    let asked = admin_client::block_on(admin_client::request(
        addr,
        Method::POST,
        "/api/v1/reload",
        token.as_deref(),
        TIMEOUT,
    ));
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

/// What the instance's answer means.
fn answer(addr: SocketAddr, status: StatusCode, body: &Value) -> Outcome {
    let error = body["error"]
        .as_str()
        .unwrap_or("no reason given")
        .to_owned();
    match status {
        StatusCode::OK => Outcome::Reloaded(applied(addr, body)),
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
