//! YAML text → [`FileConfig`] with serde-saphyr, under hard resource limits, and its errors
//! turned into [`ConfigErrors`] with a line, a column and the key path at that place.

use serde_saphyr::{budget, options};

use super::error::ConfigErrors;
use super::file::FileConfig;

/// Parses `text`. Budgets stop an alias bomb, a node flood or deep nesting long before they
/// cost memory or time; a real config is a few hundred nodes.
pub fn parse_yaml(text: &str, label: &str) -> Result<FileConfig, ConfigErrors> {
    let limits = budget! {
        max_events: 200_000,
        max_aliases: 1_000,
        max_anchors: 1_000,
        max_recorded_anchor_events: 5_000,
        max_recorded_anchor_bytes: 1024 * 1024,
        max_depth: 32,
        max_documents: 1,
        max_nodes: 100_000,
        max_total_scalar_bytes: 4 * 1024 * 1024,
    };
    // A tag (`!!python/object:…`, `!custom`) means the author expects a loader to do something
    // tollgate never does; ignoring it would accept a file that means something else.
    let opts = options! {
        budget: limits,
        with_snippet: false,
        reject_unsupported_tags: true,
        reject_tagged_field_names: true,
    };
    serde_saphyr::from_str_with_options::<FileConfig>(text, opts).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        let message = clean_message(&e.without_snippet().to_string());
        let key = key_path_at(text, line);
        ConfigErrors::single(label, line, column, &key, message)
    })
}

/// serde-saphyr appends the location (which we print in front) and, for duplicates, advice
/// meant for programmers; an operator needs neither.
fn clean_message(raw: &str) -> String {
    let mut msg = raw.lines().next().unwrap_or(raw).trim().to_owned();
    if let Some(at) = msg.rfind(" at line ")
        && is_location_suffix(&msg[at + 9..])
    {
        msg.truncate(at);
    }
    if let Some(at) = msg.find(", set DuplicateKeyPolicy") {
        msg.truncate(at);
    }
    if msg.is_empty() { raw.to_owned() } else { msg }
}

/// `N, column M` and nothing more: the location serde-saphyr appends.
fn is_location_suffix(rest: &str) -> bool {
    let Some((line, column)) = rest.split_once(", column ") else {
        return false;
    };
    !line.is_empty()
        && !column.is_empty()
        && line
            .chars()
            .chain(column.chars())
            .all(|c| c.is_ascii_digit())
}

/// The dotted key path of the block-style key on `line` (1-based), found by walking up to
/// each less-indented key. Good enough to name the place in a hand-written config; for flow
/// style or an unknown line it returns what it can (possibly nothing).
pub(super) fn key_path_at(text: &str, line: u64) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = usize::try_from(line).ok().and_then(|l| l.checked_sub(1)) else {
        return String::new();
    };
    if start >= lines.len() {
        return String::new();
    }
    let mut path = Vec::new();
    let mut limit = usize::MAX;
    for raw in lines[..=start].iter().rev() {
        if let Some((indent, key)) = block_key(raw)
            && indent < limit
        {
            path.push(key);
            limit = indent;
            if indent == 0 {
                break;
            }
        }
    }
    path.reverse();
    path.join(".")
}

/// `(indentation, key)` for a line like `    name: value` or `  - name: value`.
fn block_key(raw: &str) -> Option<(usize, String)> {
    let trimmed = raw.trim_start();
    let mut indent = raw.len() - trimmed.len();
    let mut body = trimmed;
    while let Some(rest) = body.strip_prefix("- ") {
        indent += 2;
        body = rest.trim_start();
    }
    // A tag on the key (`!foo pool: web`) is an error reported at this line: name the key.
    if body.starts_with('!') {
        body = body
            .split_once(' ')
            .map_or("", |(_, rest)| rest.trim_start());
    }
    if body.starts_with('#') || body.is_empty() {
        return None;
    }
    let colon = body.find(':')?;
    let key = body[..colon].trim().trim_matches(|c| c == '"' || c == '\'');
    let valid = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    valid.then(|| (indent, key.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse_yaml(text, "t.yaml").unwrap_err().to_string()
    }

    #[test]
    fn unknown_key_names_its_place_and_path() {
        let e = err("listeners:\n  web:\n    bindd: x\n");
        assert!(
            e.starts_with("t.yaml:3:5: listeners.web.bindd: unknown field `bindd`"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_key_is_an_error() {
        let e = err("workers: 1\nworkers: 2\n");
        assert!(
            e.starts_with("t.yaml:2:1: workers: duplicate mapping key"),
            "{e}"
        );
        assert!(!e.contains("DuplicateKeyPolicy"), "{e}");
    }

    #[test]
    fn wrong_type_is_an_error() {
        let e = err("listeners:\n  web:\n    limits:\n      max_connections: abc\n");
        assert!(
            e.starts_with("t.yaml:4:24: listeners.web.limits.max_connections:"),
            "{e}"
        );
    }

    #[test]
    fn unknown_tags_are_errors_with_a_place() {
        let e = err("listeners:\n  web:\n    pool: !!python/object:os.system web\n");
        assert!(
            e.starts_with("t.yaml:3:") && e.contains("listeners.web.pool: unsupported tag"),
            "{e}"
        );
        let e = err("workers: !custom 2\n");
        assert!(e.contains("workers: unsupported tag `!custom`"), "{e}");
        let e = err("listeners:\n  web:\n    !x pool: web\n");
        assert!(
            e.contains("listeners.web.pool: unsupported tag `!x`"),
            "{e}"
        );
    }

    #[test]
    fn core_tags_still_mean_what_yaml_says() {
        let raw = parse_yaml("workers: !!int 2\n", "t.yaml").unwrap();
        assert!(raw.workers.is_some());
    }

    #[test]
    fn key_path_follows_list_items() {
        let text = "pools:\n  web:\n    backends:\n      - address: x\n        weight: y\n";
        assert_eq!(key_path_at(text, 5), "pools.web.backends.weight");
    }
}
