//! Configuration: the YAML file read into a tree of positioned nodes (`parse.rs`, `node.rs`),
//! walked into its mirror (`walk.rs`, `file.rs`) and turned into a typed, validated
//! [`Config`] (`validate.rs`, `types.rs`), with every problem reported at once as
//! `PATH:LINE:COLUMN: key.path: message` (`PATH: message` when it has no place).
//!
//! This module owns parsing and validation only. It never binds a socket or touches the data
//! plane; `app.rs` turns a `Config` into the runtime state the workers read.

mod error;
pub mod file;
mod json;
mod node;
mod parse;
mod read;
mod suggest;
mod summary;
mod types;
mod validate;
mod validate_admin;
mod validate_dns;
mod validate_health;
mod validate_limits;
mod validate_logging;
mod validate_pool;
mod validate_sni;
mod validate_udp;
mod values;
mod walk;

use std::path::Path;

pub use error::{ConfigError, ConfigErrors};
pub use types::*;
pub use validate::overlaps;
pub use validate_pool::routable;
pub use values::format_duration;

/// Where `run` and `check` look when `-c` is not given.
pub const DEFAULT_PATH: &str = "/etc/tollgate/tollgate.yaml";

/// The largest config file read. A real config is a few KiB; the YAML loader's own budgets
/// (`parse.rs`) bound what a file within this size can cost.
const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Reads and validates the file at `path`, which must be a regular file of at most 4 MiB
/// (see `read.rs`: a device, a FIFO or a directory is refused at once, never read).
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let label = path.display().to_string();
    let text = read::bounded_text(path, MAX_CONFIG_BYTES).map_err(|e| {
        // Most often the wrong path: say where the path came from.
        let message =
            format!("{e}; the config file is named with -c PATH (default {DEFAULT_PATH})");
        ConfigErrors::single(&label, 0, 0, "", message)
    })?;
    load_str(&text, &label)
}

/// The admin API's address and bearer token as the file at `path` states them, even when the
/// rest of it is invalid: `tollgate reload` then still asks the running instance to try the
/// file, so that the instance records the refusal. `None`: the file cannot be read or
/// parsed as YAML, has no `admin` section, or its bind is not an address.
pub fn admin_of(path: &Path) -> Option<(std::net::SocketAddr, Option<String>)> {
    let label = path.display().to_string();
    let text = read::bounded_text(path, MAX_CONFIG_BYTES).ok()?;
    let tree = parse::parse_yaml(&text, &label).ok()?;
    let mut walk = walk::Walk::new(&text, &label);
    let raw = file::file_config(&tree, &mut walk);
    validate_admin::stated(raw.admin.as_ref()?)
}

/// Parses and validates YAML `text`; `label` names it in error messages (usually its path).
pub fn load_str(text: &str, label: &str) -> Result<Config, ConfigErrors> {
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigErrors::single(
            label,
            0,
            0,
            "",
            format!(
                "config is {} bytes; the limit is {MAX_CONFIG_BYTES}",
                text.len()
            ),
        ));
    }
    let tree = parse::parse_yaml(text, label)?;
    let mut walk = walk::Walk::new(text, label);
    let raw = file::file_config(&tree, &mut walk);
    let checked = validate::validate(raw, label);
    if walk.errors.is_empty() {
        return checked;
    }
    // Every structural error, and the validation errors that are not mere consequences of
    // a value the walk refused; in file order (a stable sort: at one place, the walk's first).
    let mut all = std::mem::take(&mut walk.errors);
    if let Err(found) = checked {
        all.extend(found.0.into_iter().filter(|e| !walk.masks(&e.key)));
    }
    all.sort_by_key(|e| (e.line, e.column));
    Err(ConfigErrors(all))
}
