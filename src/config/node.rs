//! The YAML document as a tree of positioned nodes, before any key is given a meaning.
//!
//! serde-saphyr reads the text into this tree (so its budgets, alias and merge handling and
//! tag checks all apply), and `walk.rs` then turns the tree into the file's structs one key
//! at a time. Going through a tree is what lets every unknown key and every wrong type of a
//! file be reported in one run: a typed serde derive stops at the first one.
//!
//! Nothing here knows tollgate's keys.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

pub type Located = Spanned<Node>;

/// One YAML node. Scalars keep the type YAML's core schema resolved them to.
#[derive(Debug)]
pub enum Node {
    Null,
    Bool(bool),
    /// Every integer that fits; a larger one arrives as a float, as YAML reads it.
    Int(i128),
    Float(f64),
    Str(String),
    /// `!!binary` data: no setting takes it.
    Bytes(usize),
    Seq(Vec<Located>),
    /// Entries in file order. Duplicate keys are kept (the loader passes them through) so
    /// that the walk can report each one at its own place.
    Map(Vec<(Located, Located)>),
}

impl Node {
    /// What the node is, for "invalid type" messages: `a string "abc"`, `a sequence`.
    pub fn describe(&self) -> String {
        match self {
            Node::Null => "null".to_owned(),
            Node::Bool(b) => format!("the boolean `{b}`"),
            Node::Int(n) => format!("the integer `{n}`"),
            Node::Float(f) => format!("the number `{f}`"),
            Node::Str(s) => format!("the string {s:?}"),
            Node::Bytes(n) => format!("{n} bytes of binary data"),
            Node::Seq(_) => "a sequence".to_owned(),
            Node::Map(_) => "a mapping".to_owned(),
        }
    }
}

/// The scalar as written in `text`, for a number or boolean that a string setting takes
/// (`pool: 1` names the pool `1`, `timeouts: {connect: 1:30}` is checked as `1:30`). It is
/// read where the value is defined, so an alias yields the anchored text, not `*name`.
pub fn written<'t>(text: &'t str, node: &Located) -> Option<&'t str> {
    let span = node.defined.span();
    let start = usize::try_from(span.byte_offset()?).ok()?;
    let len = usize::try_from(span.byte_len()?).ok()?;
    text.get(start..start.checked_add(len)?)
        .filter(|s| !s.is_empty())
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Node, E> {
        Ok(i128::try_from(v).map_or(Node::Float(v as f64), Node::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Node, E> {
        Ok(Node::Bytes(v.len()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key()? {
            entries.push((key, map.next_value()?));
        }
        Ok(Node::Map(entries))
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<Node, A::Error> {
        Err(de::Error::custom("unexpected enum value"))
    }
}
