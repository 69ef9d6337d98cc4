//! The positioned tree (`node.rs`) → the file's structs (`file.rs`), key by key, so that
//! every unknown key, duplicate key and wrong type of a file is reported in one run, each at
//! its own line, column and key path, with the closest known key when one fits.
//!
//! A refused value is left out (the setting falls back to its default) and remembered, so
//! that `validate.rs` can still check the rest of the file without blaming the operator for
//! what the refused value would have said: see [`Walk::masks`].

use std::collections::BTreeMap;

use super::error::ConfigError;
use super::file::S;
use super::node::{self, Located, Node};
use super::suggest;

/// A value that can be read from a node of the tree.
pub(super) trait FromNode: Sized {
    /// What the value must look like, for "invalid type" messages.
    const EXPECTED: &'static str;
    /// Named entries that other settings refer to by name (the pools): when it is refused,
    /// every reference would look broken.
    const NAMED: bool = false;
    /// Reads `node` at `key`; `None` after reporting why it cannot be read.
    fn from_node(node: &Located, w: &mut Walk, key: &str) -> Option<Self>;
    /// What an entry of a named map (a listener, a pool) becomes when its value is refused:
    /// an empty one, so that its name still exists for whatever refers to it.
    fn placeholder(_node: &Located) -> Option<Self> {
        None
    }
}

/// Why validation errors at some keys would be consequences of a refused value.
#[derive(Debug)]
enum Mask {
    /// A setting of a mapping was refused: its siblings' checks may depend on it.
    Setting(String),
    /// An entry of a list or a named map was refused: only it, and what counts the entries.
    Entry(String),
    /// A mapping of named entries was refused: references to them cannot be judged.
    Everything,
    /// An unknown key that was meant to be this one: "is required" at it is no news.
    Meant(String),
}

/// The walk's state: the text (for scalars as written), and what it found.
pub(super) struct Walk<'t> {
    text: &'t str,
    label: &'t str,
    pub(super) errors: Vec<ConfigError>,
    masks: Vec<Mask>,
}

impl<'t> Walk<'t> {
    pub(super) fn new(text: &'t str, label: &'t str) -> Self {
        Walk {
            text,
            label,
            errors: Vec::new(),
            masks: Vec::new(),
        }
    }

    /// Whether a validation error at `key` may only be a consequence of a refused value, and
    /// is therefore left out (the operator fixes the refused value first).
    pub(super) fn masks(&self, key: &str) -> bool {
        self.masks.iter().any(|m| match m {
            Mask::Everything => true,
            Mask::Meant(meant) => key == meant || key == parent(meant),
            Mask::Entry(entry) => under(key, entry) || under(entry, key),
            Mask::Setting(setting) => {
                let record = parent(setting);
                key == setting || under(record, key) || (!record.is_empty() && under(key, record))
            }
        })
    }

    pub(super) fn error(&mut self, node: &Located, key: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.label.to_owned(),
            line: node.referenced.line(),
            column: node.referenced.column(),
            key: key.to_owned(),
            message: message.into(),
        });
    }

    /// Reports that `node` is not what `key` takes.
    pub(super) fn wrong_type(&mut self, node: &Located, key: &str, expected: &str) {
        let found = self.describe(node);
        self.error(
            node,
            key,
            format!("invalid type: {found}, expected {expected}"),
        );
    }

    fn describe(&self, node: &Located) -> String {
        match (&node.value, node::written(self.text, node)) {
            (Node::Int(_), Some(w)) => format!("the integer `{w}`"),
            (Node::Float(_), Some(w)) => format!("the number `{w}`"),
            (value, _) => value.describe(),
        }
    }

    /// A scalar as the string it was written as: `pool: 1` is the pool named `1`.
    pub(super) fn scalar_text(&self, node: &Located) -> Option<String> {
        let as_written = || node::written(self.text, node).map(str::to_owned);
        match &node.value {
            Node::Str(s) => Some(s.clone()),
            Node::Int(n) => as_written().or_else(|| Some(n.to_string())),
            Node::Float(f) => as_written().or_else(|| Some(f.to_string())),
            Node::Bool(b) => as_written().or_else(|| Some(b.to_string())),
            Node::Null | Node::Bytes(_) | Node::Seq(_) | Node::Map(_) => None,
        }
    }

    /// A whole number, or the one word `word` (`auto`, `none`) as `Some(None)`.
    pub(super) fn number_or(
        &mut self,
        node: &Located,
        key: &str,
        word: &str,
        expected: &str,
    ) -> Option<Option<u64>> {
        match &node.value {
            Node::Int(_) => u64::from_node(node, self, key).map(Some),
            Node::Str(s) if s == word => Some(None),
            _ => {
                self.wrong_type(node, key, expected);
                None
            }
        }
    }

    /// The name a mapping key gives, or `None` after reporting a key that is not a name.
    fn key_name(&mut self, k: &Located, parent_key: &str) -> Option<String> {
        let name = self.scalar_text(k);
        if name.is_none() {
            let found = k.value.describe();
            self.error(k, parent_key, format!("a key must be a name, not {found}"));
        }
        name
    }

    /// The entries of a mapping of settings, each key checked against `known`: every
    /// unknown key and every repeated one is reported, and the rest are returned.
    pub(super) fn settings<'n>(
        &mut self,
        node: &'n Located,
        key: &str,
        known: &[&str],
    ) -> Option<Settings<'n>> {
        let Node::Map(entries) = &node.value else {
            let expected = format!("a mapping (keys: {})", suggest::list(known));
            self.wrong_type(node, key, &expected);
            return None;
        };
        let mut found = Settings {
            key: key.to_owned(),
            entries: Vec::new(),
        };
        let mut meant = Vec::new();
        for (k, v) in entries {
            let Some(name) = self.key_name(k, key) else {
                continue;
            };
            let path = join(key, &name);
            if !known.contains(&name.as_str()) {
                meant.extend(self.unknown_key(k, &path, &name, known));
            } else if let Some((_, first, _)) = found.entries.iter().find(|(n, _, _)| *n == name) {
                let message = duplicate(&name, first);
                self.error(k, &path, message);
            } else {
                found.entries.push((name, k, v));
            }
        }
        // A misspelt key leaves the one meant missing, unless the mapping has it too.
        for m in meant {
            if !found.entries.iter().any(|(n, _, _)| n == m) {
                self.masks.push(Mask::Meant(join(key, m)));
            }
        }
        Some(found)
    }

    /// Reports an unknown key; returns the known key it was probably meant to be.
    fn unknown_key<'k>(
        &mut self,
        k: &Located,
        path: &str,
        name: &str,
        known: &[&'k str],
    ) -> Option<&'k str> {
        let valid = suggest::list(known);
        let meant = suggest::closest(name, known);
        let message = match meant {
            Some(meant) => {
                format!("unknown field `{name}`; did you mean `{meant}`? (valid keys: {valid})")
            }
            None => format!("unknown field `{name}` (valid keys: {valid})"),
        };
        self.error(k, path, message);
        meant
    }

    fn refused(&mut self, key: &str, named: bool, entry: bool) {
        let mask = if named {
            Mask::Everything
        } else if entry {
            Mask::Entry(key.to_owned())
        } else {
            Mask::Setting(key.to_owned())
        };
        self.masks.push(mask);
    }
}

/// A mapping's known settings, in file order (the first of any repeated key).
pub(super) struct Settings<'n> {
    key: String,
    entries: Vec<(String, &'n Located, &'n Located)>,
}

impl Settings<'_> {
    /// The setting `name`: absent and null are both `None` (the default applies).
    pub(super) fn get<T: FromNode>(&self, w: &mut Walk, name: &str) -> Option<T> {
        let (_, _, node) = self.entries.iter().find(|(n, _, _)| n == name)?;
        if matches!(node.value, Node::Null) {
            return None;
        }
        let key = join(&self.key, name);
        let value = T::from_node(node, w, &key);
        if value.is_none() {
            w.refused(&key, T::NAMED, false);
        }
        value
    }
}

fn duplicate(name: &str, first: &Located) -> String {
    format!(
        "duplicate key `{name}` (first at line {}, column {})",
        first.referenced.line(),
        first.referenced.column()
    )
}

/// `parent.name`, or `name` at the top.
fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}.{name}")
    }
}

/// The key path one level up: `a.b[2]` → `a.b`, `a.b` → `a`, `a` → ``.
fn parent(key: &str) -> &str {
    key.rfind(['.', '[']).map_or("", |at| &key[..at])
}

/// Whether `key` is `at` or lies below it.
fn under(key: &str, at: &str) -> bool {
    at.is_empty()
        || key
            .strip_prefix(at)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

impl<T: FromNode> FromNode for S<T> {
    const EXPECTED: &'static str = T::EXPECTED;
    const NAMED: bool = T::NAMED;
    fn from_node(node: &Located, w: &mut Walk, key: &str) -> Option<Self> {
        T::from_node(node, w, key).map(|v| S::new(v, node.referenced, node.defined))
    }
    fn placeholder(node: &Located) -> Option<Self> {
        T::placeholder(node).map(|v| S::new(v, node.referenced, node.defined))
    }
}

impl FromNode for String {
    const EXPECTED: &'static str = "a string";
    fn from_node(node: &Located, w: &mut Walk, key: &str) -> Option<Self> {
        let text = w.scalar_text(node);
        if text.is_none() {
            w.wrong_type(node, key, Self::EXPECTED);
        }
        text
    }
}

impl FromNode for u64 {
    const EXPECTED: &'static str = "a whole number";
    fn from_node(node: &Located, w: &mut Walk, key: &str) -> Option<Self> {
        match &node.value {
            Node::Int(n) if *n < 0 => {
                w.error(
                    node,
                    key,
                    format!("{n} is negative; expected a whole number"),
                );
                None
            }
            Node::Int(n) => u64::try_from(*n).ok().or_else(|| {
                w.error(node, key, format!("{n} is too large"));
                None
            }),
            _ => {
                w.wrong_type(node, key, Self::EXPECTED);
                None
            }
        }
    }
}

impl FromNode for u8 {
    const EXPECTED: &'static str = "a whole number";
    fn from_node(node: &Located, w: &mut Walk, key: &str) -> Option<Self> {
        let n = u64::from_node(node, w, key)?;
        u8::try_from(n).ok().or_else(|| {
            w.error(node, key, format!("{n} is out of range (0-255)"));
            None
        })
    }
}

impl FromNode for bool {
    const EXPECTED: &'static str = "true or false";
    fn from_node(node: &Located, w: &mut Walk, key: &str) -> Option<Self> {
        if let Node::Bool(b) = node.value {
            return Some(b);
        }
        w.wrong_type(node, key, Self::EXPECTED);
        None
    }
}

impl<T: FromNode> FromNode for Vec<T> {
    const EXPECTED: &'static str = "a list";
    fn from_node(node: &Located, w: &mut Walk, key: &str) -> Option<Self> {
        let Node::Seq(items) = &node.value else {
            w.wrong_type(node, key, Self::EXPECTED);
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let k = format!("{key}[{i}]");
            match T::from_node(item, w, &k) {
                Some(v) => out.push(v),
                None => w.refused(&k, false, true),
            }
        }
        Some(out)
    }
}

/// Listeners and pools: named entries whose names `validate.rs` checks.
impl<T: FromNode> FromNode for BTreeMap<String, S<T>> {
    const EXPECTED: &'static str = "a mapping of names";
    const NAMED: bool = true;
    fn from_node(node: &Located, w: &mut Walk, key: &str) -> Option<Self> {
        let Node::Map(entries) = &node.value else {
            w.wrong_type(node, key, Self::EXPECTED);
            return None;
        };
        let mut out: BTreeMap<String, S<T>> = BTreeMap::new();
        let mut first: BTreeMap<String, &Located> = BTreeMap::new();
        for (k, v) in entries {
            let Some(name) = w.key_name(k, key) else {
                continue;
            };
            let path = join(key, &name);
            if let Some(earlier) = first.get(&name) {
                let message = duplicate(&name, earlier);
                w.error(k, &path, message);
                continue;
            }
            first.insert(name.clone(), k);
            let value = S::<T>::from_node(v, w, &path).or_else(|| {
                w.refused(&path, false, true);
                S::<T>::placeholder(v)
            });
            if let Some(value) = value {
                out.insert(name, value);
            }
        }
        Some(out)
    }
}

#[cfg(test)]
#[path = "walk_tests.rs"]
mod tests;
