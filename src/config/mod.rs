//! Configuration: the YAML file (`file.rs`, a serde mirror) turned into a typed, validated
//! [`Config`] (`validate.rs`, `types.rs`), with every problem reported at once as
//! `PATH:LINE:COLUMN: key.path: message`.
//!
//! This module owns parsing and validation only. It never binds a socket or touches the data
//! plane; `app.rs` turns a `Config` into the runtime state the workers read.

mod error;
pub mod file;
mod json;
mod parse;
mod types;
mod validate;
mod validate_admin;
mod validate_dns;
mod validate_health;
mod validate_limits;
mod validate_pool;
mod values;

use std::path::Path;

pub use error::{ConfigError, ConfigErrors};
pub use types::*;
pub use validate::overlaps;
pub use validate_pool::routable;
pub use values::format_duration;

/// Bounds on what the YAML loader will do for a file, whatever the file says: nesting depth,
/// alias expansion and size. They make an alias bomb or a deeply nested document fail fast.
const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Reads and validates the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let label = path.display().to_string();
    let meta = std::fs::metadata(path)
        .map_err(|e| ConfigErrors::single(&label, 0, 0, "", format!("cannot read: {e}")))?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(ConfigErrors::single(
            &label,
            0,
            0,
            "",
            format!(
                "file is {} bytes; the limit is {MAX_CONFIG_BYTES}",
                meta.len()
            ),
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::single(&label, 0, 0, "", format!("cannot read: {e}")))?;
    load_str(&text, &label)
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
    let raw = parse::parse_yaml(text, label)?;
    validate::validate(raw, label)
}
