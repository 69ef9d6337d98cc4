//! Checks the `admin` section: the bind address, the bearer token file, which is read here
//! so a missing or empty token is a config error with a place, not a runtime surprise, and
//! the extra host names requests may be addressed to (`allowed_hosts`). A bind that is not
//! loopback requires a token (DESIGN.md §4, admin exposure).

use std::net::SocketAddr;
use std::path::PathBuf;

use super::file::{AdminFile, S};
use super::types::{Admin, Secret};
use super::validate::Checker;
use super::values;
use crate::authority::Authority;

pub const DEFAULT_BIND: &str = "127.0.0.1:9100";

/// Longest token accepted; anything longer is not a token someone typed.
const MAX_TOKEN_BYTES: u64 = 4096;

/// The admin address and token the section states, whatever else of the file is wrong (see
/// [`super::admin_of`]); `None` when its bind is not an address. An unreadable token file
/// gives no token.
pub(super) fn stated(raw: &S<AdminFile>) -> Option<(SocketAddr, Option<String>)> {
    let f = &raw.value;
    let bind = match &f.bind {
        None => DEFAULT_BIND.parse().ok()?,
        Some(b) => values::socket_addr(&b.value, true).ok()?,
    };
    let token = f
        .token_file
        .as_ref()
        .and_then(|t| read_token(&t.value).ok());
    Some((bind, token))
}

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
    let allowed_hosts = allowed_hosts(c, f.allowed_hosts.as_deref().unwrap_or_default());
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
        allowed_hosts,
    })
}

/// `admin.allowed_hosts`: each a DNS name or IP, optionally with `:port`.
fn allowed_hosts(c: &mut Checker, raw: &[S<String>]) -> Vec<Authority> {
    let mut hosts = Vec::new();
    for (i, h) in raw.iter().enumerate() {
        let key = format!("admin.allowed_hosts[{i}]");
        match h.value.parse::<Authority>() {
            Ok(a) if a.port == Some(0) => c.at(
                h,
                &key,
                format!("`{}`: port 0 is no port a client can use", h.value),
            ),
            Ok(a) if hosts.contains(&a) => c.at(h, &key, format!("`{a}` is listed twice")),
            Ok(a) => hosts.push(a),
            Err(e) if h.value.contains('*') => {
                c.at(
                    h,
                    &key,
                    format!("{e}: wildcards are not supported, list each name"),
                );
            }
            Err(e) => c.at(h, &key, e),
        }
    }
    hosts
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
