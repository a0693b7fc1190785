//! A small ordered value tree and its two writers: JSON (pretty, two spaces,
//! like `jq`) and YAML (block style). Field order is the order of insertion,
//! so messages print in their proto field order, like grpcurl.
//!
//! Both writers escape every character that [`crate::escape::is_unsafe`]
//! names (and U+FFFE, U+FFFF, which YAML may not carry raw) as `\uXXXX`, so
//! their output is safe on a terminal and parses back to the same strings.
//! YAML strings are plain only when they cannot be read as anything but that
//! string (a letter, then letters, digits, `_`, `.`, `/` or `-`, and not a
//! YAML 1.1 boolean or null); every other string is double-quoted.

use std::fmt::Write as _;

use crate::escape::is_unsafe;

/// A JSON-like value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    /// A number (int32 fields; int64 fields are strings, as in the proto3
    /// JSON mapping).
    Int(i64),
    /// `true` (proto3 JSON leaves `false` out).
    Bool(bool),
    /// A string.
    Str(String),
    /// A list.
    List(Vec<Value>),
    /// An object, in insertion order.
    Map(Vec<(String, Value)>),
}

/// Whether a string writer must escape `c`.
fn needs_escape(c: char) -> bool {
    is_unsafe(c) || matches!(c, '\u{fffe}' | '\u{ffff}')
}

/// `text` as a double-quoted string, valid in JSON and in YAML.
fn quoted(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if needs_escape(c) => {
                // Every such character is in the Basic Multilingual Plane.
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

/// `value` as pretty-printed JSON, with a final newline.
pub(crate) fn to_json(value: &Value) -> String {
    let mut out = String::new();
    write_json(value, 0, &mut out);
    out.push('\n');
    out
}

fn write_json(value: &Value, indent: usize, out: &mut String) {
    match value {
        Value::Int(number) => {
            let _ = write!(out, "{number}");
        }
        Value::Bool(flag) => {
            let _ = write!(out, "{flag}");
        }
        Value::Str(text) => quoted(text, out),
        Value::List(items) if items.is_empty() => out.push_str("[]"),
        Value::List(items) => {
            out.push_str("[\n");
            for (index, item) in items.iter().enumerate() {
                pad(out, indent + 2);
                write_json(item, indent + 2, out);
                out.push_str(if index + 1 < items.len() { ",\n" } else { "\n" });
            }
            pad(out, indent);
            out.push(']');
        }
        Value::Map(entries) if entries.is_empty() => out.push_str("{}"),
        Value::Map(entries) => {
            out.push_str("{\n");
            for (index, (key, item)) in entries.iter().enumerate() {
                pad(out, indent + 2);
                quoted(key, out);
                out.push_str(": ");
                write_json(item, indent + 2, out);
                out.push_str(if index + 1 < entries.len() {
                    ",\n"
                } else {
                    "\n"
                });
            }
            pad(out, indent);
            out.push('}');
        }
    }
}

/// Words that YAML 1.1 readers take for booleans or null.
const YAML_RESERVED: &[&str] = &["y", "n", "yes", "no", "on", "off", "true", "false", "null"];

/// Whether `text` can be written as a plain YAML scalar and read back as the
/// same string by YAML 1.1 and 1.2 readers.
fn yaml_plain(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_alphabetic())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-'))
        && !YAML_RESERVED.contains(&text.to_ascii_lowercase().as_str())
}

fn yaml_string(text: &str, out: &mut String) {
    if yaml_plain(text) {
        out.push_str(text);
    } else {
        quoted(text, out);
    }
}

/// A value written on the line of its key or dash.
fn yaml_inline(value: &Value, out: &mut String) {
    match value {
        Value::Int(number) => {
            let _ = write!(out, "{number}");
        }
        Value::Bool(flag) => {
            let _ = write!(out, "{flag}");
        }
        Value::Str(text) => yaml_string(text, out),
        Value::List(_) => out.push_str("[]"),
        Value::Map(_) => out.push_str("{}"),
    }
}

fn is_block(value: &Value) -> bool {
    match value {
        Value::List(items) => !items.is_empty(),
        Value::Map(entries) => !entries.is_empty(),
        _ => false,
    }
}

/// YAML limits implicit keys to 1024 characters; longer keys are written
/// in the explicit `? key` form.
const YAML_IMPLICIT_KEY_MAX: usize = 1000;

/// Writes the entries or items of a non-empty map or list, each line at
/// `indent`; the first line's indentation is left out if `first_indented`.
fn yaml_block(value: &Value, indent: usize, first_indented: bool, out: &mut String) {
    let mut first = true;
    let mut line_start = |out: &mut String| {
        if !(first && first_indented) {
            pad(out, indent);
        }
        first = false;
    };
    match value {
        Value::Map(entries) => {
            for (key, item) in entries {
                line_start(out);
                let mut rendered = String::new();
                yaml_string(key, &mut rendered);
                if rendered.len() > YAML_IMPLICIT_KEY_MAX {
                    out.push_str("? ");
                    out.push_str(&rendered);
                    out.push('\n');
                    pad(out, indent);
                    out.push(':');
                } else {
                    out.push_str(&rendered);
                    out.push(':');
                }
                if is_block(item) {
                    out.push('\n');
                    yaml_block(item, indent + 2, false, out);
                } else {
                    out.push(' ');
                    yaml_inline(item, out);
                    out.push('\n');
                }
            }
        }
        Value::List(items) => {
            for item in items {
                line_start(out);
                out.push_str("- ");
                if is_block(item) {
                    yaml_block(item, indent + 2, true, out);
                } else {
                    yaml_inline(item, out);
                    out.push('\n');
                }
            }
        }
        scalar => {
            line_start(out);
            yaml_inline(scalar, out);
            out.push('\n');
        }
    }
}

/// `value` as a YAML document (block style), ending with a newline.
pub(crate) fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    if is_block(value) {
        yaml_block(value, 0, false, &mut out);
    } else {
        yaml_inline(value, &mut out);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use yaml_rust2::{Yaml, YamlLoader};

    use super::*;

    fn s(text: &str) -> Value {
        Value::Str(text.to_owned())
    }

    fn map(entries: &[(&str, Value)]) -> Value {
        Value::Map(
            entries
                .iter()
                .map(|(key, value)| ((*key).to_owned(), value.clone()))
                .collect(),
        )
    }

    /// Strings that break naive writers.
    fn hostile() -> Vec<String> {
        let mut strings: Vec<String> = [
            "",
            " ",
            "plain",
            "yes",
            "No",
            "ON",
            "null",
            "~",
            "true",
            "0",
            "007",
            "1e3",
            "-1",
            ".inf",
            "- item",
            "key: value",
            "a #comment",
            "#x",
            "'single'",
            "\"double\"",
            "trailing ",
            " leading",
            "a\nrole: ROLE_OWNER",
            "tab\tx",
            "back\\slash",
            "[1, 2]",
            "{a: b}",
            "&anchor",
            "*alias",
            "!tag",
            "%directive",
            "@at",
            "`tick",
            "|",
            ">",
            "?",
            ":",
            "2026-01-02T03:04:05Z",
            "\u{1b}[31mred",
            "\u{9b}",
            "\u{85}",
            "\u{202e}x",
            "\u{2028}",
            "\u{feff}bom",
            "\u{fffe}",
            "\u{ffff}",
            "é日本😀",
            "\0",
        ]
        .iter()
        .map(|text| (*text).to_owned())
        .collect();
        strings.push((0u32..0x3000).filter_map(char::from_u32).collect());
        strings
    }

    fn from_yaml(yaml: &Yaml) -> Value {
        match yaml {
            Yaml::String(text) => Value::Str(text.clone()),
            Yaml::Integer(number) => Value::Int(*number),
            Yaml::Boolean(flag) => Value::Bool(*flag),
            Yaml::Array(items) => Value::List(items.iter().map(from_yaml).collect()),
            Yaml::Hash(entries) => Value::Map(
                entries
                    .iter()
                    .map(|(key, value)| {
                        let Yaml::String(key) = key else {
                            panic!("key {key:?} is not a string")
                        };
                        (key.clone(), from_yaml(value))
                    })
                    .collect(),
            ),
            other => panic!("unexpected YAML node {other:?}"),
        }
    }

    fn from_json(json: &serde_json::Value) -> Value {
        match json {
            serde_json::Value::String(text) => Value::Str(text.clone()),
            serde_json::Value::Number(number) => Value::Int(number.as_i64().unwrap()),
            serde_json::Value::Bool(flag) => Value::Bool(*flag),
            serde_json::Value::Array(items) => Value::List(items.iter().map(from_json).collect()),
            serde_json::Value::Object(entries) => Value::Map(
                entries
                    .iter()
                    .map(|(key, value)| (key.clone(), from_json(value)))
                    .collect(),
            ),
            other => panic!("unexpected JSON {other}"),
        }
    }

    fn sample() -> Value {
        let strings = hostile();
        map(&[
            (
                "apiTokens",
                Value::List(
                    strings
                        .iter()
                        .map(|text| {
                            map(&[
                                ("name", s(text)),
                                ("labels", Value::Map(vec![(text.clone(), s(text))])),
                            ])
                        })
                        .collect(),
                ),
            ),
            ("count", Value::Int(-42)),
            ("empty", Value::List(vec![])),
            ("none", Value::Map(vec![])),
            (
                "nested",
                Value::List(vec![Value::List(vec![s("a"), s("b")]), Value::Int(1)]),
            ),
            (&"k".repeat(1500), s("long key")),
        ])
    }

    #[test]
    fn yaml_reads_back_as_the_same_data() {
        let value = sample();
        let yaml = to_yaml(&value);
        let docs =
            YamlLoader::load_from_str(&yaml).unwrap_or_else(|error| panic!("{error}\n{yaml}"));
        assert_eq!(docs.len(), 1);
        // Maps compare in order: yaml-rust2 keeps insertion order.
        assert_eq!(from_yaml(&docs[0]), value);
    }

    #[test]
    fn json_reads_back_as_the_same_data() {
        let value = sample();
        let json = to_json(&value);
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        // serde_json sorts keys; compare sorted.
        fn sorted(value: Value) -> Value {
            match value {
                Value::Map(mut entries) => {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                    entries.dedup_by(|a, b| a.0 == b.0);
                    Value::Map(
                        entries
                            .into_iter()
                            .map(|(key, value)| (key, sorted(value)))
                            .collect(),
                    )
                }
                Value::List(items) => Value::List(items.into_iter().map(sorted).collect()),
                other => other,
            }
        }
        assert_eq!(sorted(from_json(&parsed)), sorted(value));
    }

    #[test]
    fn output_is_terminal_safe() {
        let value = sample();
        for text in [to_json(&value), to_yaml(&value)] {
            // Newlines are the writers' own, never a value's.
            assert!(!text.chars().any(|c| c != '\n' && is_unsafe(c)));
            assert!(!text.contains("\nrole: ROLE_OWNER"));
        }
    }

    #[test]
    fn plain_scalars_only_when_unambiguous() {
        let yaml = to_yaml(&map(&[
            ("name", s("namespaces/team-a/apitokens/ci")),
            ("role", s("ROLE_EDITOR")),
            ("yes", s("no")),
            ("time", s("2026-01-02T03:04:05Z")),
            ("useCount", s("12")),
            ("rateLimit", Value::Int(60)),
            ("labels", map(&[("env", s("prod"))])),
            (
                "list",
                Value::List(vec![map(&[("a", s("b")), ("c", s("d"))])]),
            ),
        ]));
        assert_eq!(
            yaml,
            "name: namespaces/team-a/apitokens/ci\nrole: ROLE_EDITOR\n\"yes\": \"no\"\n\
             time: \"2026-01-02T03:04:05Z\"\nuseCount: \"12\"\nrateLimit: 60\n\
             labels:\n  env: prod\nlist:\n  - a: b\n    c: d\n"
        );
    }

    #[test]
    fn json_is_pretty_and_ordered() {
        let json = to_json(&map(&[
            ("b", s("x\"y")),
            ("a", Value::List(vec![Value::Int(1), Value::Int(-2)])),
            ("e", Value::Map(vec![])),
        ]));
        assert_eq!(
            json,
            "{\n  \"b\": \"x\\\"y\",\n  \"a\": [\n    1,\n    -2\n  ],\n  \"e\": {}\n}\n"
        );
        assert_eq!(to_json(&s("\u{1b}\u{202e}")), "\"\\u001b\\u202e\"\n");
    }
}
