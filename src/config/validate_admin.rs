//! Checks the `admin` section: the bind address, and the bearer token file, which is read
//! here so a missing or empty token is a config error with a place, not a runtime surprise.
//! A bind that is not loopback requires a token (DESIGN.md §4, admin exposure).

use std::net::SocketAddr;
use std::path::PathBuf;

use super::file::{AdminFile, S};
use super::types::{Admin, Secret};
use super::validate::Checker;
use super::values;

pub const DEFAULT_BIND: &str = "127.0.0.1:9100";

/// Longest token accepted; anything longer is not a token someone typed.
const MAX_TOKEN_BYTES: u64 = 4096;

pub(super) fn admin(c: &mut Checker, raw: &S<AdminFile>) -> Option<Admin> {
    let f = &raw.value;
    let bind = match &f.bind {
        None => DEFAULT_BIND.parse::<SocketAddr>().ok()?,
        Some(b) => match values::socket_addr(&b.value, true) {
            Ok(a) => a,
            Err(e) => {
                c.at(b, "admin.bind", e);
                return None;
            }
        },
    };
    let token_file = f.token_file.as_ref().map(|t| PathBuf::from(&t.value));
    let token = match &f.token_file {
        None => None,
        Some(t) => match read_token(&t.value) {
            Ok(token) => Some(Secret(token)),
            Err(e) => {
                c.at(t, "admin.token_file", e);
                return None;
            }
        },
    };
    if token.is_none() && !bind.ip().is_loopback() {
        let place = f.bind.as_ref().map_or(raw.referenced, |b| b.referenced);
        c.at_loc(
            place,
            "admin.bind",
            format!("{bind} is not a loopback address, so admin.token_file is required"),
        );
        return None;
    }
    Some(Admin {
        bind,
        token_file,
        token,
    })
}

fn read_token(path: &str) -> Result<String, String> {
    let text = super::read::bounded_text(std::path::Path::new(path), MAX_TOKEN_BYTES)
        .map_err(|e| format!("`{path}`: {e}"))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("`{path}` is empty"));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{path}` must hold one token on one line"));
    }
    Ok(token.to_owned())
}
