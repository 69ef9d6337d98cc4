//! YAML text → the positioned tree of `node.rs`, with serde-saphyr under hard resource
//! limits. A syntax error (or a budget breach, or a YAML tag) stops the parse: it is turned
//! into one [`ConfigErrors`] entry with its line, column and the key path at that place.
//! Everything after the syntax — unknown keys, wrong types, bad values — is `walk.rs`'s and
//! `validate.rs`'s, which report all of them.

use serde_saphyr::{DuplicateKeyPolicy, NonFiniteFloatPolicy, budget, options};

use super::error::ConfigErrors;
use super::node::Located;

/// Columns a tab stands for when the key path of a line is worked out: what an editor shows.
/// YAML forbids tabs in indentation, so this only names the key the author meant.
const TAB_WIDTH: usize = 8;

/// Parses `text`. Budgets stop an alias bomb, a node flood or deep nesting long before they
/// cost memory or time; a real config is a few hundred nodes.
pub fn parse_yaml(text: &str, label: &str) -> Result<Located, ConfigErrors> {
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
    // Duplicate keys and out-of-range floats (`1e400`) pass through to the walk, which reports
    // every one at its place instead of stopping the whole file there.
    let opts = options! {
        budget: limits,
        with_snippet: false,
        reject_unsupported_tags: true,
        reject_tagged_field_names: true,
        duplicate_keys: DuplicateKeyPolicy::PassThrough,
        non_finite_float_policy: NonFiniteFloatPolicy::PassThrough,
    };
    serde_saphyr::from_str_with_options::<Located>(text, opts).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        let mut message = clean_message(&e.without_snippet().to_string());
        let about_a_tab = message
            .split(|c: char| !c.is_ascii_alphabetic())
            .any(|word| word == "tab" || word == "tabs");
        let (line, column) = if about_a_tab {
            message.push_str("; YAML indents with spaces, never tabs");
            indenting_tab(text, line).unwrap_or((line, column))
        } else {
            (line, column)
        };
        let key = key_path_at(text, line);
        ConfigErrors::single(label, line, column, &key, message)
    })
}

/// The first tab used for indentation at or after `line`: the parser may notice it on the
/// line before (a plain scalar it was still reading), or one column past it.
fn indenting_tab(text: &str, line: u64) -> Option<(u64, u64)> {
    let first = usize::try_from(line).ok()?.checked_sub(1)?;
    text.lines().enumerate().skip(first).find_map(|(i, raw)| {
        let indent = raw.len() - raw.trim_start_matches([' ', '\t']).len();
        let tab = raw[..indent].find('\t')?;
        Some((i as u64 + 1, raw[..tab].chars().count() as u64 + 1))
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
/// each less-indented key that opens a block (a key with a value on its line has no
/// children, whatever the indentation of a tab suggests). Good enough to name the place in a hand-written config; for flow
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
    for (i, raw) in lines[..=start].iter().enumerate().rev() {
        if let Some((indent, key, opens)) = block_key(raw)
            && indent < limit
            && (opens || i == start)
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

/// `(indentation, key, opens a block)` for a line like `    name: value` or `  - name:`.
fn block_key(raw: &str) -> Option<(usize, String, bool)> {
    let trimmed = raw.trim_start();
    let mut indent = raw[..raw.len() - trimmed.len()].chars().fold(0, |col, c| {
        if c == '\t' {
            (col / TAB_WIDTH + 1) * TAB_WIDTH
        } else {
            col + 1
        }
    });
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
    // Nothing after the colon but a comment, an anchor or a tag: the value is the block below.
    let rest = body[colon + 1..].trim_start();
    let opens = rest.is_empty() || rest.starts_with(['#', '&', '!']);
    valid.then(|| (indent, key.to_owned(), opens))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::node::Node;

    fn err(text: &str) -> String {
        parse_yaml(text, "t.yaml").unwrap_err().to_string()
    }

    #[test]
    fn a_tab_is_reported_where_it_is_under_the_key_it_indents() {
        let e = err("listeners:\n  web:\n\tbind: x\n");
        assert!(
            e.starts_with("t.yaml:3:1: listeners.web.bind: tabs disallowed"),
            "{e}"
        );
        assert!(e.ends_with("YAML indents with spaces, never tabs"), "{e}");
        // Noticed while reading the value of the line before: still the tab's own place.
        let e = err("listeners:\n  web:\n    bind: x\n\tpool: y\n");
        assert!(e.starts_with("t.yaml:4:1: listeners.web.pool: "), "{e}");
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
        let tree = parse_yaml("workers: !!int 2\n", "t.yaml").unwrap();
        let Node::Map(entries) = &tree.value else {
            panic!("{tree:?}")
        };
        assert!(matches!(entries[0].1.value, Node::Int(2)), "{tree:?}");
    }

    #[test]
    fn key_path_follows_list_items() {
        let text = "pools:\n  web:\n    backends:\n      - address: x\n        weight: y\n";
        assert_eq!(key_path_at(text, 5), "pools.web.backends.weight");
    }
}
